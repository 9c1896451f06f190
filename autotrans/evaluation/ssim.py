"""Masked SSIM and MS-SSIM scores, exact to their scikit-image / challenge definitions.

All functions take volumes that are already prepared by the caller (clipped, background set, shifted)
as float64 and return the mean of the SSIM map over selected voxels. Work is limited to the selected
voxels' neighbourhood (see :mod:`autotrans.evaluation.filters`), which is why these are several times
faster than computing full SSIM maps while giving the same numbers.
"""
from __future__ import annotations

import logging

import numpy as np

from autotrans.evaluation.filters import (
    downsample_mean2,
    gaussian_weights,
    local_moments,
    uniform_weights,
)

log = logging.getLogger(__name__)

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = 97  # 5 scales of a 7-voxel window after 4 halvings


def cropped_selection(mask: np.ndarray, crop: int) -> np.ndarray:
    """``mask`` with a ``crop``-voxel border cleared: selecting with it equals cropping map and mask."""
    sel = np.zeros(mask.shape, dtype=bool)
    inner = tuple(slice(crop, n - crop) for n in mask.shape)
    sel[inner] = mask[inner]
    return sel


def _sample_moments(m: tuple[np.ndarray, ...], n_window: int) -> tuple[np.ndarray, ...]:
    """Means plus sample (co)variances, N/(N-1) as scikit-image's default."""
    ux, uy, uxx, uyy, uxy = m
    cov_norm = n_window / (n_window - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    return ux, uy, vx, vy, vxy


def ssim_from_moments(m: tuple[np.ndarray, ...], data_range: float, win: int = 7,
                      k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """SSIM map values (scikit-image formula, uniform window, sample covariance) at the selected voxels."""
    ux, uy, vx, vy, vxy = _sample_moments(m, win**3)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux**2 + uy**2 + c1
    b2 = vx + vy + c2
    return (a1 * a2) / (b1 * b2)


def lcs_from_moments(m: tuple[np.ndarray, ...], data_range: float, weight: float, win: int = 7,
                     k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """SynthRAD2025 per-scale map: clipped luminance, contrast and structure, each to ``weight``.

    The official code also raises luminance to the scale weight at every scale (the textbook MS-SSIM
    uses luminance only at the coarsest scale); we match it.
    """
    ux, uy, vx, vy, vxy = _sample_moments(m, win**3)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    c3 = c2 / 2
    sxy = np.sqrt(np.maximum(vx, 0))
    sxy *= np.sqrt(np.maximum(vy, 0))
    lum = np.maximum((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0)
    con = np.maximum((2 * sxy + c2) / (vx + vy + c2), 0)
    struct = np.maximum((vxy + c3) / (sxy + c3), 0)
    # one power of the product instead of three: equal to l^w c^w s^w up to the last bit, 3x cheaper
    prod = lum * con
    prod *= struct
    return np.power(prod, weight, out=prod)


def masked_ssim(x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float,
                win: int = 7, crop: int = 3) -> float:
    """Mean of the scikit-image 3D SSIM map over ``mask`` after cropping ``crop`` voxels (SynthRAD2023)."""
    sel = cropped_selection(mask, crop)
    if not sel.any():
        return float("nan")
    vals = ssim_from_moments(local_moments(x, y, sel, uniform_weights(win)), data_range, win)
    return float(vals.mean(dtype=np.float64))


def pad_to_min_size(arrays: list[np.ndarray], size: int = MS_SSIM_MIN_SIZE) -> list[np.ndarray]:
    """Edge-pad every array to at least ``size`` per axis, floor half of the padding before."""
    shape = arrays[0].shape
    pads = [(max((size - n) // 2, 0), max(size - n - (size - n) // 2, 0)) for n in shape]
    if not any(a or b for a, b in pads):
        return arrays
    return [np.pad(a, pads, mode="edge") for a in arrays]


def masked_ms_ssim(x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float,
                   weights: tuple[float, ...] = MS_SSIM_WEIGHTS, win: int = 7, crop: int = 3,
                   first_moments: tuple[np.ndarray, ...] | None = None,
                   return_scales: bool = False) -> float | tuple[float, list[float]]:
    """SynthRAD2025 masked 3D MS-SSIM: product over scales of the clipped masked per-scale means.

    ``first_moments`` lets a caller that already computed the finest-scale moments (for SSIM on the
    same inputs and selection, without padding) skip recomputing them.
    """
    padded = any(n < MS_SSIM_MIN_SIZE for n in x.shape)
    x, y, m = pad_to_min_size([x, y, mask.astype(bool)])
    w1 = uniform_weights(win)
    scales: list[float] = []
    for level, weight in enumerate(weights):
        sel = cropped_selection(m, crop)
        if level == 0 and first_moments is not None and not padded:
            mom = first_moments
        else:
            mom = local_moments(x, y, sel, w1)
        if mom[0].size == 0:
            log.warning("MS-SSIM: no mask voxel left at scale %d after cropping; score is NaN", level + 1)
            scales.append(float("nan"))
        else:
            scales.append(float(lcs_from_moments(mom, data_range, weight, win).mean(dtype=np.float64)))
        if level < len(weights) - 1:
            x, y = downsample_mean2(x), downsample_mean2(y)
            m = m[::2, ::2, ::2]
    value = float(np.prod([np.clip(s, 0, 1) for s in scales]))
    return (value, scales) if return_scales else value


def gaussian_ssim_region_means(x: np.ndarray, y: np.ndarray, regions: list[np.ndarray],
                               data_range: float, size: int = 11, sigma: float = 1.5,
                               k1: float = 0.01, k2: float = 0.03) -> list[float]:
    """Mean of torchmetrics' 3D SSIM map (Gaussian window, mirror padding, population variance
    clamped at 0) over each boolean region of ``regions``; NaN for an empty region."""
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    w = gaussian_weights(size, sigma)
    out = []
    for region in regions:
        if not region.any():
            out.append(float("nan"))
            continue
        ux, uy, uxx, uyy, uxy = local_moments(x, y, region, w, mode="mirror")
        mu_xy = ux * uy
        vx = np.clip(uxx - ux * ux, 0, None)
        vy = np.clip(uyy - uy * uy, 0, None)
        vxy = uxy - mu_xy
        vals = ((2 * mu_xy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(float(vals.mean(dtype=np.float64)))
    return out
