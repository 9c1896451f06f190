from __future__ import annotations

import numpy as np

from autotrans.preprocessing.resampling import resample_volume, separate_axis


def test_separate_axis_only_for_anisotropic_grids() -> None:
    assert separate_axis([1, 1, 1], [2, 2, 2]) is None
    assert separate_axis([6.5, 0.78, 0.78], [3.0, 0.78, 0.78]) == 0
    assert separate_axis([1, 1, 1], [1, 1, 4]) == 2


def test_constant_and_ramp_survive_resampling() -> None:
    const = np.full((10, 12, 14), 3.5, np.float32)
    out = resample_volume(const, (20, 6, 7), (1, 2, 2), (0.5, 4, 4))
    assert out.shape == (20, 6, 7) and np.allclose(out, 3.5, atol=1e-5)
    z = np.arange(16, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    up = resample_volume(z, (32, 8, 8), (1, 1, 1), (0.5, 1, 1), order=1, order_z=1)
    centers = (np.arange(32) + 0.5) / 2 - 0.5  # voxel-edge-aligned mapping
    assert np.allclose(up[2:-2, 4, 4], centers[2:-2], atol=1e-4)


def test_labels_stay_labels_and_anisotropic_path_runs() -> None:
    rng = np.random.default_rng(0)
    lab = (rng.random((6, 20, 20)) > 0.7).astype(np.uint8) * 3
    out = resample_volume(lab, (18, 10, 10), (6.0, 1.0, 1.0), (2.0, 2.0, 2.0), order=0, order_z=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 3}
    img = rng.random((6, 20, 20)).astype(np.float32)
    out = resample_volume(img, (18, 10, 10), (6.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert out.shape == (18, 10, 10) and out.dtype == np.float32
