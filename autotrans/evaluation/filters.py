"""Fast separable window filters and SSIM moments, restricted to the voxels a score needs.

Every SSIM variant here reduces to five local means (x, y, x², y², xy) evaluated only where the score
is averaged (a mask, after cropping). Two tricks keep the values identical to a whole-volume
``scipy.ndimage`` computation while doing far less work:

* the moments are computed slab by slab (along axis 0) on the bounding box of the selected voxels
  grown by the window radius, clamped to the volume: where the box touches a volume face the boundary
  rule (reflect/mirror) acts exactly as on the whole volume, elsewhere the window never reaches the
  box edge;
* along the two slow (strided) axes the window sum is a sum of shifted contiguous slabs (rows fetched
  with the boundary rule applied), which streams memory instead of walking lines; the fast axis uses
  ``uniform_filter1d``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from autotrans.utils.lazy import LazyModule

ndi = LazyModule("scipy.ndimage")

# scipy.ndimage boundary names -> numpy.pad names (same extension rule)
_PAD_MODE = {"reflect": "symmetric", "mirror": "reflect"}


def _slab_sum(a: np.ndarray, weights: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """Mean of ``a`` over a window of ``len(weights)`` (uniform ``weights``) along ``axis``."""
    r = (len(weights) - 1) // 2
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode=_PAD_MODE[mode])

    def take(k: int) -> np.ndarray:
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(k, k + n)
        return p[tuple(sl)]

    out = take(0) + take(1)
    for k in range(2, len(weights)):
        out += take(k)
    out *= weights[0]
    return out


def window_mean(a: np.ndarray, weights: np.ndarray, mode: str = "reflect", first_axis: int = 0) -> np.ndarray:
    """Separable window filter with the same 1D ``weights`` on every axis (float64).

    ``mode`` follows ``scipy.ndimage``: ``reflect`` (skimage's SSIM) or ``mirror`` (torch's reflect pad).
    Axes before ``first_axis`` are left unfiltered.
    """
    out = np.asarray(a, dtype=np.float64)
    uniform = bool(np.all(weights == weights[0]))
    r = (len(weights) - 1) // 2
    for axis in range(first_axis, out.ndim):
        if uniform and axis < out.ndim - 1 and out.shape[axis] > r:
            out = _slab_sum(out, weights, axis, mode)  # strided axis: stream shifted slabs
        elif uniform:
            out = ndi.uniform_filter1d(out, len(weights), axis=axis, mode=mode)
        else:
            out = ndi.correlate1d(out, weights, axis=axis, mode=mode)
    return out


def uniform_weights(size: int) -> np.ndarray:
    return np.full(size, 1.0 / size)


def gaussian_weights(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1D Gaussian sampled at integer offsets (torchmetrics' SSIM kernel)."""
    d = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def grown_bbox(sel: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of ``sel`` grown by ``margin`` voxels and clamped to the array, or None if empty."""
    idx = [np.flatnonzero(sel.any(axis=tuple(a for a in range(sel.ndim) if a != ax))) for ax in range(sel.ndim)]
    if any(len(i) == 0 for i in idx):
        return None
    return tuple(
        slice(max(int(i[0]) - margin, 0), min(int(i[-1]) + margin + 1, n)) for i, n in zip(idx, sel.shape)
    )


def _valid_sum0(a: np.ndarray, weights: np.ndarray, m: int) -> np.ndarray:
    """Window sum along axis 0 without padding: ``m`` outputs from ``m + len(weights) - 1`` planes."""
    if np.all(weights == weights[0]):
        out = a[0:m] + a[1:m + 1]
        for k in range(2, len(weights)):
            out += a[k:k + m]
        out *= weights[0]
    else:
        out = weights[0] * a[0:m]
        for k in range(1, len(weights)):
            out += weights[k] * a[k:k + m]
    return out


def local_moments(
    x: np.ndarray, y: np.ndarray, sel: np.ndarray, weights: np.ndarray, mode: str = "reflect",
    chunk: int = 16,
) -> tuple[np.ndarray, ...]:
    """Local means of x, y, x², y², xy at the voxels of ``sel`` (1D arrays in C order).

    Values equal filtering the whole volumes and indexing with ``sel``. The volume is processed in
    slabs of ``chunk`` planes along axis 0, each cut to its selected voxels' grown bounding box: boxes
    follow the mask more tightly, the axis-0 pass yields only the slab's planes, and the small
    temporaries stay in cache and allocator pools.
    """
    r = (len(weights) - 1) // 2
    n0 = sel.shape[0]
    # row index of every position -r .. n0+r-1 under the boundary rule (handles repeated reflection)
    rows_all = np.pad(np.arange(n0), r, mode=_PAD_MODE[mode])

    def slab(z0: int) -> list[np.ndarray] | None:
        z1 = min(z0 + chunk, n0)
        box = grown_bbox(sel[z0:z1], r)
        if box is None:
            return None
        rows = rows_all[z0:z1 + 2 * r]
        xs = np.asarray(x[(slice(None),) + box[1:]][rows], dtype=np.float64)
        ys = np.asarray(y[(slice(None),) + box[1:]][rows], dtype=np.float64)
        s = sel[(slice(z0, z1),) + box[1:]]
        return [window_mean(_valid_sum0(a, weights, z1 - z0), weights, mode, first_axis=1)[s]
                for a in (xs, ys, xs * xs, ys * ys, xs * ys)]

    planes = np.flatnonzero(sel.reshape(n0, -1).any(axis=1))
    starts = list(range(int(planes[0]), int(planes[-1]) + 1, chunk)) if planes.size else []
    workers = min(_threads(), len(starts))
    if workers > 1:  # NumPy and SciPy filters release the GIL: slabs run in parallel, order kept
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(slab, starts))
    else:
        results = [slab(z0) for z0 in starts]
    results = [res for res in results if res is not None]
    if not results:
        return tuple(np.empty(0) for _ in range(5))
    return tuple(np.concatenate([res[i] for res in results]) for i in range(5))


def _threads() -> int:
    """Worker threads for slab filtering: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def downsample_mean2(a: np.ndarray) -> np.ndarray:
    """``fftconvolve(a, ones((2,2,2))/8, 'same')[::2, ::2, ::2]`` computed directly.

    With an even kernel, 'same' keeps outputs 0..n-1 of the full convolution, so output ``m`` along
    an axis averages inputs ``2m-1`` and ``2m`` with zero before the first voxel.
    """
    out = np.asarray(a, dtype=np.float64)
    for axis in range(out.ndim):
        n = out.shape[axis]
        even = [slice(None)] * out.ndim
        even[axis] = slice(0, n, 2)
        odd = [slice(None)] * out.ndim
        odd[axis] = slice(1, n, 2)
        res = out[tuple(even)].copy()
        m = res.shape[axis]
        dst = [slice(None)] * out.ndim
        dst[axis] = slice(1, m)
        src = [slice(None)] * out.ndim
        src[axis] = slice(0, m - 1)
        res[tuple(dst)] += out[tuple(odd)][tuple(src)]
        out = res
    return out * 0.125
