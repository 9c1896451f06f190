"""Per-family plan sections: every family sized by one rule, and the plan says what each got.

The rule (documentation/planning.md, "Fair sizing"):

1. **One budget.** The configuration's U-Net is planned exactly as nnU-Net v2 plans it (patch, topology,
   batch size). Its activation bytes at that patch (``autotrans.planning.memory``) turn nnU-Net's reference
   (560 M feature-map voxels per 8 GB at batch 2) into the step budget every family shares.
2. **One memory model.** Each family's networks are built from the plan on the meta device and its training
   step's activation bytes are counted by autograd (every pass the step keeps for backward: CycleGAN's six
   generator passes, a discriminator on real and fake, the frozen U-Net under a ControlNet; attention with the
   fused kernels' footprint). The batch size is as many samples as the budget holds (at least 1, at most 5 %
   of the dataset's voxels), nnU-Net's rule applied to the family's own step.
3. **Capacity parity.** Every generator is the planned U-Net or, where the method prescribes its own
   architecture (SRGAN's residual generator, the latent models' diffusion U-Net), the member of a size ladder
   whose parameter count is closest to the U-Net's (on a log scale) among those whose step fits the budget at
   batch 1. Receptive fields are reported next to it: the U-Net's, SRGAN's (space-to-depth puts its blocks
   at the U-Net's first pooled resolution) and the diffusion U-Net's (global: self-attention in its middle
   block) all cover the patch.

Each section records ``batch_size``, ``parameters`` (per network), ``receptive_field`` (voxels per axis, or
``"global"``), ``activation_bytes_per_sample`` and ``estimated_memory_gb``; ``summary_table`` prints them.

A planner preset (``-pl ResEncL``) changes only step 1's network and reference: the families that use the
planned U-Net (``generator: planned_unet``; ``generator_network`` names the class) get the ResidualEncoderUNet, the
budget is that network's bytes at nnU-Net's ResEnc reference, and the families with their own generators keep
them, matched by the same capacity rule to the (larger) U-Net. The preset's dataset cap (nnU-Net's ResEnc
planners let one batch cover the whole dataset) applies to every family alike. ``budget`` records the preset.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from autotrans.networks import build_patchgan, build_planned_unet, build_srgan_generator, build_vgg_discriminator
from autotrans.networks.latent import (
    build_autoencoder,
    build_controlnet,
    build_diffusion_unet,
    build_latent_discriminator,
    denoiser_channels,
)
from autotrans.networks.patchgan import receptive_field as patchgan_rf
from autotrans.networks.srgan import generator_receptive_field
from autotrans.networks.unet import unet_receptive_field
from autotrans.planning.memory import (
    Pass,
    batch_size,
    budget_bytes,
    estimated_gb,
    extra_parameter_gb,
    on_meta,
    parameters,
    step_bytes,
)

PATCHGAN_MAX_LAYERS = 5
#: SRGAN generator ladder: 16 residual blocks (the paper's B) at these widths
SRGAN_BLOCKS = 16
SRGAN_WIDTHS = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
#: diffusion U-Net ladder: base channels, doubling per level up to 4x (LDM's channel multipliers 1, 2, 4, 4)
DIFFUSION_BASE_CHANNELS = (32, 48, 64, 96, 128, 160)
#: self-attention at a diffusion U-Net level only up to this many tokens (16^3): attention compute grows with the
#: square of the token count even where the fused kernels keep its memory linear
ATTENTION_MAX_TOKENS = 4096
#: sampling steps by default: LDM (DDIM) and the ControlNet 50, BBDM 200 (its released configs), flow 25
SAMPLING_STEPS = {"ldm": 50, "ldm_controlnet": 50, "bbdm": 200, "flow_matching": 25}
LATENT_MODELS = ("ldm", "bbdm", "flow_matching", "ldm_prior", "ldm_controlnet")
GLOBAL = "global"

logger = logging.getLogger(__name__)


def _voxels(shape: list[int] | tuple[int, ...]) -> float:
    return float(math.prod(shape))


def patchgan_receptive_field(n_layers: int) -> int:
    """Receptive field of a PatchGAN with ``n_layers`` 4-kernel stride-2 convs plus two 4-kernel stride-1 convs."""
    rf = 1 + 3 + 3
    for _ in range(n_layers):
        rf = (rf - 1) * 2 + 4
    return rf


def plan_patchgan(patch_size: list[int], in_channels: int, base_features: int = 64, max_features: int = 512) -> dict[str, Any]:
    """Deepest PatchGAN whose receptive field still fits the patch's middle edge (70 voxels for 128^3 -> 3 layers).

    Axes too short to halve again (< 8 voxels left) keep stride 1, so anisotropic patches are handled.
    """
    middle = sorted(patch_size)[len(patch_size) // 2]
    n_layers = 1
    while n_layers < PATCHGAN_MAX_LAYERS and patchgan_receptive_field(n_layers + 1) <= middle:
        n_layers += 1
    size = [float(s) for s in patch_size]
    strides, features = [], []
    for i in range(n_layers):
        stride = [2 if s / 2 >= 4 else 1 for s in size]
        size = [math.ceil(s / st) for s, st in zip(size, stride)]
        strides.append(stride)
        features.append(min(base_features * 2 ** i, max_features))
    features.append(min(base_features * 2 ** n_layers, max_features))
    return {"n_layers": n_layers, "features": features, "strides": strides, "kernel_size": 4,
            "in_channels": in_channels, "receptive_field": patchgan_rf(strides)}


def plan_vgg_discriminator(patch_size: list[int], base_features: int = 32, max_features: int = 256) -> dict[str, Any]:
    """VGG-style discriminator: stages of (conv, strided conv), halving until an axis would drop below 4."""
    size = [float(s) for s in patch_size]
    features, strides = [], []
    while min(size) / 2 >= 4 and len(features) < 5:
        stride = [2 if s / 2 >= 4 else 1 for s in size]
        size = [math.ceil(s / st) for s, st in zip(size, stride)]
        features.append(min(base_features * 2 ** len(features), max_features))
        strides.append(stride)
    return {"n_stages": len(features), "features": features, "strides": strides}


def srgan_factors(arch_kwargs: dict[str, Any]) -> list[int]:
    """Space-to-depth factor per axis: the U-Net's first two poolings (anisotropic axes fold less, like the
    U-Net pools them later), so SRGAN's blocks work where the U-Net's second stage does."""
    factors = [1, 1, 1]
    for stride in list(arch_kwargs["strides"])[1:3]:
        factors = [f * int(s) for f, s in zip(factors, stride)]
    return factors


def _closest(ladder: list[Any], params: Callable[[Any], int], fits: Callable[[Any], bool], reference: int) -> Any:
    """The ladder member whose parameter count is closest to ``reference`` (log scale) among those that fit the
    budget at batch 1; the smallest member when none fits.

    ``ladder`` is ordered by size, and both parameters and memory grow along it, so only the two members
    around ``reference`` and those below them need building: a larger one is further away and fits no better.
    """
    above = next((i for i, c in enumerate(ladder) if params(c) >= reference), len(ladder) - 1)
    below = max(above - 1, 0)
    near = sorted({above, below}, key=lambda i: abs(math.log(max(params(ladder[i]), 1) / max(reference, 1))))
    for i in near + list(range(below - 1, -1, -1)):
        if fits(ladder[i]):
            return ladder[i]
    return ladder[0]


def plan_latent_architecture(patch_size: list[int], downsampling_factor: int = 4, latent_channels: int = 4,
                             base_channels: int = 64) -> dict[str, Any]:
    """The shared autoencoder and the diffusion U-Net shape for one base channel count.

    The latent patch is the image patch divided by the autoencoder's factor, rounded up to a multiple of the
    diffusion U-Net's total downsampling (its skip connections need even sizes at every level), so an image
    patch that the factor does not divide is padded with air by the families, never cropped. Attention sits
    at the levels with at most ``ATTENTION_MAX_TOKENS`` tokens (MONAI's middle block always has one).
    """
    n_down = int(round(math.log2(downsampling_factor)))
    if 2 ** n_down != downsampling_factor:
        raise ValueError(f"autoencoder downsampling factor must be a power of 2, got {downsampling_factor}")
    latent = [max(1, math.ceil(p / downsampling_factor)) for p in patch_size]
    ae_channels = [32 * 2 ** min(i, 1) for i in range(n_down + 1)]  # e.g. (32, 64, 64) for 4x
    levels, edge = 1, min(latent)
    while levels < 4 and edge / 2 >= 4:
        levels += 1
        edge /= 2
    divisor = 2 ** (levels - 1)
    latent = [math.ceil(lp / divisor) * divisor for lp in latent]
    ae_patch = [lp * downsampling_factor for lp in latent]
    tokens = [_voxels([lp / 2 ** i for lp in latent]) for i in range(levels)]
    # MONAI's PatchDiscriminator strides every axis: n layers need an edge of 3 * 2**n
    disc_layers = min(plan_patchgan(ae_patch, in_channels=1)["n_layers"],
                      max(1, int(math.floor(math.log2(max(min(ae_patch), 3) / 3)))))
    return {
        "autoencoder": {
            "downsampling_factor": downsampling_factor,
            "latent_channels": latent_channels,
            "channels": ae_channels,
            "num_res_blocks": 1,
            "patch_size": ae_patch,
            "latent_patch_size": latent,
            "shared": True,
            "discriminator": {"n_layers": disc_layers, "features": 32},
        },
        "diffusion_unet": {
            "channels": [min(base_channels * 2 ** i, 4 * base_channels) for i in range(levels)],
            "attention_levels": [t <= ATTENTION_MAX_TOKENS for t in tokens],
            "num_res_blocks": 2,
            "num_head_channels": 32,
        },
        "train_timesteps": 1000,
        "sampling_steps": dict(SAMPLING_STEPS),
        "flow_matching_source": "source_latent",
    }


class _Sizer:
    """The budget of one configuration and the helpers that turn a family's step into its plan entries."""

    def __init__(self, cfg: dict[str, Any], n_in: int, n_out: int, n_voxels_dataset: float, gb: float,
                 max_dataset_covered: float = 0.05) -> None:
        self.patch = [int(p) for p in cfg["patch_size"]]
        self.arch = cfg["architecture"]
        self.n_in, self.n_out, self.gb, self.n_voxels = n_in, n_out, gb, n_voxels_dataset
        self.max_dataset_covered = max_dataset_covered
        self.unet_class = str(self.arch["network_class_name"]).rsplit(".", 1)[-1]
        self.unet = on_meta(lambda: build_planned_unet(self.arch, n_in, n_out))
        self.unet_params = parameters(self.unet)
        self.unet_step = step_bytes([[self.pass_(self.unet, n_in)]])
        self.budget = budget_bytes(cfg["memory_reference_feature_map_voxels"], self.arch["feature_map_voxels"],
                                   self.unet_step)
        self.unet_rf = unet_receptive_field(self.arch["arch_kwargs"])

    def pass_(self, net: torch.nn.Module, *channels: int, patch: list[int] | None = None, samples: int = 1,
              grad: bool = True, call: Callable[..., Any] | None = None, frozen: bool = False) -> Pass:
        size = tuple(patch or self.patch)
        return Pass(net, tuple((c, *size) for c in channels), samples, grad, call, frozen)

    def entries(self, name: str, phases: list[list[Pass]], params: dict[str, int], rf: dict[str, Any], frozen: int = 0,
                patch: list[int] | None = None) -> dict[str, Any]:
        """Batch size, the report fields and the estimate. Parameter memory beyond the U-Net's (a larger
        discriminator, a frozen autoencoder, EMA copies) comes out of the activation budget first."""
        step = step_bytes(phases)
        extra = extra_parameter_gb(sum(params.values()) - frozen, frozen, self.unet_params)
        budget = self.budget * max(1.0 - extra / self.gb, 0.0)
        bs = batch_size(step, budget, self.n_voxels, patch or self.patch,
                        max_dataset_covered=self.max_dataset_covered)
        gb = estimated_gb(step, bs, self.budget, self.gb, extra)
        if gb > self.gb * 1.05:
            logger.warning("%s: one training sample needs an estimated %.2f GB, above the %.3g GB GPU memory target",
                           name, gb, self.gb)
        return {"batch_size": bs, "parameters": params, "receptive_field": rf,
                "activation_bytes_per_sample": int(step), "estimated_memory_gb": gb}


def _timesteps(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)


def plan_gan_families(s: _Sizer) -> dict[str, Any]:
    """Regression, Pix2Pix, CycleGAN and SRGAN sections."""
    n_in, n_out, patch = s.n_in, s.n_out, s.patch
    out: dict[str, Any] = {}
    # regression: the planned U-Net alone, one pass kept for backward (nnU-Net's own step, so nnU-Net's batch)
    out["regression"] = {"generator": "planned_unet", **s.entries(
        "regression", [[s.pass_(s.unet, n_in)]], {"generator": s.unet_params}, {"generator": s.unet_rf})}
    d_cond = plan_patchgan(patch, in_channels=n_in + n_out)
    d = on_meta(lambda: build_patchgan(d_cond))
    # the generator's graph stays alive through the D step (real and fake: 2 samples) and the G step (D frozen)
    phases = [[s.pass_(s.unet, n_in), s.pass_(d, n_in + n_out, samples=2)],
              [s.pass_(s.unet, n_in), s.pass_(d, n_in + n_out, frozen=True)]]
    out["pix2pix"] = {"generator": "planned_unet", "discriminator": d_cond, **s.entries(
        "pix2pix", phases, {"generator": s.unet_params, "discriminator": parameters(d)},
        {"generator": s.unet_rf, "discriminator": d_cond["receptive_field"]})}

    d_uncond = plan_patchgan(patch, in_channels=n_out)
    g_ba = on_meta(lambda: build_planned_unet(s.arch, n_out, n_in, activation="none"))
    d_a = on_meta(lambda: build_patchgan(d_uncond, in_channels=n_in))
    d_b = on_meta(lambda: build_patchgan(d_uncond, in_channels=n_out))
    # the generator step backpropagates each cycle on its own (translation, reconstruction, discriminator; then
    # the identity terms) and the discriminator step each discriminator on its own: same gradients, one graph
    phases = [[s.pass_(s.unet, n_in), s.pass_(g_ba, n_out), s.pass_(d_b, n_out, frozen=True)],
              [s.pass_(g_ba, n_out), s.pass_(s.unet, n_in), s.pass_(d_a, n_in, frozen=True)],
              [s.pass_(d_a, n_in, samples=2)], [s.pass_(d_b, n_out, samples=2)]]
    params = {"generator": s.unet_params, "generator_reverse": parameters(g_ba),
              "discriminator_source": parameters(d_a), "discriminator": parameters(d_b)}
    out["cyclegan"] = {"generator": "planned_unet", "discriminator": d_uncond, **s.entries(
        "cyclegan", phases, params, {"generator": s.unet_rf, "discriminator": d_uncond["receptive_field"]})}

    vgg = plan_vgg_discriminator(patch)
    d_vgg = on_meta(lambda: build_vgg_discriminator(vgg, n_out))
    d_step = s.pass_(d_vgg, n_out, samples=2)
    factors = srgan_factors(s.arch["arch_kwargs"])
    generators: dict[int, torch.nn.Module] = {}

    def generator(w: int) -> torch.nn.Module:
        if w not in generators:
            generators[w] = on_meta(lambda: build_srgan_generator(
                {"n_blocks": SRGAN_BLOCKS, "features": w, "factors": factors}, n_in, n_out))
        return generators[w]

    width = _closest(list(SRGAN_WIDTHS), lambda w: parameters(generator(w)),
                     lambda w: step_bytes([[s.pass_(generator(w), n_in), d_step]]) <= s.budget, s.unet_params)
    gen = {"block": "residual", "n_blocks": SRGAN_BLOCKS, "features": width, "factors": factors}
    out["srgan"] = {"generator": gen, "discriminator": vgg, **s.entries(
        "srgan", [[s.pass_(generators[width], n_in), d_step],
                  [s.pass_(generators[width], n_in), s.pass_(d_vgg, n_out, frozen=True)]],
        {"generator": parameters(generators[width]), "discriminator": parameters(d_vgg)},
        {"generator": generator_receptive_field(SRGAN_BLOCKS, factors), "discriminator": GLOBAL})}
    return out


def plan_latent_families(s: _Sizer) -> dict[str, Any]:
    """The shared ``latent`` architecture and the autoencoder's and each latent model's sections."""
    n_in = s.n_in
    archs = {b: plan_latent_architecture(s.patch, base_channels=b) for b in DIFFUSION_BASE_CHANNELS}
    ae_sec = archs[DIFFUSION_BASE_CHANNELS[0]]["autoencoder"]
    ae_patch, lc = ae_sec["patch_size"], int(ae_sec["latent_channels"])
    latent_patch = ae_sec["latent_patch_size"]
    ae = on_meta(lambda: build_autoencoder(ae_sec, 1))
    ae_d = on_meta(lambda: build_latent_discriminator(ae_sec, 1))
    images = n_in + 1  # the shared autoencoder encodes every source channel and the target, one channel each
    encode = s.pass_(ae, 1, patch=ae_patch, grad=False, call=lambda net, x: net.encode(x))
    # the autoencoder takes one optimizer step per image (source channels, then the target): one image's graph
    phases = [[s.pass_(ae, 1, patch=ae_patch, call=lambda net, x: net(x)[0]), s.pass_(ae_d, 1, patch=ae_patch)],
              [s.pass_(ae_d, 1, patch=ae_patch, samples=2)]]
    out: dict[str, Any] = {"autoencoder": s.entries(
        "autoencoder", phases, {"autoencoder": parameters(ae), "discriminator": parameters(ae_d)}, {},
        patch=ae_patch)}

    nets: dict[tuple[int, str], torch.nn.Module] = {}

    def unet(base: int, model: str) -> torch.nn.Module:
        """Built once per (base, model); ldm, bbdm and flow matching share one shape (the same inputs)."""
        key = (base, "ldm" if model in ("bbdm", "flow_matching") else model)
        if key not in nets:
            cin, cout = denoiser_channels(key[1], lc, n_in)
            nets[key] = on_meta(lambda: build_diffusion_unet(archs[base]["diffusion_unet"], cin, cout))
        return nets[key]

    def unet_pass(net: torch.nn.Module, model: str, frozen: bool = False) -> Pass:
        return s.pass_(net, denoiser_channels(model, lc, n_in)[0], patch=latent_patch,
                       call=lambda n, x: n(x, _timesteps(x)), frozen=frozen)

    def encodes(n: int) -> Pass:
        return Pass(encode.network, encode.inputs, n, False, encode.call)

    base = _closest(list(DIFFUSION_BASE_CHANNELS), lambda b: parameters(unet(b, "ldm")),
                    lambda b: step_bytes([[encodes(images), unet_pass(unet(b, "ldm"), "ldm")]]) <= s.budget,
                    s.unet_params)
    out["latent"] = archs[base]
    frozen_ae = parameters(ae)
    for model in ("ldm", "bbdm", "flow_matching", "ldm_prior"):
        net = unet(base, model)
        n_enc = images if model != "ldm_prior" else 1
        out[model] = s.entries(model, [[encodes(n_enc), unet_pass(net, model)]],
                               {"denoiser": parameters(net), "denoiser_ema": parameters(net), "autoencoder": frozen_ae},
                               {"generator": GLOBAL}, frozen=frozen_ae + parameters(net), patch=ae_patch)
    prior = unet(base, "ldm_prior")
    control = on_meta(lambda: build_controlnet(archs[base]["diffusion_unet"], lc, n_in, ae_sec["downsampling_factor"]))
    control_pass = s.pass_(control, lc, patch=latent_patch, call=lambda n, z: n(
        z, _timesteps(z), controlnet_cond=torch.zeros((1, n_in, *ae_patch), device=z.device)))
    # the frozen prior still carries the ControlNet's gradients: its activations are kept too
    params = {"controlnet": parameters(control), "controlnet_ema": parameters(control), "denoiser": parameters(prior),
              "autoencoder": frozen_ae}
    out["ldm_controlnet"] = s.entries(
        "ldm_controlnet", [[encodes(1), control_pass, unet_pass(prior, "ldm_prior", frozen=True)]], params,
        {"generator": GLOBAL},
        frozen=frozen_ae + parameters(prior) + parameters(control), patch=ae_patch)
    return out


def plan_families(cfg: dict[str, Any], n_in: int, n_out: int, n_voxels_dataset: float,
                  gpu_memory_target_gb: float, max_dataset_covered: float = 0.05,
                  preset: str = "default") -> dict[str, Any]:
    """All family sections for one configuration (``cfg`` holds the planned patch, architecture and reference)."""
    s = _Sizer(cfg, n_in, n_out, n_voxels_dataset, gpu_memory_target_gb, max_dataset_covered)
    out = {"budget": {"activation_bytes": int(s.budget), "unet_activation_bytes_per_sample": int(s.unet_step),
                      "unet_parameters": s.unet_params, "unet_receptive_field": s.unet_rf,
                      "gpu_memory_target_gb": gpu_memory_target_gb, "planner_preset": preset,
                      "unet_network": s.unet_class, "max_dataset_covered": max_dataset_covered}}
    out.update(plan_gan_families(s))
    out.update(plan_latent_families(s))
    for sec in out.values():  # what each U-Net-generator family got: the preset's class
        if isinstance(sec, dict) and sec.get("generator") == "planned_unet":
            sec["generator_network"] = s.unet_class
    return out


FAMILY_ORDER = ("regression", "pix2pix", "cyclegan", "srgan", "autoencoder", "ldm", "ldm_prior", "ldm_controlnet",
                "bbdm", "flow_matching")


def summary_rows(families: dict[str, Any]) -> list[list[str]]:
    """One row per family: parameters per network (M), receptive field, batch size, estimated memory (GB)."""

    def rf(v: Any) -> str:
        if isinstance(v, list):
            return "x".join(str(int(x)) for x in v)
        return str(v)

    rows = []
    for name in FAMILY_ORDER:
        sec = families.get(name)
        if not sec or "parameters" not in sec:
            continue
        params = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in sec["parameters"].items())
        fields = ", ".join(f"{k} {rf(v)}" for k, v in sec.get("receptive_field", {}).items()) or "–"
        rows.append([name, params, fields, str(sec["batch_size"]), f"{sec['estimated_memory_gb']:.2f}"])
    return rows


SUMMARY_HEADER = ["family", "parameters", "receptive field (voxels)", "batch size", "estimated memory (GB)"]
