"""Cropping to the region that matters: the mask when one exists, else the non-background of the source.

Only source channels decide the crop without a mask, because inference has no target: training and
inference then crop by the same rule. For MR and PET, non-background is "not 0" (nnU-Net's rule, so
the planner sees the shapes nnU-Net would); for CT/CBCT, where air is about -1000 HU and never 0, it is
"above a body threshold" (default -500 HU).

``nonbackground_mask`` of the whole source is also the region a source channel's per-case normalization
parameters (MR percentiles) are fitted on, with or without a mask: inference can compute it, so training
and inference give a case the same source parameters.
"""
from __future__ import annotations

import numpy as np
from autotrans.utils.lazy import LazyModule

ndimage = LazyModule("scipy.ndimage")

CT_BODY_THRESHOLD_HU = -500.0


def nonbackground_mask(source: np.ndarray, modalities: list[str] | tuple[str, ...],
                       ct_threshold: float = CT_BODY_THRESHOLD_HU) -> np.ndarray:
    """Boolean ``(z, y, x)`` union over channels of each channel's non-background, holes filled."""
    if source.ndim != 4 or source.shape[0] != len(modalities):
        raise ValueError(f"source must be (C, z, y, x) with C={len(modalities)}, got {source.shape}")
    fg = np.zeros(source.shape[1:], dtype=bool)
    for ch, modality in zip(source, modalities):
        fg |= (ch > ct_threshold) if modality in ("CT", "CBCT") else (ch != 0)
    return ndimage.binary_fill_holes(fg)


def bbox_of(mask: np.ndarray) -> list[list[int]]:
    """``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open) of the non-zero voxels; the whole array when empty."""
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append([int(nz[0]), int(nz[-1]) + 1])
    return box


def crop_slices(box: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def crop_region(source: np.ndarray, mask: np.ndarray | None, modalities: list[str] | tuple[str, ...]) -> tuple[list[list[int]], np.ndarray]:
    """Return the crop box and the foreground used for it (the mask, or the source non-background)."""
    fg = mask.astype(bool) if mask is not None else nonbackground_mask(source, modalities)
    return bbox_of(fg), fg
