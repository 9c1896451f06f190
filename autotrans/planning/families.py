"""Per-family plan sections, derived from a configuration's patch size and the planner's memory model.

The memory model is nnU-Net's: the sum of conv output elements for one sample ("feature-map voxels")
compared with a reference that fits the GPU memory target at batch size 2. The U-Net's count comes from
dynamic-network-architectures itself; the other networks are counted the same way analytically here, so
all families are sized by one rule and compared fairly.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

PATCHGAN_MAX_LAYERS = 5
SRGAN_LADDER = ((16, 64), (16, 48), (12, 48), (12, 32), (8, 32), (8, 24), (6, 24), (6, 16), (4, 16))
SAMPLING_STEPS = {"ldm": 50, "ldm_controlnet": 50, "bbdm": 50, "flow_matching": 25}


def _voxels(shape: list[int] | tuple[int, ...]) -> float:
    return float(np.prod(shape, dtype=np.float64))


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
    strides, features, count = [], [], 0.0
    for i in range(n_layers):
        stride = [2 if s / 2 >= 4 else 1 for s in size]
        size = [math.ceil(s / st) for s, st in zip(size, stride)]
        f = min(base_features * 2 ** i, max_features)
        strides.append(stride)
        features.append(f)
        count += f * _voxels(size)
    f_last = min(base_features * 2 ** n_layers, max_features)
    count += f_last * _voxels(size) + _voxels(size)
    return {"n_layers": n_layers, "features": features + [f_last], "strides": strides, "kernel_size": 4,
            "in_channels": in_channels, "receptive_field": patchgan_receptive_field(n_layers),
            "feature_map_voxels": count}


def srgan_generator_voxels(patch_size: list[int], n_blocks: int, width: int) -> float:
    """Head conv, ``n_blocks`` residual blocks of two convs, a fusion conv and the output conv, all full resolution."""
    return (2 * n_blocks + 2) * width * _voxels(patch_size) + _voxels(patch_size)


def plan_vgg_discriminator(patch_size: list[int], base_features: int = 32, max_features: int = 256) -> dict[str, Any]:
    """VGG-style discriminator: stages of (conv, strided conv), halving until an axis would drop below 4."""
    size = [float(s) for s in patch_size]
    features, strides, count = [], [], 0.0
    stage = 0
    while min(size) / 2 >= 4 and stage < 5:
        f = min(base_features * 2 ** stage, max_features)
        count += f * _voxels(size)
        stride = [2 if s / 2 >= 4 else 1 for s in size]
        size = [math.ceil(s / st) for s, st in zip(size, stride)]
        count += f * _voxels(size)
        features.append(f)
        strides.append(stride)
        stage += 1
    return {"n_stages": len(features), "features": features, "strides": strides, "feature_map_voxels": count}


def _batch_size(estimate: float, reference: float, n_voxels_dataset: float, patch_size: list[int],
                min_bs: int = 1, ref_bs: int = 2, max_dataset_covered: float = 0.05) -> int:
    bs = round(reference / max(estimate, 1.0) * ref_bs)
    cap = round(n_voxels_dataset * max_dataset_covered / _voxels(patch_size))
    return int(max(min(bs, cap), min_bs))


def plan_latent(patch_size: list[int], reference: float, n_voxels_dataset: float,
                downsampling_factor: int = 4, latent_channels: int = 4) -> dict[str, Any]:
    """Autoencoder and diffusion U-Net sizes for the latent family (LDM, ControlNet, BBDM, flow matching).

    The latent patch is the image patch divided by the autoencoder's factor, rounded up to a multiple of the
    diffusion U-Net's total downsampling (its skip connections need even sizes at every level), so an image
    patch that the factor does not divide is padded with air by the families, never cropped.
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
    unet_channels = [min(64 * 2 ** i, 256) for i in range(levels)]
    attention = [min(latent) / 2 ** i <= 16 for i in range(levels)]
    # counts: autoencoder (two convs per level, encoder + decoder) and diffusion U-Net (two res blocks of two convs)
    ae_count = sum(4 * c * _voxels([math.ceil(p / 2 ** i) for p in ae_patch]) for i, c in enumerate(ae_channels))
    unet_count = sum(8 * c * _voxels([math.ceil(lp / 2 ** i) for lp in latent]) for i, c in enumerate(unet_channels))
    disc = plan_patchgan(ae_patch, in_channels=1, base_features=32, max_features=256)
    return {
        "autoencoder": {
            "downsampling_factor": downsampling_factor,
            "latent_channels": latent_channels,
            "channels": ae_channels,
            "num_res_blocks": 1,
            "patch_size": ae_patch,
            "latent_patch_size": latent,
            "discriminator": {"n_layers": disc["n_layers"], "features": disc["features"][0]},
            "batch_size": _batch_size(ae_count * 1.5 + 2 * disc["feature_map_voxels"], reference, n_voxels_dataset,
                                      ae_patch),
        },
        "diffusion_unet": {
            "channels": unet_channels,
            "attention_levels": attention,
            "num_res_blocks": 2,
            "num_head_channels": 32,
            "batch_size": _batch_size(unet_count, reference, n_voxels_dataset, ae_patch),
        },
        "train_timesteps": 1000,
        "sampling_steps": dict(SAMPLING_STEPS),
        "flow_matching_source": "source_latent",
    }


def plan_families(patch_size: list[int], n_in: int, n_out: int, unet_voxels: float, reference: float,
                  n_voxels_dataset: float) -> dict[str, Any]:
    """All family sections for one configuration."""
    d_cond = plan_patchgan(patch_size, in_channels=n_in + n_out)
    d_uncond = plan_patchgan(patch_size, in_channels=n_out)
    # a GAN step runs D on real and fake: count D twice
    pix2pix_est = unet_voxels + 2 * d_cond["feature_map_voxels"]
    cycle_est = 2 * unet_voxels + 4 * d_uncond["feature_map_voxels"]
    vgg = plan_vgg_discriminator(patch_size)
    for n_blocks, width in SRGAN_LADDER:
        sr_est = srgan_generator_voxels(patch_size, n_blocks, width) + 2 * vgg["feature_map_voxels"]
        if sr_est <= reference:
            break
    return {
        "pix2pix": {"generator": "planned_unet", "discriminator": d_cond,
                    "batch_size": _batch_size(pix2pix_est, reference, n_voxels_dataset, patch_size)},
        "cyclegan": {"generator": "planned_unet", "discriminator": d_uncond,
                     "batch_size": _batch_size(cycle_est, reference, n_voxels_dataset, patch_size)},
        "srgan": {"generator": {"block": "residual", "n_blocks": n_blocks, "features": width},
                  "discriminator": vgg,
                  "batch_size": _batch_size(sr_est, reference, n_voxels_dataset, patch_size)},
        "latent": plan_latent(patch_size, reference, n_voxels_dataset),
    }
