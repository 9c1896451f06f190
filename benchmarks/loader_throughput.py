"""Benchmark: training loader samples/s, ours against nnU-Net v2's own loader on the same preprocessed cases.

Pipelines (all deliver augmented patches of the same size and batch size from the same cases):

- ``bg1``: autotrans' previous pipeline (batchgenerators v1, one ``SpatialTransform`` with cubic
  interpolation of source and target, nearest for the masks, then mirroring and source-only intensity
  transforms), through ``make_train_augmenter`` exactly as training uses it.
- ``torch``: the default pipeline (``augment_torch``: parameters drawn in the loader, only each sample's needed
  box read, batches handed over in shared memory), also through ``make_train_augmenter``.
- ``gpu_cpu_share``: the workers' half of ``--gpu_augmentation`` (the same planned draws; each sample's box read
  only where it lies inside the volume, straight into one shared-memory buffer per batch; no padding, no
  augmentation: the device does both): its samples/s against ``torch``'s is the CPU cost the device path
  leaves on the host. Its batches hold crops (per-sample lists), so the patch-shape check is skipped.
- ``nnunetv2``: nnU-Net v2's ``nnUNetDataLoader`` with ``nnUNetTrainer.get_training_transforms`` (batchgeneratorsv2:
  trilinear ``grid_sample`` rotation/scaling, mirroring, intensity transforms on all channels) and its
  ``NonDetMultiThreadedAugmenter``, on the same cases converted to its blosc2 format with its own chunking
  (``comp_blosc2_params`` for the planned patch, as its preprocessor writes them): source and target are the
  channels of ``data``, the mask is ``seg`` (label 1, foreground oversampling from its class locations).
  nnU-Net's initial (read) patch and its rotation range (+-30 degrees about every axis) are used.

Every measurement builds the stream, draws ``--warmup`` batches (worker start, first reads), then times
``--batches`` batches. Runs alternate the pipelines' order per round (round r starts with pipeline r mod n),
so machine load drifts hit all pipelines alike; the table reports the median over rounds and the ratio to
nnU-Net v2 at the same patch and worker count.

Usage (the demo brains, planned at the default 2 mm into ``--demo`` when not there yet)::

    python benchmarks/loader_throughput.py --demo /tmp/loaderbench --workers 1 2 4 --rounds 3

or on any planned dataset: ``-d ID -c 3d_fullres`` with the autotrans_* environment variables set.
Writes a JSON report (``--out``) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _demo import prepare_demo  # noqa: E402

logger = logging.getLogger("benchmark.loader_throughput")

StreamFactory = Callable[[list[int], int, int, int], Any]  # (patch, batch size, workers, seed) -> stream


# --- data -------------------------------------------------------------------------------------------------------
def convert_for_nnunet(fold: Any, out: Path) -> list[str]:
    """Write the fold's training cases in nnU-Net v2's blosc2 format (data = source + target channels, seg = mask)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params

    from autotrans.preprocessing.store import PreprocessedCase

    out.mkdir(parents=True, exist_ok=True)
    patch = tuple(fold.configuration.patch_size)
    rng = np.random.default_rng(0)
    for c in fold.train_cases:
        if (out / f"{c}.pkl").is_file():
            continue
        case = PreprocessedCase(fold.data_dir, c)
        src, tgt = case.load("source"), case.load("target")
        src = src if src.ndim == 4 else src[None]
        tgt = tgt if tgt.ndim == 4 else tgt[None]
        mask = case.load("mask")
        mask = np.ones(src.shape[1:], np.int8) if mask is None else (np.asarray(mask).reshape(src.shape[1:]) > 0)
        data = np.concatenate([src, tgt]).astype(np.float32)
        seg = mask[None].astype(np.int8)
        fg = np.argwhere(seg > 0)  # (c, z, y, x), nnU-Net samples at most 10000 per class
        fg = fg[rng.choice(len(fg), min(len(fg), 10000), replace=False)] if len(fg) else fg
        props = {"class_locations": {1: fg}, "shape_after_cropping_and_before_resampling": data.shape[1:]}
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_s, chunks_s = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, props, str(out / c), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_s, blocks_seg=blocks_s)
    return list(fold.train_cases)


# --- pipelines --------------------------------------------------------------------------------------------------
def ours(fold: Any, **settings: Any) -> StreamFactory:
    """autotrans' training stream, exactly as ``Trainer.fit`` builds it, with these augmentation settings."""
    from autotrans.training.augment import AugmentationSettings
    from autotrans.training.data import make_train_augmenter

    aug = AugmentationSettings(**settings)

    def make(patch: list[int], batch: int, workers: int, seed: int) -> Any:
        return make_train_augmenter(fold, batch, seed, True, 0, workers, aug, patch_size=patch)
    make.reads_only = aug.on_device  # type: ignore[attr-defined]  (the device would augment: regions come back)
    return make


def nnunet(folder: Path, cases: list[str]) -> StreamFactory:
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    def make(patch: list[int], batch: int, workers: int, seed: int) -> Any:
        rot = (-30.0 / 360 * 2 * math.pi, 30.0 / 360 * 2 * math.pi)  # nnU-Net's 3D rotation_for_DA
        initial = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))  # as nnUNetTrainer.configure_rotation_dummyDA...
        transforms = nnUNetTrainer.get_training_transforms(patch, rot, None, (0, 1, 2), False)
        ds = nnUNetDatasetBlosc2(str(folder), cases)
        dl = nnUNetDataLoader(ds, batch, initial, patch, LabelManager({"background": 0, "mask": 1}, None),
                              oversample_foreground_percent=0.33, transforms=transforms)
        if workers <= 0:
            return SingleThreadedAugmenter(dl, None)
        # nnUNetTrainer.get_dataloaders: num_cached=max(6, processes // 2), wait_time 0.002
        return NonDetMultiThreadedAugmenter(dl, None, workers, max(6, workers // 2), None, pin_memory=False,
                                            wait_time=0.002)
    return make


# --- measurement ------------------------------------------------------------------------------------------------
def time_stream(make: StreamFactory, patch: list[int], batch: int, workers: int, batches: int, warmup: int,
                seed: int) -> float:
    """Samples/s of one freshly built stream after ``warmup`` batches."""
    stream = make(patch, batch, workers, seed)
    try:
        for _ in range(warmup):
            b = next(stream)
        images = b["data" if "data" in b else "source"]  # per-sample boxes (a list) on the device path
        shape = tuple(np.asarray(images[0]).shape[1:]) if isinstance(images, list) else tuple(np.shape(images)[2:])
        assert shape == tuple(patch) or getattr(make, "reads_only", False), f"{shape} != {patch}"
        t0 = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * batch / (time.perf_counter() - t0)
    finally:
        if hasattr(stream, "_finish"):
            stream._finish()


def run(pipelines: dict[str, StreamFactory], patches: dict[str, list[int]], workers: list[int], batch: int,
        batches: int, warmup: int, rounds: int) -> list[dict[str, Any]]:
    names = list(pipelines)
    rows = []
    for label, patch in patches.items():
        for w in workers:
            got: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    got[n].append(time_stream(pipelines[n], patch, batch, w, batches, warmup, seed=r))
                    logger.info("%s %s workers=%d round %d: %.2f samples/s", n, label, w, r, got[n][-1])
            for n in names:
                rows.append({"patch": label, "patch_size": patch, "workers": w, "pipeline": n,
                             "samples_per_s": statistics.median(got[n]), "runs": got[n]})
    return rows


def table(rows: list[dict[str, Any]], reference: str = "nnunetv2") -> str:
    ref = {(r["patch"], r["workers"]): r["samples_per_s"] for r in rows if r["pipeline"] == reference}
    lines = ["| patch | workers | pipeline | samples/s (median) | per worker | vs nnU-Net v2 | runs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = ref.get((r["patch"], r["workers"]))
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        per = r["samples_per_s"] / max(r["workers"], 1)
        runs = ", ".join(f"{v:.2f}" for v in r["runs"])
        lines.append(f"| {r['patch']} {'x'.join(map(str, r['patch_size']))} | {r['workers']} | {r['pipeline']} | "
                     f"{r['samples_per_s']:.2f} | {per:.2f} | {ratio} | {runs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--dataset", default=None)
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--demo", type=Path, default=None, help="plan the demo brains here (when -d is not given)")
    p.add_argument("--fold", default="all")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--patches", nargs="+", default=["planned", "128"],
                   help="'planned' and/or edge lengths of cubic patches (default: planned 128)")
    p.add_argument("--pipelines", nargs="+", default=["bg1", "nnunetv2"])
    p.add_argument("--batch_size", type=int, default=None, help="default: the plan's")
    p.add_argument("--batches", type=int, default=6, help="timed batches per run (6)")
    p.add_argument("--warmup", type=int, default=2, help="batches drawn before timing (2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting (2)")
    p.add_argument("--out", type=Path, default=Path("loader_throughput.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    dataset = a.dataset or prepare_demo(a.demo or Path("/tmp/autotrans_loaderbench"))

    from autotrans.training.data import locate_fold_data

    fold = locate_fold_data(dataset, a.configuration, a.fold)
    batch = a.batch_size or fold.configuration.batch_size
    patches = {("planned" if s == "planned" else f"{s}^3"):
               (list(fold.configuration.patch_size) if s == "planned" else [int(s)] * 3) for s in a.patches}
    available: dict[str, Callable[[], StreamFactory]] = {
        "bg1": lambda: ours(fold, pipeline="batchgenerators"),
        "torch": lambda: ours(fold, pipeline="torch"),
        "gpu_cpu_share": lambda: ours(fold, on_device=True),
        "nnunetv2": lambda: nnunet(fold.data_dir.parent / "nnunetv2_format",
                                   convert_for_nnunet(fold, fold.data_dir.parent / "nnunetv2_format")),
    }
    pipelines = {n: available[n]() for n in a.pipelines}
    rows = run(pipelines, patches, a.workers, batch, a.batches, a.warmup, a.rounds)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
              "load_avg_at_end": os.getloadavg(), "dataset": fold.folders.name, "batch_size": batch,
              "cases": len(fold.train_cases), "batches": a.batches, "warmup": a.warmup, "rounds": a.rounds,
              "rows": rows}
    a.out.write_text(json.dumps(report, indent=1))
    print(table(rows))
    return report


if __name__ == "__main__":
    main()
