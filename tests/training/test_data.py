"""Data pipeline: deterministic batch streams, foreground/lesion sampling, air padding, aligned augmentation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotrans.training.augment import AugmentationSettings, TranslationAugmentation, load_size
from autotrans.training.data import PatchLoader, PatchSampler, locate_fold_data, make_train_augmenter

NO_SPATIAL = AugmentationSettings(p_rotation=0.0, p_scale=0.0, mirror=False, intensity=False)


def take(stream, n: int) -> list[dict]:
    out = [next(stream) for _ in range(n)]
    if hasattr(stream, "_finish"):
        stream._finish()
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("source", "target", "mask"))


def test_stream_is_deterministic_across_workers_and_offsets(tiny_brain: Path) -> None:
    fold = locate_fold_data("11", "3d_fullres", "0")
    aug = AugmentationSettings()
    serial = take(make_train_augmenter(fold, 2, 7, True, 0, 0, aug), 4)
    threaded = take(make_train_augmenter(fold, 2, 7, True, 0, 2, aug), 4)
    assert same(serial, threaded)  # what a batch holds depends on its index, not on which worker made it
    resumed = take(make_train_augmenter(fold, 2, 7, True, 2, 0, aug), 2)
    assert same(serial[2:], resumed)
    other_seed = take(make_train_augmenter(fold, 2, 8, True, 0, 0, aug), 1)
    assert not same(serial[:1], other_seed)
    rank1 = take(make_train_augmenter(fold, 2, 7, True, 0, 0, aug, rank=1, world=2), 1)
    assert not same(serial[:1], rank1)  # DDP ranks draw different batches
    assert serial[0]["source"].dtype == np.float32 and set(np.unique(serial[0]["mask"])) <= {0.0, 1.0}


def test_foreground_and_lesion_oversampling(tiny_brain: Path) -> None:
    fold = locate_fold_data("11", "3d_fullres", "all")
    sampler = PatchSampler(fold.data_dir, ["MS-patient19"], [8, 8, 8], [-1.0], -1.0)
    lesions = sampler.cases[0].load("lesions")
    mask = sampler.cases[0].load("mask")
    rng = np.random.default_rng(0)
    centres = np.array([sampler.centre(0, rng) for _ in range(1200)])
    on_lesion = np.mean(lesions[tuple(centres.T)] > 0)
    in_mask = np.mean(mask[tuple(centres.T)] > 0)
    base_lesion, base_mask = np.mean(lesions > 0), np.mean(mask > 0)
    assert on_lesion > 0.14 and on_lesion > 5 * base_lesion  # 1/6 aimed at lesions vs ~2 % of the volume
    assert in_mask > 1 / 3 * 0.9 + (1 - 1 / 3) * base_mask * 0.9


def test_regions_outside_the_volume_are_air(tiny_brain: Path) -> None:
    fold = locate_fold_data("11", "3d_fullres", "all")
    sampler = PatchSampler(fold.data_dir, ["TCGA-DU-7294"], [10, 10, 10], [-1.0], -1.0)
    region = sampler.read(0, np.array([0, 0, 0]), ("source", "target", "mask", "lesions"))
    assert region["source"].shape == (1, 10, 10, 10)
    assert np.all(region["source"][:, :5, :, :] == -1.0) and np.all(region["target"][:, :, :5, :] == -1.0)
    assert np.all(region["mask"][:, :, :, :5] == 0) and np.all(region["lesions"] == 0)


def _blob_batch(size: int = 40) -> dict[str, np.ndarray]:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    img = (np.cos(3 * z) * np.sin(2 * y + x) * 0.8).astype(np.float32)[None, None]
    mask = (img > 0.2).astype(np.float32)
    return {"source": img.copy(), "target": img.copy(), "mask": mask, "lesions": np.zeros_like(mask),
            "case_index": np.array([0])}


def test_spatial_augmentation_keeps_source_target_and_mask_aligned() -> None:
    settings = AugmentationSettings(p_rotation=1.0, p_scale=1.0, mirror=True, intensity=False)
    transform = TranslationAugmentation([24, 24, 24], [-1.0], -1.0, settings, augment=True)
    np.random.seed(0)
    changed = 0
    for _ in range(5):
        batch = _blob_batch()
        out = transform(**batch)
        assert out["source"].shape == (1, 1, 24, 24, 24)
        np.testing.assert_allclose(out["source"], out["target"], atol=1e-5)  # one transform for both
        inside = out["mask"] > 0
        assert inside.any() and np.mean(out["target"][inside] > 0.1) > 0.95  # the mask moved with the image
        changed += not np.allclose(out["target"], batch["target"][:, :, 8:32, 8:32, 8:32], atol=1e-3)
    assert changed >= 4


def test_intensity_augmentation_touches_the_source_only() -> None:
    settings = AugmentationSettings(p_rotation=0.0, p_scale=0.0, mirror=False, intensity=True)
    transform = TranslationAugmentation([24, 24, 24], [-1.0], -1.0, settings, augment=True)
    np.random.seed(1)
    source_changed = 0
    for _ in range(20):
        batch = _blob_batch()
        out = transform(**batch)
        crop = batch["target"][:, :, 8:32, 8:32, 8:32]
        np.testing.assert_allclose(out["target"], crop, atol=1e-6)  # only the air shift's rounding
        source_changed += not np.allclose(out["source"], crop, atol=1e-4)
    assert source_changed >= 5


def test_read_size_covers_rotation_and_scaling() -> None:
    assert load_size([24, 28, 24], NO_SPATIAL) == [24, 28, 24]
    big = load_size([24, 28, 24], AugmentationSettings())
    assert all(b > p for b, p in zip(big, [24, 28, 24]))
    thin = load_size([4, 64, 64], AugmentationSettings(p_scale=0.0))
    assert thin[0] == 4 and thin[1] > 64  # slabs rotate in-plane only


def test_unpaired_loader_mixes_cases(tiny_unpaired: Path) -> None:
    fold = locate_fold_data("11", "3d_fullres", "all")
    sampler = PatchSampler(fold.data_dir, fold.train_cases, [16, 16, 16], [-1.0], -1.0)
    with pytest.raises(Exception, match="paired"):
        PatchLoader(sampler, 2, 0, paired=True)
    batch = PatchLoader(sampler, 4, 0, paired=False).generate_train_batch()
    assert set(batch) >= {"source", "target", "mask", "target_mask"}
    for i, j in zip(batch["case_index"], batch["target_case_index"]):
        assert i in sampler.with_source and j in sampler.with_target and i != j
