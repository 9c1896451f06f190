"""The fast filters equal whole-volume scipy filtering (including tiny axes and boundary rules)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from autotrans.evaluation.filters import (
    downsample_mean2,
    gaussian_weights,
    local_moments,
    uniform_weights,
    window_mean,
)


@pytest.mark.parametrize("shape", [(2, 5, 9), (3, 4, 4), (9, 8, 10), (1, 7, 7), (13, 3, 2)])
def test_window_mean_matches_scipy_uniform(shape: tuple[int, int, int]) -> None:
    a = np.random.default_rng(1).normal(size=shape) * 1000
    np.testing.assert_allclose(window_mean(a, uniform_weights(7)), ndi.uniform_filter(a, 7), rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(40, 30, 20), (5, 9, 8), (33, 7, 40), (2, 9, 9)])
@pytest.mark.parametrize("kind", ["uniform", "gauss"])
def test_local_moments_equal_whole_volume_filtering(shape: tuple[int, int, int], kind: str) -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=shape), rng.normal(size=shape)
    sel = rng.random(shape) < 0.05
    sel[:, :3] = False  # leave a box that does not reach a face
    sel[0, -1, -1] = True  # and one voxel in a corner (boundary rule)
    w, mode = (uniform_weights(7), "reflect") if kind == "uniform" else (gaussian_weights(11, 1.5), "mirror")
    k3 = np.einsum("i,j,k->ijk", w, w, w)
    got = local_moments(x, y, sel, w, mode, chunk=4)
    for g, a in zip(got, (x, y, x * x, y * y, x * y)):
        np.testing.assert_allclose(g, ndi.correlate(a, k3, mode=mode)[sel], rtol=0, atol=1e-12)


def test_local_moments_empty_selection() -> None:
    x = np.ones((5, 5, 5))
    assert all(m.size == 0 for m in local_moments(x, x, np.zeros_like(x, bool), uniform_weights(7)))


@pytest.mark.parametrize("shape", [(1, 3, 5), (4, 4, 4), (7, 6, 9)])
def test_downsample_equals_fftconvolve_same(shape: tuple[int, int, int]) -> None:
    a = np.random.default_rng(3).normal(size=shape)
    ref = fftconvolve(a, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]
    np.testing.assert_allclose(downsample_mean2(a), ref, rtol=0, atol=1e-12)


def test_downsample_hand_values() -> None:
    a = np.arange(1.0, 5.0).reshape(1, 1, 4) * np.ones((2, 2, 1))  # x = 1 2 3 4 on a 2x2 face
    # output m sums inputs {2m-1, 2m} per axis (zero before the first voxel) and divides by 8: along
    # axes 0 and 1 only index 0 exists, so out[0, 0, m] = (x[2m-1] + x[2m]) / 8
    out = downsample_mean2(a)
    assert out.shape == (1, 1, 2)
    np.testing.assert_allclose(out[0, 0], [(0 + 1) / 8, (2 + 3) / 8], rtol=0, atol=1e-15)
