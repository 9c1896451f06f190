"""Test-only generator families and a fake results folder (no real family is trained in these tests).

The families are tiny and exact so that any deviation in the output is the inference code's fault:
identity (the whole chain must reproduce its input), constant (no seams), a conv net (MONAI parity), a
ramp that is not mirror-invariant (mirror TTA on/off) and a seeded noisy identity (reproducibility).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from autotrans.families.base import Family, register_family
from autotrans.planning.planner import plans_hash
from autotrans.results import model_folder_name, save_checkpoint
from autotrans.utils.files import load_json


class _Holder(torch.nn.Module):
    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))


@register_family("test_identity")
class IdentityFamily(Family):
    def build(self) -> None:
        self.net = _Holder(0.0).to(self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x[:, :1].clone()


@register_family("test_constant")
class ConstantFamily(Family):
    """Outputs the normalized constant stored in its weights (so folds differ by checkpoint)."""

    def build(self) -> None:
        self.net = _Holder(float(self.overrides.get("value", 0.0))).to(self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.zeros_like(x[:, :1]) + self.net.value


@register_family("test_ramp")
class RampFamily(Family):
    """A ramp along the patch's last axis, whatever the input: mirror TTA over axis 2 flattens it."""

    def build(self) -> None:
        self.net = _Holder(0.0).to(self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        w = x.shape[-1]
        ramp = torch.linspace(-0.5, 0.5, w, device=x.device)
        return torch.zeros_like(x[:, :1]) + ramp


def small_conv_net(in_channels: int = 1, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(in_channels, 4, 3, padding=1), torch.nn.LeakyReLU(0.1),
                               torch.nn.Conv3d(4, 1, 3, padding=1), torch.nn.Tanh())


@register_family("test_conv")
class ConvFamily(Family):
    def build(self) -> None:
        self.net = small_conv_net(len(self.plans.source_modalities)).to(self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(x)


@register_family("test_noise")
class NoiseFamily(Family):
    """Stochastic: identity plus seeded noise whose amplitude grows with ``sampling_steps``."""

    stochastic = True

    def build(self) -> None:
        self.net = _Holder(0.0).to(self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        steps = int(self.overrides.get("sampling_steps", 1))
        noise = torch.randn(x[:, :1].shape, generator=generator, device=x.device)
        return x[:, :1] + 0.01 * steps * noise


def make_model(results: Path, preprocessed_dataset: Path, family: str, folds: dict[str, dict[str, Any]],
               configuration: str = "3d_fullres", mirror_axes: list[int] | None = None,
               plans_name: str = "autotransPlans") -> Path:
    """A results folder as training would leave it: plans/dataset/fingerprint plus one checkpoint per fold."""
    from autotrans.families.base import get_family
    from autotrans.planning.plans import Plans

    dataset = preprocessed_dataset.name
    folder = results / dataset / model_folder_name(family, plans_name, configuration)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(preprocessed_dataset / f"{plans_name}.json", folder / "plans.json")
    shutil.copy(preprocessed_dataset / "dataset.json", folder / "dataset.json")
    shutil.copy(preprocessed_dataset / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
    plans_dict = load_json(folder / "plans.json")
    plans = Plans(plans_dict)
    for fold, overrides in folds.items():
        fam = get_family(family)(plans, plans.configuration(configuration), overrides)
        fam.build()
        state = {"family": family, "configuration": configuration, "plans_sha1": plans_hash(plans_dict),
                 "overrides": overrides, "networks": fam.state_dict()}
        if mirror_axes is not None:
            state["mirror_axes"] = mirror_axes
        save_checkpoint(state, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
