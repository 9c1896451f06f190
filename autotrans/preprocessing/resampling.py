"""Resampling between grids: cubic for intensities, nearest for labels, a coarse axis handled on its own.

``scipy.ndimage.zoom`` with ``grid_mode=True`` aligns voxel edges (the mapping of skimage's ``resize`` that
nnU-Net uses), so resampling to a shape and back to the original shape returns to the original grid.
When spacing is anisotropic (coarsest / finest > threshold) the in-plane axes are interpolated slice by
slice with ``order`` and the coarse axis separately with ``order_z``, which avoids cubic ringing across
thick slices.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import zoom


def separate_axis(old_spacing: Sequence[float], new_spacing: Sequence[float], threshold: float = 3.0) -> int | None:
    """The axis to resample separately, or None. Taken from whichever grid is anisotropic."""
    for sp in (old_spacing, new_spacing):
        sp = np.asarray(sp, dtype=float)
        if sp.max() / sp.min() > threshold:
            axis = int(np.argmax(sp))
            if np.sum(sp == sp[axis]) == 1:  # a unique coarse axis; otherwise no clear "z"
                return axis
    return None


def _zoom_to(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    if tuple(x.shape) == tuple(shape):
        return x.astype(np.float32, copy=False) if order > 0 else x
    factors = [n / o for n, o in zip(shape, x.shape)]
    out = zoom(x, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(shape):  # guard against round-off in scipy's output shape
        raise RuntimeError(f"resampling produced {out.shape}, expected {tuple(shape)}")
    return out


def resample_volume(x: np.ndarray, new_shape: Sequence[int], old_spacing: Sequence[float],
                    new_spacing: Sequence[float], order: int = 3, order_z: int = 1,
                    threshold: float = 3.0) -> np.ndarray:
    """Resample one ``(z, y, x)`` volume to ``new_shape``. Labels: pass ``order=order_z=0``."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(x.shape) == new_shape:
        return x
    is_label = order == 0
    work = x if is_label else x.astype(np.float32, copy=False)
    axis = separate_axis(old_spacing, new_spacing, threshold)
    if axis is None:
        out = _zoom_to(work, new_shape, order)
    else:
        inplane = [new_shape[a] if a != axis else work.shape[a] for a in range(3)]
        moved = np.moveaxis(work, axis, 0)
        target2d = [inplane[a] for a in range(3) if a != axis]
        tmp = np.stack([_zoom_to(sl, target2d, order) for sl in moved])
        tmp = np.moveaxis(tmp, 0, axis)
        out = _zoom_to(tmp, new_shape, order_z)
    return out if is_label else out.astype(np.float32, copy=False)


def resample_channels(x: np.ndarray, new_shape: Sequence[int], old_spacing: Sequence[float],
                      new_spacing: Sequence[float], order: int = 3, order_z: int = 1,
                      threshold: float = 3.0) -> np.ndarray:
    """Resample a ``(C, z, y, x)`` stack channel by channel."""
    return np.stack([resample_volume(c, new_shape, old_spacing, new_spacing, order, order_z, threshold) for c in x])
