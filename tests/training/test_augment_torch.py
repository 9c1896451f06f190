"""The torch augmentation (issue 17.1/17.2): joint alignment under every transform on both paths (CPU workers
and device), air padding, source-only intensity, planned batches (parameters drawn in the loader, only each
sample's needed box read) giving the same patches as whole regions, and the device path reproducing the CPU
path batch for batch."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from autotrans.training.augment import AugmentationSettings, TranslationAugmentation
from autotrans.training.augment_torch import SampleParams, TorchAugmentation, _rot, _separable, _theta, draw, spatial
from autotrans.training.data import (DeviceAugmentation, PatchLoader, device_augmentation, locate_fold_data,
                                     make_train_augmenter)

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
    for out in [*_both_paths(t, batch, 3), t.numpy_transform(**_planned(t, batch, 3))]:  # whole regions, boxes
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


def _planned(t: TorchAugmentation, batch: dict[str, np.ndarray], seed: int) -> dict:
    """What the loader hands over for ``batch``'s whole regions: the same draws as an unplanned transform, each
    sample cut to its needed box, masks as uint8."""
    np.random.seed(seed)
    n, load = len(batch["source"]), list(batch["source"].shape[2:])
    plan = t.plan(n, batch["source"].shape[1], False, load)
    out: dict = {"params": plan["params"]}
    for k in ("source", "target", "mask"):
        dtype = np.uint8 if k == "mask" else np.float32
        out[k] = [np.ascontiguousarray(batch[k][i][(slice(None), *plan["boxes"][i])], dtype=dtype) for i in range(n)]
    return out


@pytest.mark.parametrize("name", list(ONLY))
def test_planned_boxes_give_the_same_patches_as_whole_regions(name: str) -> None:
    """Drawing in the loader and reading only the needed box changes nothing: the CPU transform and the device
    transform of the boxes equal the whole-region transform (same seed), source/target/mask still aligned."""
    t = TorchAugmentation(PATCH, [-1.0], -1.0, ONLY[name])
    batch = _blob_batch(n=3)
    smaller = 0
    for seed in range(4):
        np.random.seed(seed)
        whole = t.numpy_transform(**batch)
        planned = _planned(t, batch, seed)
        cpu = t.numpy_transform(**planned)
        dev = {k: v.numpy() for k, v in t(DeviceAugmentation.to_device(planned, torch.device("cpu"))).items()}
        for out in (cpu, dev):
            for k in ("source", "target"):
                np.testing.assert_allclose(out[k], whole[k], atol=1e-4)
                assert out[k].dtype == np.float32 and out[k].shape == whole[k].shape
            assert np.mean(out["mask"] != whole["mask"]) < 1e-3 and out["mask"].dtype == np.float32
            np.testing.assert_allclose(out["source"], out["target"], atol=1e-5)
        smaller += sum(np.prod(a.shape) < np.prod(batch["source"].shape[1:]) for a in planned["source"])
        for p, a in zip(planned["params"], planned["source"]):
            if not p.resample:
                assert a.shape[1:] == tuple(PATCH)  # a cropped sample reads exactly its patch
    assert smaller >= 4


def test_scaled_samples_skip_the_3d_grid() -> None:
    """Scaling (+ mirroring) without rotation: the separable passes give grid_sample's values."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 31, 35, 29)).astype(np.float32))
    for s, flips in ((1.3, (True, False, True)), (0.75, (False, True, False))):
        p = SampleParams(np.eye(3) * s, True, flips)
        centre = np.array([15.2, 17.0, 13.5])
        ref = torch.nn.functional.grid_sample(
            x[None], torch.nn.functional.affine_grid(_theta(p, [31, 35, 29], PATCH, centre).float()[None],
                                                     [1, 2, *PATCH], align_corners=True),
            mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        assert torch.allclose(_separable(x.clone(), p, PATCH, centre), ref, atol=1e-4)


def _stats(batches: list[dict]) -> dict[str, float]:
    src = np.concatenate([np.asarray(b["source"]) for b in batches])
    tgt = np.concatenate([np.asarray(b["target"]) for b in batches])
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
    return {"source_mean": float(src.mean()), "source_std": float(src.std()), "target_mean": float(tgt.mean()),
            "target_std": float(tgt.std()), "mask": float(mask.mean()), "air": float(np.mean(tgt == tgt.min())),
            "target_min": float(tgt.min()), "target_max": float(tgt.max())}


@pytest.mark.parametrize("paired", [True, False])
def test_device_path_reproduces_the_cpu_path(paired: bool, request: pytest.FixtureRequest) -> None:
    """The same stream augmented by the workers (CPU path) and on the device (--gpu_augmentation, CPU tensors here).

    The workers of the device path only read: each sample's needed box (the patch itself when not resampled),
    images as stored, masks as uint8, plus the parameters the loader drew. The device applies exactly those,
    so its batches equal the CPU path's; the batchgenerators v1 pipeline gives a third opinion on the
    statistics."""
    request.getfixturevalue("tiny_brain" if paired else "tiny_unpaired")
    fold = locate_fold_data("11", "3d_fullres", "all")
    patch = tuple(fold.configuration.patch_size)
    n = 30 if paired else 8

    def take(s: AugmentationSettings) -> list[dict]:
        stream = make_train_augmenter(fold, 2, 5, paired, 0, 0, s)
        return [next(stream) for _ in range(n)]

    cpu = take(AugmentationSettings())
    reads = take(AugmentationSettings(on_device=True))
    aug = device_augmentation(fold, AugmentationSettings(on_device=True), seed=5)
    assert aug is not None
    load = TorchAugmentation(list(patch), [0.0], 0.0, AugmentationSettings()).load
    cut = 0
    for r in reads:  # workers only read what each sample needs, in compact dtypes, without the air around it
        assert r["mask"][0].dtype == np.uint8 and r["source"][0].dtype == np.float32 and "lesions" not in r
        for p, a, (offset, size, fill) in zip(r["params"], r["source"], r["padding"]["source"]):
            assert size == patch if not p.resample else all(s <= l for s, l in zip(size, load))
            assert all(o >= 0 and o + c <= s for o, c, s in zip(offset, a.shape[1:], size))
            assert fill.dtype == a.dtype and fill.shape == (a.shape[0],)
            cut += a.shape[1:] != size
    assert cut > 0  # some boxes leave the volume: only their inside travels, the device pads
    dev = [{k: v.numpy() for k, v in aug(aug.to_device(b, torch.device("cpu")), b["batch_index"]).items()}
           for b in reads]
    for a, b in zip(cpu, dev):
        assert set(a) - {"case_index", "target_case_index", "batch_index"} == set(b)
        for key in b:
            assert a[key].shape == b[key].shape and b[key].dtype == np.float32
        for key in ("source", "target"):
            np.testing.assert_allclose(a[key], b[key], atol=1e-4)
        assert np.mean(a["mask"] != b["mask"]) < 1e-3
    if not paired:
        return
    bg1 = take(AugmentationSettings(pipeline="batchgenerators"))
    assert bg1[0]["source"].shape[2:] == patch
    s_cpu, s_bg1 = _stats(cpu), _stats(bg1)
    for key in ("source_mean", "target_mean", "source_std", "target_std", "mask", "air"):
        assert abs(s_cpu[key] - s_bg1[key]) <= 1.5 * 0.15 * max(abs(s_cpu[key]), 0.2), (key, s_cpu[key], s_bg1[key])
    lo = min(float(np.min(a)) for r in reads for a in r["target"])  # air padding and the stored values
    hi = max(float(np.max(a)) for r in reads for a in r["target"])
    assert lo - 1e-5 <= s_cpu["target_min"] and s_cpu["target_max"] <= hi + 1e-5  # linear: no overshoot
    again = aug(aug.to_device(reads[3], torch.device("cpu")))  # deterministic: a function of the batch alone
    assert np.array_equal(again["source"].numpy(), dev[3]["source"])


def test_device_path_workers_read_into_shared_memory(tiny_brain: Path) -> None:
    """A worker process reads the crops straight into shared memory (one buffer per batch): the batches equal the
    in-process reads, and the device pads them to exactly the air-padded boxes the CPU path reads."""
    fold = locate_fold_data("11", "3d_fullres", "all")
    settings = AugmentationSettings(on_device=True)
    local = make_train_augmenter(fold, 2, 3, True, 0, 0, settings)
    expected = [next(local) for _ in range(4)]
    stream = make_train_augmenter(fold, 2, 3, True, 0, 1, settings)
    try:
        got = [next(stream) for _ in range(4)]
    finally:
        stream._finish()
    boxed = PatchLoader(local.data_loader.sampler, 2, 3, True, planner=local.data_loader.planner)  # air-padded boxes
    cut = 0
    for k, (a, b) in enumerate(zip(expected, got)):
        assert a["batch_index"] == b["batch_index"]
        boxed.count = k
        ref = boxed.generate_train_batch()
        for key in ("source", "target", "mask"):
            for x, y in zip(a[key], b[key]):
                assert isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)
            for (o1, s1, f1), (o2, s2, f2) in zip(a["padding"][key], b["padding"][key]):
                assert o1 == o2 and s1 == s2 and np.array_equal(f1, f2)
        cpu = torch.device("cpu")
        da, db = DeviceAugmentation.to_device(a, cpu), DeviceAugmentation.to_device(b, cpu)
        for key in ("source", "target", "mask"):
            for x, y, r, c in zip(da[key], db[key], ref[key], a[key]):  # padded on the device = read padded
                assert torch.equal(x, y) and torch.equal(x, torch.from_numpy(r))
                cut += c.shape != r.shape
    assert cut > 0  # some crops were padded


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
