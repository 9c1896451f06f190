"""Tiny real plans for family tests: the demo T2->FLAIR plan with a 3-stage, few-feature U-Net, small
discriminators re-planned for the smaller patch, and patches cut from the preprocessed demo cases."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotrans.planning.families import plan_latent_architecture, plan_patchgan, plan_vgg_discriminator
from autotrans.planning.plans import Plans
from autotrans.preprocessing.store import PreprocessedCase, case_ids

CONFIG = "3d_fullres"


def shrink_plans(plans: Plans, patch: tuple[int, int, int] = (32, 32, 32), features: tuple[int, ...] = (4, 8, 16),
                 strides: list[list[int]] | None = None, n_source_channels: int | None = None,
                 srgan_block: str = "residual") -> Plans:
    """A copy of ``plans`` whose ``3d_fullres`` networks are tiny (seconds on a CPU) but built by the same code.

    ``n_source_channels`` duplicates the first source channel (multi-channel tests on single-channel data).
    """
    data: dict[str, Any] = copy.deepcopy(plans.data)
    cfg = data["configurations"][CONFIG]
    n = len(features)
    strides = strides or [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    cfg["patch_size"] = list(patch)
    kw = cfg["architecture"]["arch_kwargs"]
    kw.update(n_stages=n, features_per_stage=list(features), kernel_sizes=[[3, 3, 3]] * n, strides=strides,
              n_conv_per_stage_decoder=[1] * (n - 1))
    if "n_blocks_per_stage" in kw:  # a ResEnc plan (-pl ResEncM/L/XL): one residual block per stage
        kw["n_blocks_per_stage"] = [1] * n
    else:
        kw["n_conv_per_stage"] = [1] * n
    if n_source_channels is not None:
        data["source_channels"] = [dict(data["source_channels"][0], name=f"ch{i}") for i in range(n_source_channels)]
        data["normalization"]["source"] = [data["normalization"]["source"][0]] * n_source_channels
    n_in = len(data["source_channels"])
    fams = cfg["families"]
    fams["pix2pix"]["discriminator"] = plan_patchgan(list(patch), n_in + 1, base_features=4, max_features=16)
    fams["cyclegan"]["discriminator"] = plan_patchgan(list(patch), 1, base_features=4, max_features=16)
    fams["srgan"]["generator"] = {"block": srgan_block, "n_blocks": 2, "features": 8, "factors": [2, 2, 2]}
    fams["srgan"]["discriminator"] = plan_vgg_discriminator(list(patch), base_features=4, max_features=16)
    fams["latent"] = shrink_latent(list(patch))
    return Plans(data)


def shrink_latent(patch: list[int]) -> dict[str, Any]:
    """The planned latent section for ``patch`` with few channels (same planning code for patch sizes)."""
    latent = plan_latent_architecture(patch)
    latent["autoencoder"].update(channels=[8, 16, 16], discriminator={"n_layers": 1, "features": 8})
    levels = len(latent["diffusion_unet"]["channels"])
    latent["diffusion_unet"].update(channels=[16, 32, 32, 32][:levels], num_head_channels=8, num_res_blocks=1)
    return latent


def real_batch(data_dir: Path, n: int = 1, patch: tuple[int, int, int] = (32, 32, 32), offset: int = 0,
               n_source_channels: int | None = None) -> dict[str, torch.Tensor]:
    """Central patches of ``n`` preprocessed demo cases (source, target, mask), as the engine would batch them."""
    cases = case_ids(data_dir)
    out: dict[str, list[np.ndarray]] = {"source": [], "target": [], "mask": []}
    for i in range(n):
        case = PreprocessedCase(data_dir, cases[(i + offset) % len(cases)])
        shape = case.array("target").shape[1:]
        lo = [max((s - p) // 2, 0) for s, p in zip(shape, patch)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, patch))
        src = np.asarray(case.array("source")[(slice(None),) + sl], dtype=np.float32)
        if n_source_channels is not None:
            src = np.repeat(src[:1], n_source_channels, axis=0) * np.linspace(1.0, 0.5, n_source_channels)[:, None, None, None]
        out["source"].append(src.astype(np.float32))
        out["target"].append(np.asarray(case.array("target")[(slice(None),) + sl], dtype=np.float32))
        mask = case.array("mask")
        if mask is None:
            out["mask"].append(np.ones_like(out["target"][-1]))
        else:
            m = mask[sl] if mask.ndim == 3 else mask[(slice(None),) + sl]
            out["mask"].append((np.asarray(m) > 0).astype(np.float32).reshape(out["target"][-1].shape))
    return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}


SMALL = (16, 16, 16)


def make_family(name: str, plans: Plans, seed: int = 0, overrides: dict[str, Any] | None = None,
                patch: tuple[int, int, int] = SMALL, **shrink: Any) -> Any:
    """A built family on a shrunk copy of ``plans`` with seeded initial weights."""
    from autotrans.families.base import get_family

    tiny = shrink_plans(plans, patch=patch, **shrink)
    torch.manual_seed(seed)
    fam = get_family(name)(tiny, tiny.configuration(CONFIG), overrides or {}, "cpu")
    fam.build()
    return fam


def snapshot(fam: Any, network: str | None = None) -> dict[str, torch.Tensor]:
    """Copies of the parameters of all networks (or of one) of a family."""
    nets = fam.networks() if network is None else {network: fam.networks()[network]}
    return {f"{n}.{k}": p.detach().clone() for n, net in nets.items() for k, p in net.named_parameters()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)
