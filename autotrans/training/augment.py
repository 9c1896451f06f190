"""Data augmentation for translation patches: the settings shared by both pipelines and the batchgenerators v1 one.

Training uses ``augment_torch`` by default (same transform set, trilinear, faster; also the device path of
``--gpu_augmentation``); the v1 pipeline below stays selectable (``--augmentation_pipeline batchgenerators``)
and serves the un-augmented validation crops.

Why the pipeline looks the way it does:

- Source, target and masks must stay voxel-aligned, so one ``SpatialTransform`` (rotation, scaling) and one
  ``MirrorTransform`` move them together: source and target travel as channels of ``data`` (cubic, order 3,
  so the target is interpolated, never nearest-neighbour), mask and lesion map as ``seg`` (nearest).
- Each channel is shifted so its normalized air value becomes 0 before any transform and shifted back after.
  The spatial transform then pads rotated-in corners with each modality's own air (its ``cval`` is 0), and
  multiplicative intensity transforms (brightness, contrast) keep air at air instead of brightening it.
- Intensity augmentation (noise, blur, brightness, contrast, gamma, low resolution) touches the source only:
  the target is what the generator must reproduce exactly, so it must stay clean.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform


@dataclass(frozen=True)
class AugmentationSettings:
    """nnU-Net-like defaults (probabilities per sample); recorded in debug.json."""

    rotation_degrees: float = 30.0
    p_rotation: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    p_scale: float = 0.2
    mirror: bool = True
    intensity: bool = True
    #: "torch": augment_torch's trilinear pipeline (default: faster, see documentation/performance.md);
    #: "batchgenerators": the v1 cubic pipeline below
    pipeline: str = "torch"
    #: rotation/scaling, mirroring and intensity on the training device; workers only read (--gpu_augmentation)
    on_device: bool = False

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """Spatial axes mirrored in training (the checkpoint records them for test-time mirroring)."""
        return (0, 1, 2) if self.mirror else ()

    def rotation_axes(self, patch_size: list[int] | tuple[int, ...]) -> tuple[bool, bool, bool]:
        """Rotate about every axis of an isotropic-ish patch; only in-plane (about axis 0) for thin slabs."""
        anisotropic = max(patch_size) / max(min(patch_size), 1) > 3
        return (True, not anisotropic, not anisotropic)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mirror_axes": list(self.mirror_axes)}


def load_size(patch_size: list[int] | tuple[int, ...], settings: AugmentationSettings) -> list[int]:
    """Size of the region read around a patch centre so a rotated / down-scaled patch sees real data.

    The patch box is rotated by the largest angle about each enabled axis and shrunk by the smallest scale;
    the axis-aligned bounding box of the result is what must be read (nnU-Net's "initial patch size").
    """
    patch = np.asarray(patch_size, dtype=np.float64)
    if settings.p_rotation <= 0 and settings.p_scale <= 0:
        return [int(p) for p in patch]
    half = patch / 2
    corners = np.array([[sz, sy, sx] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)], dtype=np.float64) * half
    a = math.radians(settings.rotation_degrees) if settings.p_rotation > 0 else 0.0
    extent = np.abs(corners).max(axis=0)
    for axis, enabled in enumerate(settings.rotation_axes(patch_size)):
        if not enabled or a == 0:
            continue
        i, j = [k for k in range(3) if k != axis]
        for angle in (-a, a):
            c, s = math.cos(angle), math.sin(angle)
            rot = corners.copy()
            rot[:, i] = c * corners[:, i] - s * corners[:, j]
            rot[:, j] = s * corners[:, i] + c * corners[:, j]
            extent = np.maximum(extent, np.abs(rot).max(axis=0))
    if settings.p_scale > 0:
        extent = extent / min(settings.scale[0], 1.0)
    return [int(max(p, math.ceil(2 * e))) for p, e in zip(patch, extent)]


def spatial_transforms(patch_size: list[int], settings: AugmentationSettings, enabled: bool) -> Compose:
    """Rotation/scaling (also the centre crop from the read region to the patch) then mirroring."""
    a = math.radians(settings.rotation_degrees)
    rx, ry, rz = settings.rotation_axes(patch_size)
    transforms: list[AbstractTransform] = [SpatialTransform(
        list(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
        do_rotation=enabled and settings.p_rotation > 0,
        angle_x=(-a, a) if rx else (0.0, 0.0), angle_y=(-a, a) if ry else (0.0, 0.0),
        angle_z=(-a, a) if rz else (0.0, 0.0), p_rot_per_axis=1,
        do_scale=enabled and settings.p_scale > 0, scale=tuple(settings.scale),
        border_mode_data="constant", border_cval_data=0, order_data=3,
        border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
        p_rot_per_sample=settings.p_rotation, p_scale_per_sample=settings.p_scale)]
    if enabled and settings.mirror:
        transforms.append(MirrorTransform(settings.mirror_axes))
    return Compose(transforms)


def intensity_transforms() -> Compose:
    """Source-only intensity augmentation (nnU-Net's probabilities), applied in the air-shifted space."""
    key = "source"
    return Compose([
        GaussianNoiseTransform(noise_variance=(0, 0.01), p_per_sample=0.1, data_key=key),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5,
                              data_key=key),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15, data_key=key),
        ContrastAugmentationTransform(p_per_sample=0.15, data_key=key),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25, data_key=key),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3,
                       data_key=key),
    ])


class TranslationAugmentation(AbstractTransform):
    """Turns read regions into training patches (the ``transform`` of the batchgenerators augmenter).

    Input dict (numpy, batch first): ``source`` (B, C, *load), ``target`` (B, 1, *load), ``mask`` and
    ``lesions`` (B, 1, *load), plus ``target_mask`` when source and target come from different regions
    (``paired=False``). Output: float32 ``source``, ``target``, ``mask`` (and ``target_mask``) at the patch size.
    """

    def __init__(self, patch_size: list[int], source_air: list[float], target_air: float,
                 settings: AugmentationSettings, augment: bool) -> None:
        self.patch_size = list(patch_size)
        self.source_air = np.asarray(source_air, dtype=np.float32).reshape(1, -1, 1, 1, 1)
        self.target_air = np.float32(target_air)
        self.augment = augment
        self.spatial = spatial_transforms(self.patch_size, settings, augment)
        self.intensity = intensity_transforms() if augment and settings.intensity else None

    def __call__(self, **batch: Any) -> dict[str, Any]:
        n_src = batch["source"].shape[1]
        src = batch["source"] - self.source_air
        tgt = batch["target"] - self.target_air
        if "target_mask" in batch:  # unpaired: source and target regions move independently
            a = self.spatial(data=src, seg=batch["mask"])
            b = self.spatial(data=tgt, seg=batch["target_mask"])
            src, mask, tgt, tmask = a["data"], a["seg"], b["data"], b["seg"]
        else:
            out = self.spatial(data=np.concatenate([src, tgt], axis=1),
                               seg=np.concatenate([batch["mask"], batch["lesions"]], axis=1))
            src, tgt = out["data"][:, :n_src], out["data"][:, n_src:]
            mask, tmask = out["seg"][:, :1], None
        if self.intensity is not None:
            src = self.intensity(source=src)["source"]
        result = {"source": (src + self.source_air).astype(np.float32),
                  "target": (tgt + self.target_air).astype(np.float32),
                  "mask": (mask > 0.5).astype(np.float32)}
        if tmask is not None:
            result["target_mask"] = (tmask > 0.5).astype(np.float32)
        for key in ("case_index", "target_case_index", "batch_index"):
            if key in batch:
                result[key] = batch[key]
        return result
