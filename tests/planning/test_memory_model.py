"""One memory model for every family (``autotrans.planning.memory``), checked against what autograd keeps and
what the CPU allocator holds, and the fair-sizing rule of the planner (``autotrans.planning.families``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import autotrans.families  # noqa: F401  (registers the families)
from autotrans.families.base import get_family
from autotrans.networks.latent import build_autoencoder, build_diffusion_unet
from autotrans.planning.families import (
    ATTENTION_MAX_TOKENS,
    FAMILY_ORDER,
    GLOBAL,
    plan_families,
    plan_latent_architecture,
    summary_rows,
)
from autotrans.planning.memory import (
    Pass,
    measure_family_step,
    measured_peak_bytes,
    on_meta,
    persistent_gradients,
    saved_bytes,
    step_bytes,
    transient_bytes,
)
from autotrans.planning.planner import UNetMemoryModel, plan_configuration
from autotrans.planning.plans import Plans
from autotrans.preprocessing.normalization import PercentileNormalization


@pytest.fixture(autouse=True)
def _threads(one_thread: None) -> None:
    """Single-threaded: allocator peaks do not depend on the thread count."""


def cpu_saved_bytes(net: nn.Module, shape: tuple[int, ...], call=None) -> int:
    """What autograd keeps for backward on the CPU (distinct storages, the network's weights excluded) + output."""
    state = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    seen: dict[int, int] = {}
    kept: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in state:
            seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
            kept.append(t)
        return t

    x = torch.zeros((1, *shape), requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = (call or (lambda n, a: n(a)))(net, x)
    return sum(seen.values()) + out.numel() * out.element_size()


def _timesteps(n: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return n(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))


DIFFUSION = {"channels": [32, 32], "attention_levels": [True, False], "num_res_blocks": 1, "num_head_channels": 16}


@pytest.mark.parametrize("build, shape, call", [
    (lambda: nn.Sequential(nn.Conv3d(2, 16, 3, padding=1), nn.InstanceNorm3d(16, affine=True),
                           nn.LeakyReLU(inplace=True), nn.Conv3d(16, 8, 3, stride=2, padding=1)), (2, 16, 16, 16), None),
    (lambda: nn.Sequential(nn.Conv3d(4, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU()), (4, 12, 12, 12), None),
    # MONAI's diffusion U-Net with self-attention over 16^3 = 4096 tokens through the fused (flash) kernel
    (lambda: build_diffusion_unet(DIFFUSION, 4, 4), (4, 16, 16, 16), _timesteps),
])
def test_meta_count_equals_what_autograd_keeps_on_the_cpu(build, shape, call) -> None:
    """The meta device counts, without memory or compute, what a real CPU pass keeps for backward: attention
    with the fused kernel's footprint (never a tokens x tokens matrix), weights excluded."""
    torch.manual_seed(0)
    estimate = saved_bytes(Pass(on_meta(build), (shape,), call=call))
    real = cpu_saved_bytes(build(), shape, call)
    # exact for convolutions and norms; the CPU flash kernel keeps a little less than the fused-kernel stand-in
    assert estimate == pytest.approx(real, rel=0.1 if call else 0.001), (estimate, real)


def test_attention_memory_is_linear_in_the_tokens() -> None:
    """With the fused kernels the attention level costs O(tokens), far below one fp32 tokens^2 matrix."""
    net = on_meta(lambda: build_diffusion_unet(DIFFUSION, 4, 4))
    small, large = (saved_bytes(Pass(net, ((4, *s),), call=_timesteps)) for s in ((8, 8, 8), (16, 16, 16)))
    assert large / small == pytest.approx(8.0, rel=0.1)  # 8x the voxels, 8x the bytes: no quadratic term
    assert large < 4096 ** 2 * 4


def test_passes_without_gradient_are_followed_op_by_op() -> None:
    """A frozen encoder holds a block's input and intermediate results at once, not one layer's: the meta
    liveness count is within 0.7-1.5x of the CPU allocator's peak, which also holds oneDNN's reordered copies of
    a convolution's input and output (a CPU artefact) and which one layer's input and output would miss."""
    section = plan_latent_architecture([64, 64, 64])["autoencoder"]
    estimate = transient_bytes(Pass(on_meta(lambda: build_autoencoder(section, 1)), ((1, 64, 64, 64),),
                                    grad=False, call=lambda n, x: n.encode(x)))
    ae = build_autoencoder(section, 1)
    x = torch.rand(1, 1, 64, 64, 64)

    def encode() -> None:
        with torch.no_grad():
            ae.encode(x)

    encode()
    measured = measured_peak_bytes(encode)
    assert 0.7 < measured / estimate < 1.5, (measured, estimate)


def test_step_phases_add_kept_passes_and_take_the_largest_frozen_one() -> None:
    a, b = on_meta(lambda: nn.Conv3d(1, 8, 3, padding=1)), on_meta(lambda: nn.Conv3d(1, 16, 3, padding=1))
    kept_a, kept_b = Pass(a, ((1, 8, 8, 8),)), Pass(b, ((1, 8, 8, 8),), samples=2)
    frozen = Pass(b, ((1, 8, 8, 8),), samples=3, grad=False)
    ka, kb = saved_bytes(kept_a), saved_bytes(kept_b)
    assert step_bytes([[kept_a, kept_b]]) == ka + 2 * kb
    assert step_bytes([[kept_a], [kept_b]]) == max(ka, 2 * kb)  # a GAN's D step and G step free each other
    assert step_bytes([[frozen]]) == transient_bytes(frozen)  # frozen passes run one after the other


def tiny_plans(spacing: tuple[float, ...], median: tuple[int, ...], gb: float) -> Plans:
    """One planned configuration (MR -> MR) on a synthetic fingerprint of 40 cases."""
    n_vox = float(np.prod(median)) * 40
    cfg = plan_configuration(np.array(spacing), np.array(median, dtype=float), n_vox, UNetMemoryModel(1, 1), gb, "t")
    cfg["families"] = plan_families(cfg, 1, 1, n_vox, gb)
    norm = PercentileNormalization().to_dict()
    return Plans({"configurations": {"3d_fullres": cfg}, "source_channels": [{"name": "s", "modality": "MR"}],
                  "target": {"name": "t", "modality": "MR"}, "normalization": {"source": [norm], "target": norm},
                  "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]})


@pytest.fixture(scope="module")
def brain() -> Plans:
    return tiny_plans((1.0, 1.0, 1.0), (140, 170, 140), 0.2)


def unet_ratio(plans: Plans) -> float:
    from autotrans.networks import build_planned_unet

    cfg = plans.configuration("3d_fullres")
    torch.manual_seed(0)
    net = build_planned_unet(cfg.architecture, 1, 1)
    opt = torch.optim.Adam(net.parameters())
    x = torch.rand(2, 1, *cfg.patch_size)

    def step() -> None:
        opt.zero_grad()
        net(x).abs().mean().backward()
        opt.step()

    step()
    with persistent_gradients():
        measured = measured_peak_bytes(step) / 2
    return measured / cfg.data["families"]["budget"]["unet_activation_bytes_per_sample"]


#: measured / estimated relative to the U-Net's ratio on this small plan (patch 40 x 48 x 40, batch 2 on the CPU,
#: where fixed oneDNN workspaces weigh more than on real patches; benchmarks/memory_model.py measures real ones).
#: The bounds pin today's largest deviations with a margin, so a family whose step changes without its memory
#: model (a new pass, a network outside the count) fails here.
PINNED = {"regression": (0.8, 1.25), "pix2pix": (0.7, 1.35), "cyclegan": (0.7, 1.35), "srgan": (0.7, 1.8),
          "autoencoder": (0.65, 1.35),
          "ldm": (0.5, 2.0), "ldm_prior": (0.5, 2.0), "ldm_controlnet": (0.5, 1.5), "bbdm": (0.5, 2.0),
          "flow_matching": (0.5, 2.0)}
PHASE = {"srgan": {"pretrain_fraction": 0}, "autoencoder": {"adversarial_start": 0}}


@pytest.mark.slow
def test_every_family_is_estimated_like_the_unet(brain: Plans) -> None:
    cfg = brain.configuration("3d_fullres")
    reference = unet_ratio(brain)
    assert 0.7 < reference < 1.4, reference  # the count matches the allocator for the budget's own network
    relative = {}
    for name in FAMILY_ORDER:
        measured = measure_family_step(get_family(name), brain, cfg, PHASE.get(name), batch=2)["activations"]
        relative[name] = measured / cfg.data["families"][name]["activation_bytes_per_sample"] / reference
    outside = {n: round(r, 2) for n, r in relative.items() if not PINNED[n][0] <= r <= PINNED[n][1]}
    assert not outside, (outside, relative)


@pytest.mark.parametrize("spacing, median", [((1.0, 1.0, 1.0), (140, 170, 140)), ((2.5, 1.0, 1.0), (60, 300, 400)),
                                             ((3.0, 3.0, 3.0), (300, 200, 200))])
def test_one_rule_sizes_every_family(spacing, median) -> None:
    """At the default 8 GB target on the brain, pelvis-like and PET/CT fingerprints: every generator within
    0.25-4x the U-Net's parameters with a receptive field covering the patch (or global), every family's batch
    and memory estimate recorded, the estimate within the target wherever a sample fits, attention only at
    levels of <= 16^3 tokens."""
    plans = tiny_plans(spacing, median, 8.0)
    cfg = plans.configuration("3d_fullres")
    fams = cfg.data["families"]
    unet = fams["budget"]["unet_parameters"]
    patch = cfg.patch_size
    for name in FAMILY_ORDER:
        sec = fams[name]
        assert sec["batch_size"] >= 1 and sec["parameters"], name
        generator = sec["parameters"].get("generator", sec["parameters"].get("denoiser"))
        if generator is not None:
            assert 0.25 <= generator / unet <= 4, (name, generator / unet)
        rf = sec["receptive_field"].get("generator")
        if rf is not None:
            assert rf == GLOBAL or all(r >= p for r, p in zip(rf, patch)), (name, rf, patch)
        if name != "cyclegan":  # two full U-Nets of the 8 GB plan do not fit one sample's step there (a warning)
            assert sec["estimated_memory_gb"] <= 8.0 * 1.05, (name, sec["estimated_memory_gb"])
    latent = fams["latent"]
    lat = latent["autoencoder"]["latent_patch_size"]
    tokens = [math.prod(s / 2 ** i for s in lat) for i in range(len(latent["diffusion_unet"]["channels"]))]
    assert latent["diffusion_unet"]["attention_levels"] == [t <= ATTENTION_MAX_TOKENS for t in tokens]
    assert {r[0] for r in summary_rows(fams)} == set(FAMILY_ORDER)


def test_attention_is_placed_by_token_count_not_by_the_smallest_edge() -> None:
    """A pelvis-like latent (10 x 48 x 64): the smallest edge is short, but level 0 has 30,720 tokens."""
    arch = plan_latent_architecture([40, 192, 256])
    assert arch["autoencoder"]["latent_patch_size"] == [10, 48, 64]
    assert arch["diffusion_unet"]["attention_levels"][0] is False
