"""Resolved settings of one training run: plan defaults, then command-line flags, recorded in debug.json.

One frozen record travels from the CLI into every process (DDP spawns pickle it), so each rank resolves
exactly the same run and nothing is re-read from the environment halfway.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from autotrans.errors import ConfigurationError
from autotrans.planning.plans import Configuration, Plans
from autotrans.training.augment import AugmentationSettings

#: engine defaults where the plan has no ``training`` section (nnU-Net's schedule)
DEFAULT_EPOCHS = 1000
DEFAULT_ITERATIONS = 250
DEFAULT_VAL_ITERATIONS = 50
DEFAULT_SAVE_EVERY = 50
EMA_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainSettings:
    """What the user asked for (``None``: take the plan's value, see ``resolve``)."""

    dataset: str
    configuration: str
    model: str
    fold: str
    plans_name: str = "autotransPlans"
    device: str = "cuda"
    num_epochs: int | None = None
    iterations: int | None = None
    val_iterations: int | None = None
    batch_size: int | None = None
    num_gpus: int = 1
    compile: bool | None = None  # None: on for CUDA
    pretrained_weights: str | None = None
    continue_training: bool = False
    only_validation: bool = False
    val_best: bool = False
    val_tta: bool = True
    final_validation: bool = True  # predict the fold's validation cases whole after training
    seed: int | None = None
    num_workers: int | None = None
    save_every: int = DEFAULT_SAVE_EVERY
    overrides: dict[str, Any] = field(default_factory=dict)
    augmentation: AugmentationSettings = AugmentationSettings()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augmentation"] = self.augmentation.to_dict()
        return d


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``-o key=value`` pairs; values are JSON where they parse (numbers, lists, booleans), else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"override {item!r}: expected key=value (e.g. -o lambda_l1=50)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def plan_training_defaults(plans: Plans, cfg: Configuration) -> dict[str, Any]:
    """A ``training`` section of the configuration (or of the plan) overrides the engine defaults."""
    return {**plans.data.get("training", {}), **cfg.data.get("training", {})}


def resolve(settings: TrainSettings, plans: Plans, cfg: Configuration) -> TrainSettings:
    """Fill every ``None`` from the plan (or engine defaults) so the record says what actually ran."""
    plan = plan_training_defaults(plans, cfg)
    from autotrans.families.base import get_family  # local: families import the planning layer only

    planned_bs = get_family(settings.model).planned_batch_size(cfg)
    seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(4), "little") % (2 ** 31)
    workers = settings.num_workers
    if workers is None:
        env = os.environ.get("autotrans_n_proc_DA")
        workers = int(env) if env else min(max((os.cpu_count() or 2) - 1, 1), 12)
    return replace(
        settings,
        num_epochs=int(settings.num_epochs or plan.get("num_epochs", DEFAULT_EPOCHS)),
        iterations=int(settings.iterations or plan.get("iterations_per_epoch", DEFAULT_ITERATIONS)),
        val_iterations=int(settings.val_iterations if settings.val_iterations is not None
                           else plan.get("val_iterations", DEFAULT_VAL_ITERATIONS)),
        batch_size=int(settings.batch_size or planned_bs or cfg.batch_size),
        compile=settings.compile if settings.compile is not None else settings.device == "cuda",
        seed=int(seed),
        num_workers=int(workers),
    )


def check_device(device: str, num_gpus: int) -> torch.device:
    """Refuse devices this machine lacks before anything is written."""
    if device not in ("cpu", "cuda", "mps"):
        raise ConfigurationError(f"device {device!r}: use cpu, cuda or mps")
    if num_gpus < 1:
        raise ConfigurationError(f"-num_gpus {num_gpus}: must be >= 1")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError("-device cuda: no CUDA device is available on this machine (use -device cpu)")
        if num_gpus > torch.cuda.device_count():
            raise ConfigurationError(f"-num_gpus {num_gpus}: only {torch.cuda.device_count()} CUDA device(s) available")
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigurationError("-device mps: Apple MPS is not available on this machine")
        if num_gpus > 1:
            raise ConfigurationError("-num_gpus > 1 is not supported on mps")
    return torch.device(device)


def mixed_precision(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, needs a GradScaler): bf16 on CUDA, fp16 + scaler without bf16, fp32 elsewhere."""
    if device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True
