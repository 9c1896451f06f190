"""Training data: where a run's preprocessed cases live, which belong to the fold, and how patches are drawn.

Determinism is the design constraint here: a resumed run must see exactly the batches an uninterrupted run
would have seen. Every batch therefore has a global index (``epoch * iterations + iteration``, interleaved
over DDP ranks) and is drawn from random generators seeded by ``(seed, index)`` alone, whichever worker
process makes it. The loader's whole "state" is then the seed and the next index, and resuming restarts
the stream at ``start_epoch * iterations`` instead of replaying it.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from autotrans.errors import ConfigurationError
from autotrans.planning.api import DatasetFolders
from autotrans.planning.plans import Configuration, Plans
from autotrans.preprocessing.preprocessor import config_hash
from autotrans.preprocessing.store import PreprocessedCase, case_ids
from autotrans.training.augment import AugmentationSettings, TranslationAugmentation, load_size
from autotrans.training.augment_torch import TorchAugmentation
from autotrans.utils.files import load_json

logger = logging.getLogger(__name__)

FOREGROUND_SHARE = 1.0 / 3.0  # nnU-Net's oversample_foreground_percent
LESION_SHARE = 1.0 / 6.0  # of all patches, centred on a lesion (part of the foreground share) when lesions exist
TRAIN_STREAM, VAL_STREAM = 0, 1


@dataclass
class FoldData:
    """The preprocessed folder, plans and the fold's case lists of one training run."""

    folders: DatasetFolders
    plans: Plans
    plans_file: Path
    configuration: Configuration
    data_dir: Path
    fold: str
    train_cases: list[str]
    val_cases: list[str]


def locate_fold_data(dataset: str | int, configuration: str, fold: str, plans_name: str = "autotransPlans") -> FoldData:
    """Resolve everything a run reads, failing with one clear line before anything is written.

    The data folder comes from the configuration's ``data_identifier``, which an inheriting user
    configuration (e.g. a smaller patch) inherits, so it trains on its parent's preprocessed arrays.
    """
    folders = DatasetFolders(dataset)
    plans_file = folders.plans_file(plans_name)
    if not plans_file.is_file():
        raise ConfigurationError(f"{folders.name} is not preprocessed ({plans_file} missing): "
                                 f"run autotrans_plan_and_preprocess -d {dataset} first")
    plans = Plans.load(plans_file)
    cfg = plans.configuration(configuration)
    data_dir = folders.preprocessed / cfg.data_identifier
    cases = case_ids(data_dir) if data_dir.is_dir() else []
    if not cases:
        raise ConfigurationError(f"{folders.name}: configuration {configuration!r} is not preprocessed ({data_dir} "
                                 f"holds no cases): run autotrans_preprocess -d {dataset} -c {configuration}")
    expected = config_hash(plans, cfg)
    stale = [c for c in cases if load_json(data_dir / f"{c}.json").get("config_hash") != expected]
    if stale:
        raise ConfigurationError(f"{folders.name}: {len(stale)} case(s) in {data_dir} were preprocessed with other "
                                 f"plans (e.g. {stale[0]}): rerun autotrans_preprocess -d {dataset} -c {configuration}")
    splits_file = folders.preprocessed / "splits_final.json"
    if fold == "all":
        train, val = list(cases), list(cases)
    else:
        if not splits_file.is_file():
            raise ConfigurationError(f"{splits_file} missing: rerun autotrans_preprocess -d {dataset}")
        splits = load_json(splits_file)
        if not fold.isdigit() or not 0 <= int(fold) < len(splits):
            raise ConfigurationError(f"fold {fold!r} outside the split file ({len(splits)} folds: 0..{len(splits) - 1} or 'all')")
        train, val = list(splits[int(fold)]["train"]), list(splits[int(fold)]["val"])
        missing = sorted(set(train + val) - set(cases))
        if missing:
            raise ConfigurationError(f"{splits_file} names case(s) not in {data_dir}: {', '.join(missing[:5])}")
    return FoldData(folders, plans, plans_file, cfg, data_dir, fold, train, val)


def _read_region(arr: Any, start: np.ndarray, size: list[int], pad: np.ndarray | float, dtype: Any) -> np.ndarray:
    """Read ``arr[..., start:start+size]`` lazily from blosc2 as ``(C, *size)``; outside the volume is ``pad``."""
    channels = len(arr.shape) == 4  # images are (C, z, y, x); mask and lesion map are stored (z, y, x)
    shape = arr.shape[-3:]
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), shape)
    out = np.empty((arr.shape[0] if channels else 1, *size), dtype=dtype)
    out[...] = np.asarray(pad, dtype=dtype).reshape(-1, 1, 1, 1)
    if np.all(hi > lo):
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        src = arr[(slice(None), *region)] if channels else arr[region][None]
        dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
        out[(slice(None), *dst)] = src
    return out


class PatchSampler:
    """Chooses patch centres (random, foreground, lesion) and reads regions of the store around them."""

    def __init__(self, data_dir: Path, cases: list[str], read_size: list[int], source_air: list[float],
                 target_air: float) -> None:
        self.cases = [PreprocessedCase(data_dir, c) for c in cases]
        self.read_size = list(read_size)
        self.source_air = np.asarray(source_air, dtype=np.float32)
        self.target_air = float(target_air)
        self._locations: dict[int, dict[str, np.ndarray]] = {}
        self.with_source = [i for i, c in enumerate(self.cases) if c.properties.get("has_source", True)]
        self.with_target = [i for i, c in enumerate(self.cases) if c.properties.get("has_target", True)]
        self.paired_cases = sorted(set(self.with_source) & set(self.with_target))

    def locations(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._locations:
            self._locations[i] = self.cases[i].locations()
        return self._locations[i]

    def centre(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """nnU-Net-like: a third of patches centred inside the mask, half of those on lesions where present."""
        shape = np.asarray(self.cases[i].properties["shape_after_resampling"])
        r = rng.random()
        locs = self.locations(i) if r < FOREGROUND_SHARE else {}
        lesions = locs.get("lesions")
        if r < LESION_SHARE and lesions is not None and len(lesions):
            ids = np.unique(lesions[:, 3])
            chosen = lesions[lesions[:, 3] == rng.choice(ids)]  # each lesion equally likely, small ones too
            return chosen[rng.integers(len(chosen)), :3]
        fg = locs.get("foreground")
        if fg is not None and len(fg):
            return fg[rng.integers(len(fg))]
        return np.array([rng.integers(0, max(int(s), 1)) for s in shape])

    def read(self, i: int, centre: np.ndarray, parts: tuple[str, ...]) -> dict[str, np.ndarray]:
        case = self.cases[i]
        start = np.asarray(centre) - np.asarray(self.read_size) // 2
        out = {}
        pads = {"source": self.source_air, "target": self.target_air, "mask": 0, "lesions": 0}
        for key in parts:
            arr = case.array(key)
            if arr is None:
                if key == "mask":  # no mask: every voxel counts (the batch contract)
                    out[key] = np.ones((1, *self.read_size), dtype=np.float32)
                    continue
                if key == "lesions":
                    out[key] = np.zeros((1, *self.read_size), dtype=np.float32)
                    continue
                raise ConfigurationError(f"{case.case}: preprocessed case has no {key}")
            out[key] = _read_region(arr, start, self.read_size, pads[key], np.float32)
        return out


def batch_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one batch; also reseeds numpy's and python's global state for the transforms."""
    ss = np.random.SeedSequence([int(seed), stream, int(index)])
    np.random.seed(ss.generate_state(1)[0])
    random.seed(int(ss.generate_state(1, dtype=np.uint64)[0]))
    return np.random.default_rng(ss)


class PatchLoader(SlimDataLoaderBase):
    """Batches of read regions; the augmenter's transform turns them into patches.

    Paired families get source, target and masks of the same region; unpaired ones (CycleGAN) a source
    region of one case and a target region of another (``target_mask`` is the latter's mask).
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int, paired: bool, start: int = 0,
                 num_workers: int = 0, rank: int = 0, world: int = 1, stream: int = TRAIN_STREAM,
                 stack: bool = True) -> None:
        super().__init__(None, batch_size, max(num_workers, 1))
        self.sampler, self.seed, self.paired = sampler, int(seed), paired
        #: False: image entries stay lists of per-sample regions (the torch CPU transform slices each sample's
        #: region to what its patch needs; stacking the full read regions was its largest cost)
        self.stack = stack
        self.start, self.rank, self.world, self.stream = int(start), rank, world, stream
        self.count = 0
        if paired and not sampler.paired_cases:
            raise ConfigurationError("this model trains on paired cases, but no training case has both source and target")
        if not paired and (not sampler.with_source or not sampler.with_target):
            raise ConfigurationError("training needs cases with a source and cases with a target")

    def batch_index(self, k: int) -> int:
        """Global index of this worker's k-th batch: worker streams interleave, DDP ranks interleave."""
        local = self.thread_id + self.number_of_threads_in_multithreaded * k
        return (self.start + local) * self.world + self.rank

    def generate_train_batch(self) -> dict[str, Any]:
        index = self.batch_index(self.count)
        self.count += 1
        rng = batch_rng(self.seed, self.stream, index)
        items = [self._paired(rng) if self.paired else self._unpaired(rng) for _ in range(self.batch_size)]
        batch = {k: np.stack([it[k] for it in items]) if self.stack or np.ndim(items[0][k]) == 0
                 else [it[k] for it in items] for k in items[0]}
        batch["batch_index"] = index
        return batch

    def _paired(self, rng: np.random.Generator) -> dict[str, Any]:
        i = int(rng.choice(self.sampler.paired_cases))
        out = self.sampler.read(i, self.sampler.centre(i, rng), ("source", "target", "mask", "lesions"))
        out["case_index"] = i
        return out

    def _unpaired(self, rng: np.random.Generator) -> dict[str, Any]:
        s = self.sampler
        i = int(rng.choice(s.with_source))
        others = [j for j in s.with_target if j != i] or s.with_target
        j = int(rng.choice(others))
        out = s.read(i, s.centre(i, rng), ("source", "mask"))
        tgt = s.read(j, s.centre(j, rng), ("target", "mask"))
        out["target"], out["target_mask"] = tgt["target"], tgt["mask"]
        out["case_index"], out["target_case_index"] = i, j
        return out


def _air_values(plans: Plans) -> tuple[list[float], float]:
    return [float(n.air) for n in plans.source_normalization], float(plans.target_normalization.air)


def make_train_augmenter(fold: FoldData, batch_size: int, seed: int, paired: bool, start: int, num_workers: int,
                         settings: AugmentationSettings, rank: int = 0, world: int = 1,
                         patch_size: list[int] | None = None) -> SingleThreadedAugmenter | MultiThreadedAugmenter:
    """The training batch stream; multi-process (deterministic order) when ``num_workers > 0``.

    ``patch_size`` replaces the plan's patch (benchmarks measure the loader at other sizes on the same data)."""
    patch = list(patch_size) if patch_size is not None else fold.configuration.patch_size
    source_air, target_air = _air_values(fold.plans)
    sampler = PatchSampler(fold.data_dir, fold.train_cases, load_size(patch, settings), source_air, target_air)
    per_sample = settings.pipeline == "torch" and not settings.on_device
    loader = PatchLoader(sampler, batch_size, seed, paired, start, num_workers, rank, world, stack=not per_sample)
    transform = train_transform(patch, source_air, target_air, settings, worker=num_workers > 0)
    if num_workers <= 0:
        return SingleThreadedAugmenter(loader, transform)
    # MultiThreadedAugmenter returns batches in worker round-robin order, so the stream stays deterministic
    return MultiThreadedAugmenter(loader, transform, num_workers, num_cached_per_queue=2,
                                  seeds=[int(seed) + w for w in range(num_workers)], pin_memory=False)


def train_transform(patch: list[int], source_air: list[float], target_air: float, settings: AugmentationSettings,
                    worker: bool) -> Any:
    """The workers' transform: nothing when the device augments (regions travel as read), else the pipeline's."""
    if settings.on_device:
        return None
    if settings.pipeline == "batchgenerators":
        return TranslationAugmentation(patch, source_air, target_air, settings, augment=True)
    if settings.pipeline != "torch":
        raise ConfigurationError(f"augmentation pipeline {settings.pipeline!r}: expected 'torch' or 'batchgenerators'")
    return TorchAugmentation(patch, source_air, target_air, settings, threads=1 if worker else None).numpy_transform


def device_augmentation(fold: FoldData, settings: AugmentationSettings, seed: int) -> "DeviceAugmentation | None":
    """The device half of ``--gpu_augmentation`` (None when the workers augment)."""
    if not settings.on_device:
        return None
    source_air, target_air = _air_values(fold.plans)
    return DeviceAugmentation(TorchAugmentation(fold.configuration.patch_size, source_air, target_air, settings), seed)


class DeviceAugmentation:
    """Augments read regions on the training device (``--gpu_augmentation``): one ``grid_sample`` per batch.

    Parameters are drawn on the host from a generator seeded by ``(seed, batch index)``, as the workers'
    transforms are, so a batch stays a function of its index (resume-exact); numpy's global state is restored
    afterwards so the training RNG stream does not shift."""

    def __init__(self, transform: TorchAugmentation, seed: int) -> None:
        self.transform, self.seed = transform, int(seed)

    def __call__(self, batch: dict[str, Any], index: int) -> dict[str, Any]:
        state = np.random.get_state()
        try:
            np.random.seed(np.random.SeedSequence([self.seed, TRAIN_STREAM, int(index), 1]).generate_state(1)[0])
            with torch.no_grad():
                return self.transform(batch)
        finally:
            np.random.set_state(state)


class ValidationBatches:
    """A fixed set of un-augmented validation patches (same every epoch, so the EMA compares like with like)."""

    def __init__(self, fold: FoldData, batch_size: int, seed: int, iterations: int) -> None:
        patch = fold.configuration.patch_size
        source_air, target_air = _air_values(fold.plans)
        self.sampler = PatchSampler(fold.data_dir, fold.val_cases, patch, source_air, target_air)
        self.cases = self.sampler.cases
        self.enabled = bool(self.sampler.paired_cases) and iterations > 0
        self.loader = PatchLoader(self.sampler, batch_size, seed, True, stream=VAL_STREAM) if self.enabled else None
        self.transform = TranslationAugmentation(patch, source_air, target_air, AugmentationSettings(), augment=False)
        self.iterations = iterations

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.loader is None:
            return
        state = np.random.get_state(), random.getstate()  # validation must not shift the training RNG stream
        try:
            for k in range(self.iterations):
                self.loader.count = k
                yield self.transform(**self.loader.generate_train_batch())
        finally:
            np.random.set_state(state[0])
            random.setstate(state[1])
