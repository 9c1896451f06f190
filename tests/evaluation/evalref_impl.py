"""Straightforward reference implementations of the evaluation standards (tests and benchmark only).

Written directly from the definitions in documentation/evaluation.md with whole-volume scikit-image /
NumPy / SciPy calls, no shortcuts, so the fast package code can be checked against them.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop


def ref_synthrad2023(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    gt = gt.astype(np.float64)
    pred = pred.astype(np.float64)
    m = np.where(mask > 0, 1.0, 0.0)
    mae = np.sum(np.abs(gt * m - pred * m)) / m.sum()
    g = np.clip(gt, -1024, 3000)
    p = np.clip(pred, -1024, 3000)
    psnr = peak_signal_noise_ratio(g[m == 1], p[m == 1], data_range=4024)
    g = np.where(m == 0, -1024, g) + 1024
    p = np.where(m == 0, -1024, p) + 1024
    _, smap = structural_similarity(g, p, data_range=4024, full=True)
    ssim = crop(smap, 3)[crop(m, 3).astype(bool)].mean(dtype=np.float64)
    return {"mae": float(mae), "psnr": float(psnr), "ssim": float(ssim)}


def _ssim_scale(x: np.ndarray, y: np.ndarray, w: float, dr: float) -> np.ndarray:
    ux, uy = uniform_filter(x, 7), uniform_filter(y, 7)
    uxx, uyy, uxy = uniform_filter(x * x, 7), uniform_filter(y * y, 7), uniform_filter(x * y, 7)
    n = 7**3 / (7**3 - 1)
    vx, vy, vxy = n * (uxx - ux * ux), n * (uyy - uy * uy), n * (uxy - ux * uy)
    sx, sy = np.clip(vx, 0, None) ** 0.5, np.clip(vy, 0, None) ** 0.5
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    c3 = c2 / 2
    lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    st = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
    return lum**w * con**w * st**w


def ref_ms_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, lo: float, hi: float, clip: bool = True) -> float:
    m = np.where(mask > 0, 1.0, 0.0)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    if clip:
        g, p = np.clip(g, lo, hi), np.clip(p, lo, hi)
    g = np.where(m == 0, lo, g) - lo
    p = np.where(m == 0, lo, p) - lo
    pads = [((97 - n) // 2 if n < 97 else 0, 97 - n - (97 - n) // 2 if n < 97 else 0) for n in g.shape]
    g, p, m = (np.pad(a, pads, mode="edge") for a in (g, p, m))
    vals = []
    for w in (0.0448, 0.2856, 0.3001, 0.2363, 0.1333):
        smap = _ssim_scale(g, p, w, hi - lo)
        vals.append(crop(smap, 3)[crop(m, 3).astype(bool)].mean(dtype=np.float64))
        k = np.ones((2, 2, 2)) / 8
        g, p = (fftconvolve(a, k, mode="same")[::2, ::2, ::2] for a in (g, p))
        m = m[::2, ::2, ::2]
    return float(np.prod([np.clip(v, 0, 1) for v in vals]))


def ref_synthrad2025(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    m = np.where(mask > 0, 1.0, 0.0)
    g = np.where(m == 0, -1024, gt.astype(np.float64))
    p = np.where(m == 0, -1024, pred.astype(np.float64))
    mae = np.sum(np.abs(g * m - p * m)) / m.sum()
    psnr = peak_signal_noise_ratio(np.clip(g, -1024, 3071)[m == 1], np.clip(p, -1024, 3071)[m == 1],
                                   data_range=4095)
    return {"mae": float(mae), "psnr": float(psnr), "ms_ssim": ref_ms_ssim(g, p, m, -1024.0, 3071.0)}


def ref_autotrans(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """autotrans standard on [lo, hi]: every metric on the unclipped values inside the mask; [lo, hi] sets PSNR's
    peak, the SSIM data range and the outside-mask value (scikit-image PSNR/SSIM, MS-SSIM as synthrad2025)."""
    r, p = ref.astype(np.float64), pred.astype(np.float64)
    m = mask > 0
    err = np.abs(r[m] - p[m])
    psnr = peak_signal_noise_ratio(r[m], p[m], data_range=hi - lo)
    x, y = np.where(m, r, lo) - lo, np.where(m, p, lo) - lo
    _, smap = structural_similarity(x, y, data_range=hi - lo, full=True)
    return {
        "mae": float(err.mean()), "mse": float(np.mean(err**2)), "psnr": float(psnr),
        "ssim": float(crop(smap, 3)[crop(m, 3)].mean()),
        "ms_ssim": ref_ms_ssim(r, p, m, lo, hi, clip=False),
    }


def load_torchmetrics_ssim():
    """torchmetrics' functional SSIM, or None when torchmetrics is not installed.

    torchmetrics' package import pulls in torchvision when it is installed, and torchvision is broken
    beside some CPU torch builds; the SSIM module itself needs neither, so it is loaded on its own
    without running the package ``__init__`` files (sys.modules is restored afterwards).
    """
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None:
        return None
    try:
        from torchmetrics.functional.image.ssim import structural_similarity_index_measure

        return structural_similarity_index_measure
    except Exception as e:  # noqa: BLE001 - broken optional dependency chain, fall back below
        logging.getLogger(__name__).info("torchmetrics package import failed (%s); loading its SSIM alone", e)
    before = set(sys.modules)
    saved = {k: v for k, v in sys.modules.items() if k.startswith("torchmetrics")}
    root = spec.submodule_search_locations[0]
    try:
        for k in list(sys.modules):
            if k.startswith("torchmetrics"):
                del sys.modules[k]
        for name, sub in (("torchmetrics", ""), ("torchmetrics.functional", "/functional"),
                          ("torchmetrics.functional.image", "/functional/image")):
            mod = types.ModuleType(name)
            mod.__path__ = [root + sub]
            sys.modules[name] = mod
        sys.modules["torchmetrics"]._logger = logging.getLogger("torchmetrics")
        fn = importlib.import_module("torchmetrics.functional.image.ssim").structural_similarity_index_measure
    finally:
        for k in set(sys.modules) - before:
            if k.startswith("torchmetrics"):
                del sys.modules[k]
        sys.modules.update(saved)
    return fn


def ref_brasyn(gt: np.ndarray, pred: np.ndarray, lesion: np.ndarray) -> dict[str, float]:
    """BraSyn with torchmetrics' SSIM map in float64 and the intended region means."""
    import torch

    ssim_fn = load_torchmetrics_ssim()

    def norm(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a.astype(np.float64), [0.5, 99.5])
        lo = max(lo, 0)
        return (np.clip(a.astype(np.float64), lo, hi) - lo) / (hi - lo)

    g, p = norm(gt), norm(pred)
    m = (lesion > 0).astype(np.float64)
    out = {}
    for name, region in (("ssim_lesion", m), ("ssim_non_lesion", 1 - m)):
        pt, gt_ = (torch.from_numpy(a * region)[None, None] for a in (p, g))
        _, smap = ssim_fn(preds=pt, target=gt_, return_full_image=True)
        out[name] = float(smap[0, 0].numpy()[region == 1].mean())
    return out
