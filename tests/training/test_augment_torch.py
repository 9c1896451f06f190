"""The torch augmentation (issue 17.1/17.2): joint alignment under every transform on both paths (CPU workers
and device), air padding, source-only intensity, and the device path's statistics against the CPU path's."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from autotrans.training.augment import AugmentationSettings, TranslationAugmentation
from autotrans.training.augment_torch import SampleParams, TorchAugmentation, _rot, draw, spatial
from autotrans.training.data import device_augmentation, locate_fold_data, make_train_augmenter

PATCH = [24, 24, 24]
ONLY = {  # each transform alone, always on
    "rotation": AugmentationSettings(p_rotation=1.0, p_scale=0.0, mirror=False, intensity=False),
    "scaling": AugmentationSettings(p_rotation=0.0, p_scale=1.0, mirror=False, intensity=False),
    "mirroring": AugmentationSettings(p_rotation=0.0, p_scale=0.0, mirror=True, intensity=False),
    "all": AugmentationSettings(p_rotation=1.0, p_scale=1.0, mirror=True, intensity=False),
}


def _blob_batch(size: int = 40, n: int = 2) -> dict[str, np.ndarray]:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    img = (np.cos(3 * z) * np.sin(2 * y + x) * 0.8).astype(np.float32)[None, None].repeat(n, 0)
    mask = (img > 0.2).astype(np.float32)
    return {"source": img.copy(), "target": img.copy(), "mask": mask, "lesions": np.zeros_like(mask)}


def _both_paths(t: TorchAugmentation, batch: dict[str, np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    """The CPU workers' transform (per sample, boxed) and the device transform (one grid_sample per batch) with the
    same draws."""
    np.random.seed(seed)
    cpu = t.numpy_transform(**batch)
    np.random.seed(seed)
    dev = {k: v.numpy() for k, v in t({k: torch.from_numpy(v) for k, v in batch.items()}).items()}
    return [cpu, dev]


@pytest.mark.parametrize("name", list(ONLY))
def test_every_transform_keeps_source_target_and_mask_aligned(name: str) -> None:
    t = TorchAugmentation(PATCH, [-1.0], -1.0, ONLY[name])
    batch = _blob_batch()
    changed = 0
    for seed in range(4):
        cpu, dev = _both_paths(t, batch, seed)
        np.testing.assert_allclose(cpu["source"], dev["source"], atol=1e-4)  # the two paths agree
        assert np.array_equal(cpu["mask"], dev["mask"])
        for out in (cpu, dev):
            assert out["source"].shape == (2, 1, *PATCH) and out["source"].dtype == np.float32
            np.testing.assert_allclose(out["source"], out["target"], atol=1e-5)  # one grid for both
            inside = out["mask"] > 0
            assert set(np.unique(out["mask"])) <= {0.0, 1.0}
            assert inside.any() and np.mean(out["target"][inside] > 0.1) > 0.95  # the mask moved with the image
            assert np.mean(out["target"][~inside] > 0.25) < 0.05
        changed += not np.allclose(cpu["target"], batch["target"][:, :, 8:32, 8:32, 8:32], atol=1e-3)
    assert changed >= 2


def test_mirroring_and_rotation_are_exact_where_they_should_be() -> None:
    x = torch.randn(1, 2, 30, 30, 30)
    crop = x[:, :, 3:27, 3:27, 3:27]
    flipped = spatial(x, [SampleParams(np.eye(3), False, (True, False, True))], PATCH)
    assert torch.equal(flipped, torch.flip(crop, [2, 4]))  # no interpolation without rotation/scaling
    same = spatial(x, [SampleParams(np.eye(3), True, (True, False, True))], PATCH)  # through the grid
    assert torch.allclose(same, flipped, atol=1e-5)
    quarter = spatial(x, [SampleParams(_rot(0, math.pi / 2), True, (False, False, False))], PATCH)
    turned = [torch.rot90(crop, k, dims=(3, 4)) for k in (1, 3)]
    assert min(float((quarter - r).abs().max()) for r in turned) < 1e-4  # about axis 0: within the (y, x) plane


def test_air_padding_and_value_ranges() -> None:
    """Zoomed-out and rotated patches of a small region: the outside is each channel's own air, masks are 0."""
    settings = AugmentationSettings(p_rotation=1.0, p_scale=1.0, scale=(1.4, 1.4), mirror=True, intensity=False)
    t = TorchAugmentation(PATCH, [-1.0, 0.0], -0.5, settings)
    size = 24
    rng = np.random.default_rng(0)
    batch = {"source": np.stack([rng.uniform(0.2, 1, (size,) * 3), rng.uniform(0.2, 1, (size,) * 3)])[None]
             .astype(np.float32).repeat(2, 0),
             "target": rng.uniform(0.2, 1, (2, 1, size, size, size)).astype(np.float32),
             "mask": np.ones((2, 1, size, size, size), np.float32),
             "lesions": np.zeros((2, 1, size, size, size), np.float32)}
    for out in _both_paths(t, batch, 3):
        outside = out["mask"][:, 0] == 0
        assert outside.mean() > 0.1  # the zoom-out reaches beyond the read region
        corner = (slice(None), 0, 0, 0)
        assert np.allclose(out["source"][:, 0][corner], -1.0) and np.allclose(out["source"][:, 1][corner], 0.0)
        assert np.allclose(out["target"][:, 0][corner], -0.5)
        for c, air in ((0, -1.0), (1, 0.0)):
            v = out["source"][:, c]
            assert v.min() >= air - 1e-5 and v.max() <= 1 + 1e-5  # linear interpolation: no overshoot
        assert out["target"].min() >= -0.5 - 1e-5


def test_intensity_touches_the_source_only() -> None:
    settings = AugmentationSettings(p_rotation=0.0, p_scale=0.0, mirror=False, intensity=True)
    t = TorchAugmentation(PATCH, [-1.0], -1.0, settings)
    batch = _blob_batch()
    crop = batch["target"][:, :, 8:32, 8:32, 8:32]
    changed = 0
    for seed in range(20):
        cpu, dev = _both_paths(t, batch, seed)
        np.testing.assert_allclose(cpu["source"], dev["source"], atol=1e-4)
        np.testing.assert_allclose(cpu["target"], crop, atol=1e-6)
        changed += not np.allclose(cpu["source"], crop, atol=1e-4)
    assert changed >= 5


def test_draws_follow_the_batchgenerators_probabilities() -> None:
    np.random.seed(0)
    params = draw(AugmentationSettings(), PATCH, 4000, 1, augment=True, intensity=True)
    resampled = np.mean([p.resample for p in params])
    assert abs(resampled - (1 - 0.8 * 0.8)) < 0.03  # rotation 0.2, scaling 0.2, independent
    assert all(abs(np.mean([p.flips[a] for p in params]) - 0.5) < 0.03 for a in range(3))
    for op, prob in (("noise", 0.1), ("blur", 0.2), ("brightness", 0.15), ("contrast", 0.15), ("lowres", 0.25),
                     ("gamma", 0.3)):
        assert abs(np.mean([any(n == op for n, _ in p.intensity) for p in params]) - prob) < 0.025, op
    scales = [abs(np.linalg.det(p.matrix)) ** (1 / 3) for p in params if p.resample]
    assert 0.7 - 1e-6 <= min(scales) and max(scales) <= 1.4 + 1e-6


def _stats(batches: list[dict]) -> dict[str, float]:
    src = np.concatenate([np.asarray(b["source"]) for b in batches])
    tgt = np.concatenate([np.asarray(b["target"]) for b in batches])
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
    return {"source_mean": float(src.mean()), "source_std": float(src.std()), "target_mean": float(tgt.mean()),
            "target_std": float(tgt.std()), "mask": float(mask.mean()), "air": float(np.mean(tgt == tgt.min())),
            "target_min": float(tgt.min()), "target_max": float(tgt.max())}


def test_device_path_matches_the_cpu_path_statistics(tiny_brain: Path) -> None:
    """The same stream augmented by the workers (CPU path) and on the device (--gpu_augmentation, CPU tensors here):
    same shapes, dtypes, air padding and value range, and the same statistics within sampling noise; the
    batchgenerators v1 pipeline as a third opinion."""
    fold = locate_fold_data("11", "3d_fullres", "all")
    settings = AugmentationSettings()
    n = 30

    def take(s: AugmentationSettings) -> list[dict]:
        stream = make_train_augmenter(fold, 2, 5, True, 0, 0, s)
        return [next(stream) for _ in range(n)]

    cpu = take(settings)
    reads = take(AugmentationSettings(on_device=True))
    aug = device_augmentation(fold, AugmentationSettings(on_device=True), seed=5)
    assert aug is not None and reads[0]["source"].shape[2:] != cpu[0]["source"].shape[2:]  # workers only read
    dev = [{k: v.numpy() for k, v in aug({k: torch.from_numpy(np.asarray(b[k])) for k in
                                          ("source", "target", "mask", "lesions")}, b["batch_index"]).items()}
           for b in reads]
    bg1 = take(AugmentationSettings(pipeline="batchgenerators"))
    for key in ("source", "target", "mask"):
        assert dev[0][key].shape == cpu[0][key].shape == bg1[0][key].shape and dev[0][key].dtype == np.float32
    a, b, c = _stats(cpu), _stats(dev), _stats(bg1)
    lo = min(float(np.min(r["target"])) for r in reads)  # air padding and the stored values
    hi = max(float(np.max(r["target"])) for r in reads)
    for s in (a, b):  # the clean target stays within what was read (linear interpolation, air padding)
        assert lo - 1e-5 <= s["target_min"] and s["target_max"] <= hi + 1e-5, (s, lo, hi)
    for other, tol in ((b, 1.0), (c, 1.5)):
        for key in ("source_mean", "target_mean", "source_std", "target_std", "mask", "air"):
            assert abs(a[key] - other[key]) <= tol * 0.15 * max(abs(a[key]), 0.2), (key, a[key], other[key])
    # deterministic: the device path's batch depends on its index only
    again = aug({k: torch.from_numpy(np.asarray(reads[3][k])) for k in ("source", "target", "mask", "lesions")},
                reads[3]["batch_index"])
    assert np.array_equal(again["source"].numpy(), dev[3]["source"])


def test_bg1_pipeline_still_selectable(tiny_brain: Path) -> None:
    fold = locate_fold_data("11", "3d_fullres", "all")
    stream = make_train_augmenter(fold, 2, 0, True, 0, 0, AugmentationSettings(pipeline="batchgenerators"))
    assert isinstance(stream.transform, TranslationAugmentation)
    assert next(stream)["source"].shape[2:] == tuple(fold.configuration.patch_size)


def test_training_with_device_augmentation_on_cpu(tiny_brain: Path, roots: dict[str, Path]) -> None:
    """--gpu_augmentation end to end on CPU tensors: the family sees patches of the planned size."""
    from autotrans.cli.train import main
    from tests.training.families import ResidualFamily

    ResidualFamily.seen.clear()
    assert main(["11", "3d_fullres", "test_residual", "0", "--epochs", "1", "--iterations", "2", "--val_iterations",
                 "1", "-device", "cpu", "-num_workers", "0", "--gpu_augmentation", "--skip_final_validation"]) == 0
    patch = tuple(locate_fold_data("11", "3d_fullres", "0").configuration.patch_size)
    assert ResidualFamily.seen and ResidualFamily.seen[0]["source"][2:] == patch
