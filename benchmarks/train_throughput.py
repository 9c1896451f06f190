"""Benchmark: is training data-bound or compute-bound? Loader throughput and the per-iteration time split.

Two measurements on an already preprocessed dataset and plan:

1. Loader alone: samples/s of the augmented patch stream (batchgenerators ``MultiThreadedAugmenter`` with
   ``--workers`` processes, or in-process with 0), after a warm-up, for the plan's patch and batch size.
2. Training: per iteration, the time spent waiting for the next batch (``next(stream)``) vs the time of the
   family's ``train_step`` (forward, backward, optimizer; CUDA synchronised). If waiting dominates, add
   workers or shrink augmentation; if compute dominates, the loader keeps up.

Usage::

    python benchmarks/train_throughput.py -d 11 -c 3d_fullres -m pix2pix --workers 2 --iterations 20 -device cpu

Writes a JSON report (``--out``) and logs a one-line summary. Not run in CI (a real plan's networks take
seconds per iteration on a CPU).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("benchmark.train_throughput")


def measure_loader(stream: Any, batches: int, warmup: int, batch_size: int) -> dict[str, float]:
    for _ in range(warmup):
        next(stream)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(stream)
    dt = time.perf_counter() - t0
    return {"batches": batches, "seconds": dt, "samples_per_s": batches * batch_size / dt,
            "batches_per_s": batches / dt}


def measure_training(trainer: Any, stream: Any, iterations: int, warmup: int) -> dict[str, Any]:
    """Median and total wait/compute per iteration; the first ``warmup`` iterations (allocator, compile) are dropped."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for net in trainer.family.networks().values():
        net.train()
    waits, computes = [], []
    for it in range(warmup + iterations):
        t0 = time.perf_counter()
        batch = trainer.to_device(next(stream))
        sync()
        t1 = time.perf_counter()
        trainer.family.train_step(batch, it)
        sync()
        t2 = time.perf_counter()
        if it >= warmup:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
    total = sum(waits) + sum(computes)
    return {"iterations": iterations, "median_wait_s": statistics.median(waits),
            "median_compute_s": statistics.median(computes), "wait_fraction": sum(waits) / total,
            "samples_per_s": iterations * trainer.batch_size / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-p", "--plans", default="autotransPlans")
    p.add_argument("-device", "--device", default="cpu")
    p.add_argument("--workers", type=int, default=2, help="augmentation worker processes (2)")
    p.add_argument("--loader_batches", type=int, default=30, help="batches timed for the loader alone (30)")
    p.add_argument("--iterations", type=int, default=20, help="training iterations timed (20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=None, help="override the plan's batch size")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process")
    p.add_argument("--skip_training", action="store_true", help="only measure the loader")
    p.add_argument("--out", default="train_throughput.json")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)

    from autotrans.training.data import make_train_augmenter
    from autotrans.training.engine import Trainer
    from autotrans.training.run import prepare
    from autotrans.training.settings import TrainSettings

    s = TrainSettings(dataset=a.dataset, configuration=a.configuration, model=a.model, fold="all",
                      plans_name=a.plans, device=a.device, num_workers=a.workers, seed=0, batch_size=a.batch_size,
                      compile=False)
    prepared = prepare(s)
    s = prepared.settings
    family_cls = __import__("autotrans.families", fromlist=["get_family"]).get_family(a.model)
    report: dict[str, Any] = {"dataset": prepared.fold.folders.name, "configuration": a.configuration,
                              "model": a.model, "device": a.device, "workers": a.workers,
                              "patch_size": prepared.fold.configuration.patch_size, "batch_size": s.batch_size,
                              "torch_threads": torch.get_num_threads()}

    def stream() -> Any:
        return make_train_augmenter(prepared.fold, int(s.batch_size), 0, family_cls.paired_batches, 0, a.workers,
                                    s.augmentation)

    loader = stream()
    try:
        report["loader"] = measure_loader(loader, a.loader_batches, a.warmup, int(s.batch_size))
    finally:
        if hasattr(loader, "_finish"):
            loader._finish()
    logger.info("loader (%d workers): %.2f samples/s", a.workers, report["loader"]["samples_per_s"])
    if not a.skip_training:
        trainer = Trainer(replace(s, num_epochs=1), prepared.fold, prepared.fold_dir, torch.device(a.device))
        loader = stream()
        try:
            report["training"] = measure_training(trainer, loader, a.iterations, a.warmup)
        finally:
            if hasattr(loader, "_finish"):
                loader._finish()
        t = report["training"]
        logger.info("training: median wait %.3f s + compute %.3f s per iteration (%.0f %% waiting), %.2f samples/s",
                    t["median_wait_s"], t["median_compute_s"], 100 * t["wait_fraction"], t["samples_per_s"])
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("report written to %s", a.out)


if __name__ == "__main__":
    main()
