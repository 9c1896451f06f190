"""The one training loop every family runs through (no trainer subclass per variant).

The loop only talks to the ``Family`` interface: ``build``/``configure_optimizers`` create the networks,
``train_step`` consumes a batch dict, ``predict_patch`` serves validation, ``on_epoch_end`` steps the LR
schedules, ``train_state_dict`` and ``state_dict`` go into checkpoints. Everything family-independent —
data, mixed precision, DDP/compile wrapping, validation in physical units, checkpoints, logs — lives here.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotrans.families.base import Family, get_family
from autotrans.planning.planner import plans_hash
from autotrans.results import link_checkpoint, save_checkpoint
from autotrans.training import distributed as ddp
from autotrans.training.checkpoints import BEST, FINAL, LATEST, load_pretrained, rng_state, set_rng_state
from autotrans.training.data import FoldData, ValidationBatches, device_augmentation, make_train_augmenter
from autotrans.training.progress import (DATA_WAIT, EPOCH_TIME, TRAIN_TIME, VAL_MAE, VAL_MAE_EMA, VAL_PSNR, VAL_TIME,
                                         History, plot_progress, summarize_epoch)
from autotrans.training.settings import EMA_MOMENTUM, TrainSettings, mixed_precision
from autotrans.training.validation import physical_patch_errors, validation_unit
from autotrans.utils.progress import progress

logger = logging.getLogger(__name__)

BATCH_KEYS = ("source", "target", "mask", "target_mask")
ENGINE_VERSION = 1
#: a data-wait fraction above this is reported in the log as a loader bottleneck
DATA_WAIT_WARNING = 0.2


class Trainer:
    """One rank of one run: builds the family, resumes, trains, validates and checkpoints."""

    def __init__(self, settings: TrainSettings, fold: FoldData, fold_dir: Path, device: torch.device,
                 rank: int = 0, world: int = 1, resume: dict[str, Any] | None = None) -> None:
        self.s, self.fold, self.fold_dir, self.device = settings, fold, fold_dir, device
        self.rank, self.world = rank, world
        self.is_main = rank == 0
        self.history = History()
        self.start_epoch = 0
        self.ema: float | None = None
        self.best_ema = math.inf
        self.seed = int(settings.seed)
        self.val_unit = validation_unit(fold.plans.target_normalization)
        self.overrides = {**settings.overrides, "num_epochs": settings.num_epochs}
        if resume is not None:
            if resume["loader"]["seed"] != self.seed:
                logger.info("continuing with the checkpoint's seed %d", resume["loader"]["seed"])
            self.seed = int(resume["loader"]["seed"])
            self.overrides = {**resume["overrides"], **settings.overrides, "num_epochs": settings.num_epochs}
        torch.manual_seed(self.seed + rank)
        np.random.seed((self.seed + rank) % 2 ** 32)
        self.family = self._build_family(resume)
        self.batch_size = ddp.rank_batch_size(settings.batch_size, rank, world)
        self.mirror_axes = settings.augmentation.mirror_axes
        #: --gpu_augmentation: workers only read regions, this augments them on self.device (None: workers do)
        self.device_aug = device_augmentation(fold, settings.augmentation, self.seed)
        #: (epochs done, file) of this process's last checkpoint write: a second name for the same state links to it
        self.last_saved: tuple[int, Path] | None = None

    # --- setup ---------------------------------------------------------------------------------
    def _build_family(self, resume: dict[str, Any] | None) -> Family:
        cfg = self.fold.configuration
        family = get_family(self.s.model)(self.fold.plans, cfg, self.overrides, self.device)
        family.autocast_dtype, needs_scaler = mixed_precision(self.device)
        family.scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        family.build()
        if resume is None:
            family.load_dependencies()  # e.g. the latent models' trained autoencoders (a resume has its own copy)
        if self.s.pretrained_weights and resume is None:
            load_pretrained(self.s.pretrained_weights, family)
        family.configure_optimizers()
        if resume is not None:
            family.load_state_dict(resume["networks"])
            family.load_train_state_dict(resume["train_state"])
            if family.scaler is not None and resume.get("scaler"):
                family.scaler.load_state_dict(resume["scaler"])
            self.start_epoch = int(resume["epoch"])
            self.history = History(resume["history"])
            self.ema, self.best_ema = resume["ema"], resume["best_ema"]
            # checkpoints before the MR validation scale was unified hold raw-MR-unit EMAs: not comparable
            earlier_unit = resume.get("val_unit", "raw MR intensity" if self.fold.plans.target_normalization.per_case
                                      else self.val_unit)
            if earlier_unit != self.val_unit and self.ema is not None:
                logger.warning("the checkpoint's validation MAE is in %s, this run's in %s: the EMA that picks %s "
                               "starts afresh", earlier_unit, self.val_unit, BEST)
                self.ema, self.best_ema = None, math.inf
            per_rank = resume.get("rng_per_rank") or [resume["rng"]]
            set_rng_state(per_rank[self.rank] if self.rank < len(per_rank) else resume["rng"])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        wrap = ddp.ddp_wrapper(self.device, self.world)
        if wrap is not None:
            family.wrap_networks(wrap)
        if self.s.compile:
            family.wrap_networks(torch.compile)
        return family

    def hparams(self) -> dict[str, Any]:
        resolved = getattr(self.family, "resolved_hparams", None)
        return dict(resolved()) if callable(resolved) else dict(self.overrides)

    # --- checkpoints ---------------------------------------------------------------------------
    def checkpoint_state(self, epochs_done: int) -> dict[str, Any]:
        f = self.family
        return {
            "family": self.s.model, "configuration": self.s.configuration,
            "plans_sha1": plans_hash(self.fold.plans.data), "overrides": dict(self.overrides),
            "networks": f.state_dict(), "mirror_axes": list(self.mirror_axes),
            "train_state": f.train_state_dict(), "scaler": f.scaler.state_dict() if f.scaler else None,
            "epoch": epochs_done, "rng": rng_state(),
            "loader": {"seed": self.seed, "next_batch": epochs_done * int(self.s.iterations)},
            "history": self.history.to_dict(), "ema": self.ema, "best_ema": self.best_ema, "val_unit": self.val_unit,
            "init_args": {"settings": self.s.to_dict(), "world_size": self.world, "fold": self.fold.fold,
                          "plans_name": self.s.plans_name, "dataset": self.fold.folders.name},
            "engine_version": ENGINE_VERSION,
        }

    def save(self, name: str, epochs_done: int) -> None:
        """Called on every rank (RNG states are gathered so each rank resumes its own stream); rank 0 writes.

        A checkpoint of the same epoch as the one just written (best at the last epoch, then final; latest and
        best of one epoch) holds the same state: it becomes a hard link to that file, not a second copy
        (``link_checkpoint``: atomic, a copy where hard links are unsupported). The decision is the same on
        every rank, so the collective gather is skipped on all of them alike."""
        path = self.fold_dir / name
        if self.last_saved is not None and self.last_saved[0] == epochs_done and self.last_saved[1] != path:
            if not self.is_main:
                return
            source = self.last_saved[1]
            if source.is_file():
                how = link_checkpoint(source, path)
                logger.info("%s: same weights as %s (epoch %d), %s", name, source.name, epochs_done,
                            "hard-linked (no second copy on disk)" if how == "link" else "copied (no hard links here)")
            else:  # removed meanwhile by someone else: write it in full (this rank's RNG state only)
                save_checkpoint(self.checkpoint_state(epochs_done), path)
            return
        per_rank = ddp.gather_objects(rng_state(), self.world)
        if self.is_main:
            state = self.checkpoint_state(epochs_done)
            state["rng_per_rank"] = per_rank
            save_checkpoint(state, path)
        self.last_saved = (epochs_done, path)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> None:
        s = self.s
        if self.start_epoch >= s.num_epochs:
            logger.info("already trained for %d epoch(s) (asked for %d): nothing to train", self.start_epoch, s.num_epochs)
            return
        stream = make_train_augmenter(self.fold, self.batch_size, self.seed, self.family.paired_batches,
                                      self.start_epoch * int(s.iterations), int(s.num_workers), s.augmentation,
                                      self.rank, self.world)
        val = ValidationBatches(self.fold, self.batch_size, self.seed, int(s.val_iterations))
        if not val.enabled:
            logger.warning("no validation patches (no paired validation case or --val_iterations 0): "
                           "checkpoint_best.pth is not written")
        elif self.is_main:
            logger.info("validation: %d batch(es) of %d patch(es) after each epoch (--val_iterations; default "
                        "iterations // 5, at most 50)", val.iterations, self.batch_size)
        try:
            for epoch in range(self.start_epoch, int(s.num_epochs)):
                t0 = time.perf_counter()
                values = self.train_epoch(stream, epoch)
                t1 = time.perf_counter()
                values.update(self.validate(val))
                values.update({f"lr/{k}": float(o.param_groups[0]["lr"]) for k, o in self.family.optimizers().items()})
                t2 = time.perf_counter()
                values.update({TRAIN_TIME: t1 - t0, VAL_TIME: t2 - t1, EPOCH_TIME: t2 - t0})
                self.end_epoch(epoch, values)
        finally:
            if hasattr(stream, "_finish"):
                stream._finish()
        self.save(FINAL, int(s.num_epochs))
        ddp.barrier(self.world)

    def train_epoch(self, stream: Any, epoch: int) -> dict[str, float]:
        """One epoch of steps; also measures the data-wait fraction (``DATA_WAIT``).

        The wait is the time blocked in ``next(stream)`` plus the host-to-device copy, divided by the whole
        iteration time (wait + device augmentation, if on, + ``train_step``). The device is synchronised before
        the clock stops, so its work counts as step time: the fraction is the share of the epoch the device
        idled for data (0 when the loader keeps up)."""
        for net in self.family.networks().values():
            net.train()
        sums: dict[str, float] = defaultdict(float)
        iterations = int(self.s.iterations)
        wait = total = 0.0
        for it in progress(range(iterations), desc=f"epoch {epoch}", unit="it", disable=not self.is_main, leave=False):
            t0 = time.perf_counter()
            raw = next(stream)
            batch = self.to_device(raw) if self.device_aug is None else self.device_aug.to_device(raw, self.device)
            t1 = time.perf_counter()
            if self.device_aug is not None:  # device work, part of the step (not of the wait)
                batch = self.device_aug(batch, int(raw["batch_index"]))
            out = self.family.train_step(batch, epoch * iterations + it)
            for k, v in out.items():
                sums[k] += float(v)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # a step that returned tensors: its kernels belong to the step
            t2 = time.perf_counter()
            wait += t1 - t0
            total += t2 - t0
        self.family.on_epoch_end(epoch, int(self.s.num_epochs))
        means = ddp.average({**{f"train/{k}": v / iterations for k, v in sums.items()},
                             DATA_WAIT: wait / total if total > 0 else 0.0}, self.world, self.device)
        if self.is_main and means[DATA_WAIT] > DATA_WAIT_WARNING:
            logger.info("epoch %d: %.0f %% of the step time was spent waiting for batches: the data loader is the "
                        "bottleneck (more -num_workers or --gpu_augmentation help)", epoch, 100 * means[DATA_WAIT])
        return means

    def to_device(self, batch: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        pin = self.device.type == "cuda"
        out = {}
        for k in (*BATCH_KEYS, *extra):
            if k in batch:
                t = torch.from_numpy(np.ascontiguousarray(batch[k]))
                out[k] = (t.pin_memory() if pin else t).to(self.device, non_blocking=pin)
        return out

    @torch.no_grad()
    def validate(self, val: ValidationBatches) -> dict[str, float]:
        """MAE/PSNR on the fixed validation patches in the final validation's unit (``self.val_unit``: HU, SUV or
        the normalized MR scale); every rank, same weights, same result."""
        if not val.enabled:
            return {}
        self.family.eval()
        norm = self.fold.plans.target_normalization
        errors: list[tuple[float, float]] = []
        extra: dict[str, list[float]] = defaultdict(list)
        own_step = type(self.family).validation_step is not Family.validation_step
        limit = self.family.validation_prediction_limit()
        for n, raw in enumerate(progress(val, total=val.iterations, desc="validation", unit="batch",
                                     disable=not self.is_main, leave=False)):
            batch = self.to_device(raw)
            if limit is None or n < limit:
                params = [val.cases[int(i)].properties.get("target_normalization_params") or {}
                          for i in raw["case_index"]]
                with self.family.autocast():
                    pred = self.family.validation_prediction(batch)
                errors += physical_patch_errors(pred, batch["target"], batch["mask"], norm, params)
            if own_step:
                for k, v in self.family.validation_step(batch).items():
                    extra[f"val/{k}"].append(float(v))
        out = {k: float(np.mean(v)) for k, v in extra.items()}
        if errors:
            out[VAL_MAE] = float(np.mean([e[0] for e in errors]))
            finite = [e[1] for e in errors if math.isfinite(e[1])]
            out[VAL_PSNR] = float(np.mean(finite)) if finite else math.inf
        return out

    def end_epoch(self, epoch: int, values: dict[str, float]) -> None:
        """EMA of the validation MAE, best/latest checkpoints, log line and progress.png."""
        improved = False
        if VAL_MAE in values:
            mae = values[VAL_MAE]
            self.ema = mae if self.ema is None else EMA_MOMENTUM * self.ema + (1 - EMA_MOMENTUM) * mae
            values[VAL_MAE_EMA] = self.ema
            improved = self.ema < self.best_ema
            if improved:
                self.best_ema = self.ema
        self.history.record(epoch, values)
        done = epoch + 1
        if self.is_main:
            logger.info(summarize_epoch(epoch, values, self.val_unit))
        if improved:  # the same decision on every rank: validation is identical there
            if self.is_main:
                logger.info("new best EMA validation MAE %.4g (%s): writing %s", self.best_ema, self.val_unit, BEST)
            self.save(BEST, done)
        if done % max(int(self.s.save_every), 1) == 0 and done < int(self.s.num_epochs):
            self.save(LATEST, done)
        if self.is_main:
            plot_progress(self.history, self.fold_dir / "progress.png", self.val_unit)
