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
    fill = np.asarray(pad, dtype=dtype).reshape(-1, 1, 1, 1)
    zero = not np.any(fill)  # masks: calloc'd pages are zero already, no padding pass at all
    out = (np.zeros if zero else np.empty)((arr.shape[0] if channels else 1, *size), dtype=dtype)
    if not np.all(hi > lo):
        if not zero:
            out[...] = fill
        return out
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out[(slice(None), *dst)] = arr[(slice(None), *region)] if channels else arr[region][None]
    for axis, d in enumerate(dst if not zero else ()):  # pad only around the data (one write per voxel, not two)
        head = (slice(None),) * (axis + 1)
        if d.start > 0:
            out[(*head, slice(0, d.start))] = fill
        if d.stop < size[axis]:
            out[(*head, slice(d.stop, None))] = fill
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

    def read(self, i: int, centre: np.ndarray, parts: tuple[str, ...], box: tuple[slice, ...] | None = None,
             compact: bool = False) -> dict[str, np.ndarray]:
        """The read region around ``centre`` (or only its ``box``, in region voxels) of each part, as float32;
        ``compact``: images in their stored dtype and masks as uint8 (lossless; a quarter of float32's bytes)."""
        case = self.cases[i]
        start = np.asarray(centre) - np.asarray(self.read_size) // 2
        size = list(self.read_size)
        if box is not None:
            start = start + np.array([s.start for s in box])
            size = [s.stop - s.start for s in box]
        out = {}
        pads = {"source": self.source_air, "target": self.target_air, "mask": 0, "lesions": 0}
        for key in parts:
            arr = case.array(key)
            dtype: Any = np.float32
            if compact and key == "mask":
                dtype = np.uint8
            elif compact and key in ("source", "target") and arr is not None and arr.dtype.kind == "f":
                dtype = arr.dtype  # float16 or float32 as stored: the air padding stays exact
            if arr is None:
                if key == "mask":  # no mask: every voxel counts (the batch contract)
                    out[key] = np.ones((1, *size), dtype=dtype)
                    continue
                if key == "lesions":
                    out[key] = np.zeros((1, *size), dtype=dtype)
                    continue
                raise ConfigurationError(f"{case.case}: preprocessed case has no {key}")
            out[key] = _read_region(arr, start, size, pads[key], dtype)
        return out

    def crop(self, i: int, centre: np.ndarray, key: str, box: tuple[slice, ...]) -> "Crop":
        """Where ``key``'s ``box`` (in read-region voxels around ``centre``) meets case ``i``'s volume: what the
        device path's workers read (``Crop.read_into``) instead of an air-padded box, and how the device pads
        it back (the same values ``read(..., compact=True)`` gives)."""
        case = self.cases[i]
        start = np.asarray(centre) - np.asarray(self.read_size) // 2 + np.array([s.start for s in box])
        size = tuple(int(s.stop - s.start) for s in box)
        arr = case.array(key)
        fill: Any = {"source": self.source_air, "target": self.target_air, "mask": 0}[key]
        if arr is None:
            if key != "mask":
                raise ConfigurationError(f"{case.case}: preprocessed case has no {key}")
            # no mask: every voxel counts (the batch contract); nothing to read, the device fills the box with 1
            return Crop(None, (), (0, 0, 0), size, (1, 0, 0, 0), np.ones(1, np.uint8))
        dtype: Any = np.float32
        if key == "mask":
            dtype = np.uint8
        elif arr.dtype.kind == "f":
            dtype = arr.dtype  # float16 or float32 as stored: the air padding stays exact
        shape = arr.shape[-3:]
        lo = np.maximum(start, 0)
        hi = np.maximum(np.minimum(start + np.asarray(size), shape), lo)
        channels = int(arr.shape[0]) if len(arr.shape) == 4 else 1
        return Crop(arr, tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), tuple(int(v) for v in lo - start),
                    size, (channels, *(int(v) for v in hi - lo)), np.asarray(fill, dtype=dtype).reshape(-1),
                    np.dtype(dtype))


@dataclass
class Crop:
    """The part of one sample's box of one array that lies inside the stored volume (``--gpu_augmentation``).

    ``region``: its slices of the stored volume; ``offset``: where it starts in the box (of ``size``);
    ``shape``: ``(C, *crop)``; ``fill``: the air value per channel (in ``dtype``) the device pads the rest with."""

    array: Any
    region: tuple[slice, ...]
    offset: tuple[int, int, int]
    size: tuple[int, ...]
    shape: tuple[int, ...]
    fill: np.ndarray
    dtype: np.dtype = np.dtype(np.uint8)

    def read_into(self, out: np.ndarray) -> None:
        """Decompress the crop straight into ``out`` (e.g. a view of a shared-memory buffer): no temporary."""
        if self.array is None or out.size == 0:
            return
        dst = out if len(self.array.shape) == 4 else out[0]
        key = (slice(None), *self.region) if len(self.array.shape) == 4 else self.region
        reader = getattr(self.array, "read_into", None)  # blosc2 >= 4.15
        if reader is not None:
            reader(dst, key, casting="unsafe")
        else:
            dst[...] = self.array[key]


def _view(flat: Any, start: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """``shape`` elements of ``dtype`` at byte ``start`` of a byte buffer (numpy array or torch tensor)."""
    part = flat[start:start + nbytes]
    if isinstance(part, np.ndarray):
        return part.view(dtype).reshape(shape)
    return part.view(torch.from_numpy(np.empty(0, dtype)).dtype).reshape(shape)


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
                 stack: bool = True, planner: TorchAugmentation | None = None, crops: bool = False,
                 shared: bool = False) -> None:
        super().__init__(None, batch_size, max(num_workers, 1))
        self.sampler, self.seed, self.paired = sampler, int(seed), paired
        #: False: image entries stay lists of per-sample regions (a planned batch's boxes differ in size)
        self.stack = stack and planner is None
        #: the torch pipeline: draws each batch's augmentation parameters before reading, so only each sample's
        #: needed box is read (most samples: exactly the patch) and the parameters travel with the batch
        self.planner = planner
        #: the device pads (``--gpu_augmentation``): send only the part of each box inside the volume
        #: (``PatchSampler.crop``) plus where it sits in the box and the air around it (``padding``)
        self.crops = crops and planner is not None
        #: read the crops straight into shared memory (worker processes; ``SharedMemoryTransfer`` passes them on)
        self.shared = shared
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
        n = self.batch_size
        # drawn from numpy's global state, which batch_rng just seeded and the reads below do not touch: the same
        # parameters an unplanned numpy_transform would draw after the reads
        plan = self.planner.plan(n, len(self.sampler.source_air), not self.paired, self.sampler.read_size) \
            if self.planner is not None else {}
        boxes, target_boxes = plan.pop("boxes", [None] * n), plan.pop("target_boxes", [None] * n)
        if self.crops:
            batch = self._crops(rng, boxes, target_boxes)
        else:
            items = [self._paired(rng, boxes[k]) if self.paired else self._unpaired(rng, boxes[k], target_boxes[k])
                     for k in range(n)]
            batch = {k: np.stack([it[k] for it in items]) if self.stack or np.ndim(items[0][k]) == 0
                     else [it[k] for it in items] for k in items[0]}
        batch.update(plan)
        batch["batch_index"] = index
        return batch

    def _crops(self, rng: np.random.Generator, boxes: list, target_boxes: list) -> dict[str, Any]:
        """A planned batch for the device: per array, each sample's crop (``PatchSampler.crop``) decompressed
        into ONE buffer (shared memory in a worker), and ``padding[key][sample] = (offset, box size, air)``.

        Cases and centres are drawn first, in ``_paired``/``_unpaired``'s order (the reads draw nothing), so the
        batch holds the same samples as the CPU path's."""
        s, n = self.sampler, self.batch_size
        want: dict[str, list[Crop]] = {}
        cases, target_cases = [], []
        for k in range(n):
            if self.paired:
                i = int(rng.choice(s.paired_cases))
                c = s.centre(i, rng)
                parts = [("source", i, c, "source", boxes[k]), ("target", i, c, "target", boxes[k]),
                         ("mask", i, c, "mask", boxes[k])]
            else:
                i = int(rng.choice(s.with_source))
                others = [j for j in s.with_target if j != i] or s.with_target
                j = int(rng.choice(others))
                c = s.centre(i, rng)
                tc = s.centre(j, rng)
                parts = [("source", i, c, "source", boxes[k]), ("mask", i, c, "mask", boxes[k]),
                         ("target", j, tc, "target", target_boxes[k]),
                         ("target_mask", j, tc, "mask", target_boxes[k])]
                target_cases.append(j)
            cases.append(i)
            for out_key, case, centre, key, box in parts:
                want.setdefault(out_key, []).append(s.crop(case, centre, key, box))
        # one buffer for the whole batch (one shared-memory file to create, send and open), each array's crops
        # at 64-byte aligned offsets; every crop is decompressed straight into its view (no temporary, no copy)
        dtypes = {key: np.result_type(*[c.dtype for c in crops]) for key, crops in want.items()}
        at, spans = 0, {}
        for key, crops in want.items():
            spans[key] = []
            for c in crops:
                nbytes = int(np.prod(c.shape)) * dtypes[key].itemsize
                spans[key].append((at, nbytes))
                at += -(-nbytes // 64) * 64
        flat = self._empty(at)
        batch: dict[str, Any] = {"padding": {}}
        for key, crops in want.items():
            views = [_view(flat, a, m, dtypes[key], c.shape) for c, (a, m) in zip(crops, spans[key])]
            for c, v in zip(crops, views):
                c.read_into(v if isinstance(v, np.ndarray) else v.numpy())
            batch[key] = views
            batch["padding"][key] = [(c.offset, c.size, c.fill.astype(dtypes[key])) for c in crops]
        batch["case_index"] = np.asarray(cases)
        if target_cases:
            batch["target_case_index"] = np.asarray(target_cases)
        return batch

    def _empty(self, nbytes: int) -> Any:
        """A byte buffer: numpy in this process, a shared-memory tensor (allocated there, never copied) in a worker."""
        if not self.shared:
            return np.empty(nbytes, np.uint8)
        _file_system_sharing()
        return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(nbytes, 1)))

    def _paired(self, rng: np.random.Generator, box: tuple[slice, ...] | None = None) -> dict[str, Any]:
        i = int(rng.choice(self.sampler.paired_cases))
        planned = self.planner is not None  # the lesion map only steers patch centres: a planned batch skips it
        parts = ("source", "target", "mask") if planned else ("source", "target", "mask", "lesions")
        out = self.sampler.read(i, self.sampler.centre(i, rng), parts, box, compact=planned)
        out["case_index"] = i
        return out

    def _unpaired(self, rng: np.random.Generator, box: tuple[slice, ...] | None = None,
                  target_box: tuple[slice, ...] | None = None) -> dict[str, Any]:
        s = self.sampler
        i = int(rng.choice(s.with_source))
        others = [j for j in s.with_target if j != i] or s.with_target
        j = int(rng.choice(others))
        planned = self.planner is not None
        out = s.read(i, s.centre(i, rng), ("source", "mask"), box, compact=planned)
        tgt = s.read(j, s.centre(j, rng), ("target", "mask"), target_box, compact=planned)
        out["target"], out["target_mask"] = tgt["target"], tgt["mask"]
        out["case_index"], out["target_case_index"] = i, j
        return out


def _file_system_sharing() -> None:
    """Share tensors by file name, in this worker process only (called where a worker makes shared memory): the
    main process opens a batch by name, so a batch still in flight when the worker exits (shutdown) stays
    readable (the default passes file descriptors through a server in the worker, gone with it)."""
    if torch.multiprocessing.get_sharing_strategy() != "file_system":
        torch.multiprocessing.set_sharing_strategy("file_system")


def _share(value: Any) -> Any:
    """Image-sized arrays (or per-sample lists of them) as shared-memory tensors; anything else as it is."""
    if isinstance(value, np.ndarray) and value.ndim >= 4:
        return torch.from_numpy(np.ascontiguousarray(value)).share_memory_()
    if isinstance(value, list) and value and all(isinstance(a, np.ndarray) and a.ndim >= 4 for a in value):
        return [torch.from_numpy(np.ascontiguousarray(a)).share_memory_() for a in value]
    return value


def _unshare(value: Any) -> Any:
    """Back to numpy views of the shared memory (the batch contract stays numpy)."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, list) and value and all(isinstance(t, torch.Tensor) for t in value):
        return [t.numpy() for t in value]
    return value


class SharedMemoryTransfer:
    """The workers' side of the hand-over: image arrays leave a worker as tensors in shared memory.

    Why: multiprocessing pickles a numpy array through a pipe (a copy into the pickle, the pipe's kernel copies,
    a copy out in the main process); for 128^3 patches (about 20 MB a sample) that cost more than reading them.
    A shared-memory tensor crosses as a file descriptor (torch's reductions for multiprocessing): one copy in
    the worker, none in the main process (``SharedMemoryAugmenter`` turns it back into a numpy view)."""

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def __call__(self, **batch: Any) -> dict[str, Any]:
        _file_system_sharing()
        if self.transform is not None:
            batch = self.transform(**batch)
        return {k: _share(v) for k, v in batch.items()}


class SharedMemoryAugmenter(MultiThreadedAugmenter):
    """``MultiThreadedAugmenter`` whose batches arrived through shared memory (``SharedMemoryTransfer``)."""

    def __next__(self) -> dict[str, Any]:
        return {k: _unshare(v) for k, v in super().__next__().items()}


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
    planner = TorchAugmentation(patch, source_air, target_air, settings) \
        if settings.on_device or settings.pipeline == "torch" else None
    loader = PatchLoader(sampler, batch_size, seed, paired, start, num_workers, rank, world, planner=planner,
                         crops=settings.on_device, shared=settings.on_device and num_workers > 0)
    transform = train_transform(patch, source_air, target_air, settings, worker=num_workers > 0)
    if num_workers <= 0:
        return SingleThreadedAugmenter(loader, transform)
    # MultiThreadedAugmenter returns batches in worker round-robin order, so the stream stays deterministic
    return SharedMemoryAugmenter(loader, SharedMemoryTransfer(transform), num_workers, num_cached_per_queue=2,
                                 seeds=[int(seed) + w for w in range(num_workers)], pin_memory=False)


def train_transform(patch: list[int], source_air: list[float], target_air: float, settings: AugmentationSettings,
                    worker: bool) -> Any:
    """The workers' transform: nothing when the device augments (the planned boxes travel as read, with their
    parameters), else the pipeline's."""
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


def _padded(crop: torch.Tensor, offset: tuple[int, ...], size: tuple[int, ...], fill: np.ndarray) -> torch.Tensor:
    """A sample's box on the device: its ``crop`` (``(C, *crop)``) at ``offset``, air (``fill``, per channel or
    one value, the crop's dtype) around it; the crop itself when it fills the box."""
    if tuple(crop.shape[1:]) == tuple(size):
        return crop
    box = torch.empty((crop.shape[0], *size), dtype=crop.dtype, device=crop.device)
    values = np.broadcast_to(np.asarray(fill).reshape(-1), (crop.shape[0],))
    for c in range(crop.shape[0]):
        box[c].fill_(values[c].item())  # a Python scalar: no host-to-device copy (exact: fill has crop's dtype)
    box[(slice(None), *(slice(o, o + c) for o, c in zip(offset, crop.shape[1:])))] = crop
    return box


class DeviceAugmentation:
    """Augments planned batches on the training device (``--gpu_augmentation``): one ``grid_sample`` per batch.

    The workers drew each batch's parameters (seeded by ``(seed, batch index)``, exactly as for the CPU path) and
    read only each sample's needed box; this applies those parameters, so a batch stays a function of its index
    (resume-exact) and equals the CPU path's. Unplanned batches (whole read regions, stacked) still work: their
    parameters are drawn here from ``(seed, index)``, restoring numpy's global state after."""

    def __init__(self, transform: TorchAugmentation, seed: int) -> None:
        self.transform, self.seed = transform, int(seed)

    @staticmethod
    def to_device(raw: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Host-to-device copy of a worker's batch: per-sample boxes (lists) or stacked arrays, in their
        transport dtypes (uint8 masks are widened on the device); the parameters ride along."""
        pin = device.type == "cuda"

        def move(a: Any) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a))
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        padding = raw.get("padding", {})
        out: dict[str, Any] = {}
        for k in ("source", "target", "mask", "target_mask", "lesions"):
            if k in raw:
                out[k] = [move(a) for a in raw[k]] if isinstance(raw[k], list) else move(raw[k])
                if k in padding:  # crops of the volume (the workers read no air): pad them here, on the device
                    out[k] = [_padded(t, *pad) for t, pad in zip(out[k], padding[k])]
        for k in ("params", "target_params"):
            if k in raw:
                out[k] = raw[k]
        return out

    def __call__(self, batch: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        with torch.no_grad():
            if "params" in batch:
                return self.transform(batch)
            state = np.random.get_state()
            try:
                seeds = np.random.SeedSequence([self.seed, TRAIN_STREAM, int(index or 0), 1])
                np.random.seed(seeds.generate_state(1)[0])
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
