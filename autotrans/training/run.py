"""A training run end to end: checks, results folder, one or several processes, final validation.

Order matters for the "bad input" contract: everything that can fail on user input (model name,
configuration, data, fold, device, the checkpoint to continue from) is checked in ``prepare`` before a
single file is written, so a rejected run leaves an existing results folder exactly as it was.
"""
from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import autotrans.families  # noqa: F401  (registers the shipped families)
from autotrans.errors import ConfigurationError
from autotrans.families.base import get_family
from autotrans.inference.models import ModelSpec
from autotrans.paths import results_root
from autotrans.results import load_checkpoint, model_folder_name
from autotrans.training import distributed as ddp
from autotrans.training.checkpoints import BEST, FINAL, RESUME_ORDER, find_resume_checkpoint
from autotrans.training.data import FoldData, locate_fold_data
from autotrans.training.engine import Trainer
from autotrans.training.progress import add_log_file, new_log_path
from autotrans.training.settings import (SHARED_OVERRIDES, TrainSettings, check_device, resolve,
                                         validate_overrides)
from autotrans.training.validation import final_validation
from autotrans.utils.files import clean_stale_temps, save_json

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    settings: TrainSettings  # resolved: no None left
    fold: FoldData
    model_dir: Path
    fold_dir: Path
    resume_from: Path | None
    family_module: str  # imported by spawned ranks, so families registered outside autotrans work under DDP

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.model_dir, self.fold.folders.name, self.settings.model, self.settings.plans_name,
                         self.settings.configuration)


def prepare(settings: TrainSettings) -> Prepared:
    """Resolve and check the whole run; raises ``ConfigurationError`` (one line) and writes nothing."""
    family_cls = get_family(settings.model)
    check_device(settings.device, settings.num_gpus)
    fold = locate_fold_data(settings.dataset, settings.configuration, settings.fold, settings.plans_name)
    if family_cls.paired_batches and not fold.plans.data.get("paired", True):
        raise ConfigurationError(f"model {settings.model!r} needs paired data, but {fold.folders.name} is unpaired "
                                 "(use cyclegan)")
    section = fold.configuration.data.get("families", {}).get(settings.model, {})
    settings = replace(settings, overrides=validate_overrides(settings.model, settings.overrides, section))
    s = resolve(settings, fold.plans, fold.configuration)
    model_dir = results_root() / fold.folders.name / model_folder_name(s.model, s.plans_name, s.configuration)
    fold_dir = model_dir / f"fold_{s.fold}"
    resume_from = None
    if s.only_validation:
        ckpt = fold_dir / (BEST if s.val_best else FINAL)
        load_checkpoint(ckpt, fold.plans.data)  # corrupt/foreign/missing: one line, before anything is written
    elif s.continue_training:
        found = find_resume_checkpoint(fold_dir, fold.plans.data, s.model, s.configuration)
        if found is None:
            logger.warning("--c: no checkpoint in %s, starting from scratch", fold_dir)
        else:
            resume_from = found[0]
            logger.info("continuing from %s (epoch %d)", found[0], found[1]["epoch"])
    paths = {key: str(dependency_checkpoint(dep, s, fold)) for dep, key in family_cls.dependencies
             if key not in s.overrides}
    if paths:
        s = replace(s, overrides={**s.overrides, **paths})
    if s.pretrained_weights and not Path(s.pretrained_weights).is_file():
        raise ConfigurationError(f"-pretrained_weights {s.pretrained_weights}: file not found")
    if s.pretrained_weights and resume_from is None and not s.only_validation:
        # crafted, corrupt or another model's: refused here, before a fresh start renames the fold's checkpoints
        pretrained = load_checkpoint(s.pretrained_weights)
        if pretrained["family"] != s.model:
            raise ConfigurationError(f"{s.pretrained_weights}: pretrained weights of model {pretrained['family']!r}, "
                                     f"not {s.model!r}")
        del pretrained
    return Prepared(s, fold, model_dir, fold_dir, resume_from, family_cls.__module__)


def dependency_checkpoint(model: str, s: TrainSettings, fold: FoldData) -> Path:
    """Where a fold's shared stage lives (the autoencoder, the ControlNet's prior): its own model folder, trained
    once and used by every model that builds on it."""
    folder = results_root() / fold.folders.name / model_folder_name(model, s.plans_name, s.configuration)
    return folder / f"fold_{s.fold}" / FINAL


def train_dependencies_first(p: Prepared, requested: TrainSettings) -> None:
    """Train each missing stage this model builds on (same budget, device and seed; the model's ``-o``
    overrides are its own, except a perceptual network all may use). A stage's own stages come first."""
    if p.resume_from is not None:
        return
    for model, key in get_family(p.settings.model).dependencies:
        path = Path(p.settings.overrides[key])
        if path.is_file():
            continue
        logger.info("%s needs the fold's %s, which is not trained yet: training it first (%s)",
                    p.settings.model, model, path.parent.parent.name)
        keep = {k: v for k, v in requested.overrides.items() if k in SHARED_OVERRIDES}
        # the user's request, not this model's resolved settings: the stage has its own planned batch size
        run_training(replace(requested, model=model, overrides=keep, pretrained_weights=None, only_validation=False,
                             val_best=False, seed=p.settings.seed))
        if not path.is_file():
            raise ConfigurationError(f"{model} training finished without writing {path}")


def write_model_folder(p: Prepared) -> None:
    """plans.json, dataset.json, dataset_fingerprint.json: what inference needs besides checkpoints.

    First removes hidden temporaries a killed run (kill -9, power loss) left mid-write in the model and fold
    folders; those of a process still running are kept (``clean_stale_temps``)."""
    p.model_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(p.model_dir)
    clean_stale_temps(p.fold_dir, recursive=True)  # also validation/ (a killed final validation's exports)
    save_json(p.fold.plans.data, p.model_dir / "plans.json")
    pre = p.fold.folders.preprocessed
    for name in ("dataset.json", "dataset_fingerprint.json"):
        if (pre / name).is_file():
            shutil.copyfile(pre / name, p.model_dir / name)
    p.fold_dir.mkdir(parents=True, exist_ok=True)
    if p.resume_from is None:
        # a fresh run must not leave an older run's checkpoints behind for a later --c to pick up by mistake;
        # they are kept once as *.pth.previous rather than deleted (a forgotten --c should not cost a model)
        for name in RESUME_ORDER:
            old = p.fold_dir / name
            if old.exists():
                os.replace(old, old.with_name(name + ".previous"))
                logger.warning("fresh start: the earlier %s was renamed to %s.previous", name, name)


def write_debug(p: Prepared, trainer: Trainer, world: int) -> None:
    f = trainer.family
    save_json({
        "settings": p.settings.to_dict(), "family": p.settings.model, "family_hparams": trainer.hparams(),
        "overrides": trainer.overrides, "seed": trainer.seed, "world_size": world,
        "batch_size_per_rank": trainer.batch_size, "global_batch_size": p.settings.batch_size,
        "patch_size": p.fold.configuration.patch_size, "mirror_axes": list(trainer.mirror_axes),
        "autocast_dtype": str(f.autocast_dtype), "grad_scaler": f.scaler is not None, "grad_clip": f.grad_clip,
        "device": str(trainer.device), "data_dir": str(p.fold.data_dir), "plans_file": str(p.fold.plans_file),
        "train_cases": p.fold.train_cases, "val_cases": p.fold.val_cases, "resumed_from": p.resume_from,
        "start_epoch": trainer.start_epoch, "torch": torch.__version__, "python": platform.python_version(),
        "hostname": platform.node(),
    }, p.fold_dir / "debug.json")


def train_process(rank: int, p: Prepared, world: int, port: int, log_path: Path | None = None) -> None:
    """One rank (the only one without DDP). Rank 0 writes every file; spawned it also logs to ``log_path``."""
    device = torch.device(p.settings.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", rank)
        ddp.init_process_group(rank, world, port, device)
    handler = add_log_file(log_path) if rank == 0 and log_path is not None else None
    try:
        resume = load_checkpoint(p.resume_from, p.fold.plans.data) if p.resume_from else None
        trainer = Trainer(p.settings, p.fold, p.fold_dir, device, rank, world, resume)
        del resume
        if rank == 0:
            logger.info("training %s fold %s on %s x%d: %d epochs x %d iterations, batch %d, patch %s", p.settings.model,
                        p.settings.fold, device.type, world, p.settings.num_epochs, p.settings.iterations,
                        p.settings.batch_size, p.fold.configuration.patch_size)
            write_debug(p, trainer, world)
        trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        ddp.cleanup(world)


def _spawned(rank: int, p: Prepared, world: int, port: int, log_path: Path) -> None:
    import importlib

    from autotrans.cli.common import setup_logging

    importlib.import_module(p.family_module)
    setup_logging()
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    train_process(rank, p, world, port, log_path)


def rank_failure(trace: str) -> str | None:
    """The one-line message of a spawned rank's user-facing failure (an autotrans error, an ``OSError`` such as
    a full disk), from the traceback text torch hands back; None for anything else (a bug)."""
    import builtins

    lines = [line for line in trace.strip().splitlines() if line.strip()]
    m = re.match(r"^([\w.]+?)(?:: (.*))?$", lines[-1].strip()) if lines else None
    if not m:
        return None
    name = m.group(1).rsplit(".", 1)[-1]
    builtin = getattr(builtins, name, None)
    user_facing = m.group(1).startswith("autotrans.errors.") or (
        isinstance(builtin, type) and issubclass(builtin, OSError))
    return (m.group(2) or name) if user_facing else None


def run_training(settings: TrainSettings) -> dict[str, Any] | None:
    """Train (unless ``only_validation``), then validate the fold's cases whole; returns the summary."""
    p = prepare(settings)
    s = p.settings
    if not s.only_validation:
        train_dependencies_first(p, settings)
        write_model_folder(p)
    log_path = new_log_path(p.fold_dir)
    handler = add_log_file(log_path)
    try:
        if not s.only_validation:
            world = int(s.num_gpus)
            if world > 1:
                import torch.multiprocessing as mp

                logging.getLogger().removeHandler(handler)  # the spawned rank 0 writes the log meanwhile
                # a fork server started clean (no live OpenMP/CUDA state to inherit) with the heavy imports done
                # once: later runs start their ranks in milliseconds; "spawn" where there is no fork
                method = "forkserver" if sys.platform.startswith("linux") else "spawn"
                if method == "forkserver":
                    mp.set_forkserver_preload(["torch", "autotrans.training.run", p.family_module])
                try:
                    mp.start_processes(_spawned, args=(p, world, ddp.free_port(), log_path), nprocs=world,
                                       join=True, start_method=method)
                except mp.ProcessRaisedException as e:
                    line = rank_failure(e.msg)
                    if line is None:
                        raise  # a bug: keep the rank's traceback
                    raise ConfigurationError(f"rank {e.error_index}: {line}") from None
                logging.getLogger().addHandler(handler)
            else:
                train_process(0, p, 1, 0)
        if not s.final_validation:
            logger.info("final validation skipped (--skip_final_validation): predict the validation cases yourself")
            return None
        if not get_family(s.model).translates:
            logger.info("%s does not translate: no whole-volume validation (its per-epoch reconstruction error is "
                        "in the log)", s.model)
            return None
        return final_validation(p.spec, s.fold, BEST if s.val_best else FINAL, p.fold.data_dir, p.fold.folders.raw,
                                p.fold.val_cases, torch.device(s.device), tta=s.val_tta)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
