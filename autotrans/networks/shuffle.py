"""3D pixel (un)shuffle with a factor per axis: lossless space <-> channel reshuffles.

Sub-pixel convolution (Shi et al. 2016), SRGAN's upsampling, is a conv to ``C * fz * fy * fx`` channels
followed by ``pixel_shuffle_3d``; ``pixel_unshuffle_3d`` is its inverse (space-to-depth). Channels are
ordered ``(c, fz, fy, fx)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def pixel_unshuffle_3d(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """``(N, C, D, H, W)`` with sizes multiples of ``factors`` -> ``(N, C * fz * fy * fx, D/fz, H/fy, W/fx)``."""
    n, c, d, h, w = x.shape
    fz, fy, fx = (int(f) for f in factors)
    x = x.reshape(n, c, d // fz, fz, h // fy, fy, w // fx, fx).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(n, c * fz * fy * fx, d // fz, h // fy, w // fx)


def pixel_shuffle_3d(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Inverse of ``pixel_unshuffle_3d``: ``(N, C * fz * fy * fx, d, h, w)`` -> ``(N, C, d*fz, h*fy, w*fx)``."""
    n, cf, d, h, w = x.shape
    fz, fy, fx = (int(f) for f in factors)
    c = cf // (fz * fy * fx)
    x = x.reshape(n, c, fz, fy, fx, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(n, c, d * fz, h * fy, w * fx)
