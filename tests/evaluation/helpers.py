"""Helpers shared by the evaluation tests."""
from __future__ import annotations

import numpy as np


def perturb(a: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    """A plausible imperfect prediction: blur, smooth bias, noise, float32 like a real prediction file."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    bias = ndi.gaussian_filter(rng.normal(0, 1, a.shape), 6) * 20 * scale
    return (ndi.gaussian_filter(a.astype(np.float64), 0.8) + bias + rng.normal(0, scale, a.shape)).astype(np.float32)
