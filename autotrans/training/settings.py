"""Resolved settings of one training run: plan defaults, then command-line flags, recorded in debug.json.

One frozen record travels from the CLI into every process (DDP spawns pickle it), so each rank resolves
exactly the same run and nothing is re-read from the environment halfway.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from autotrans.errors import ConfigurationError
from autotrans.planning.plans import Configuration, Plans
from autotrans.training.augment import AugmentationSettings
from autotrans.utils.devices import check_device  # noqa: F401  (re-exported: training and the grid check here)

#: engine defaults where the plan has no ``training`` section (nnU-Net's schedule)
DEFAULT_EPOCHS = 1000
DEFAULT_ITERATIONS = 250
DEFAULT_VAL_ITERATIONS = 50  # the most per-epoch validation batches by default (nnU-Net's 50 at 250 iterations)
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
    gpu_augmentation: bool | None = None  # None: on for CUDA with the torch pipeline, else off (resolve_settings)

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


#: family hyperparameters the engine sets from a flag (``-o`` would be overwritten): the flag to use instead
ENGINE_KEYS = {"num_epochs": "--epochs"}
#: overrides a model hands to the shared stages it trains first (e.g. ldm's autoencoder), so it accepts them too
SHARED_OVERRIDES = ("perceptual_weights",)


def family_defaults(family_cls: type) -> dict[str, Any] | None:
    """A family's hyperparameter defaults: its ``defaults`` table, else its module's ``DEFAULTS`` (searched along
    the class hierarchy); None for a family that publishes neither (its overrides cannot be checked)."""
    for klass in family_cls.__mro__:
        table = klass.__dict__.get("defaults")
        if table is None and klass.__module__ != "autotrans.families.base":
            table = getattr(sys.modules.get(klass.__module__), "DEFAULTS", None)
        if isinstance(table, dict):
            return dict(table)
    return None


def accepted_overrides(model: str) -> dict[str, Any] | None:
    """``{key: reference value}`` a model's ``-o`` accepts (the reference's type is the accepted type; None:
    a string such as a path), or None when the family publishes no defaults."""
    from autotrans.families.base import get_family  # local: families import the planning layer only

    cls = get_family(model)
    table = family_defaults(cls)
    if table is None:
        return None
    for key in ENGINE_KEYS:
        table.pop(key, None)
    if cls.stochastic:
        table.setdefault("sampling_steps", 1)
    for dependency, _ in cls.dependencies:
        shared = accepted_overrides(dependency) or {}
        table.update({k: shared[k] for k in SHARED_OVERRIDES if k in shared and k not in table})
    return table


def _expected_type(ref: Any, value: Any) -> str | None:
    """What ``value`` should be, when it is not of the reference value's type (None when it fits)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(ref, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(ref, int):
        return None if number(value) and float(value).is_integer() else "an integer"
    if isinstance(ref, float):
        return None if number(value) else "a number"
    if isinstance(ref, (list, tuple)):
        ok = isinstance(value, list) and len(value) == len(ref) and all(number(v) for v in value)
        return None if ok else f"a list of {len(ref)} numbers"
    return None if isinstance(value, str) or value is None else "a string"


def validate_overrides(model: str, overrides: dict[str, Any], plan_section: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """Check ``-o`` keys against the family's hyperparameters and values against their types (the default's,
    else the plan family section's); one-line ``ConfigurationError`` naming the key and what is accepted.

    Runs before anything on disk is touched: a typo must not cost the fold's checkpoints (a fresh start
    renames them) nor crash at the first step. Integral numbers for integer keys become ``int``."""
    table = accepted_overrides(model)
    out = dict(overrides)
    for key, value in overrides.items():
        if key in ENGINE_KEYS:
            raise ConfigurationError(f"-o {key}: set by the engine, use {ENGINE_KEYS[key]} instead")
        if table is None:
            continue  # a family without a defaults table: its keys are unknown here
        if key not in table:
            raise ConfigurationError(f"-o {key}: not a hyperparameter of {model}; accepted keys: "
                                     f"{', '.join(sorted(table))}")
        ref = table[key]
        if ref is None and plan_section and plan_section.get(key) is not None:
            ref = plan_section[key]
        expected = _expected_type(ref, value)
        if expected is not None:
            shown = f" (like its default {json.dumps(list(ref) if isinstance(ref, tuple) else ref)})" \
                if ref is not None else ""
            raise ConfigurationError(f"-o {key}={value!r}: {model} expects {expected} for {key}{shown}")
        if isinstance(ref, int) and not isinstance(ref, bool):
            out[key] = int(value)
    return out


def default_val_iterations(iterations: int) -> int:
    """Per-epoch validation batches when neither ``--val_iterations`` nor the plan sets them: a fifth of the
    training iterations, at least 1 and at most 50 (nnU-Net's 50 at its 250 iterations), so a short run is not
    dominated by validation (5 iterations used to be followed by 50 validation batches every epoch)."""
    return min(DEFAULT_VAL_ITERATIONS, max(1, int(iterations) // 5))


def plan_training_defaults(plans: Plans, cfg: Configuration) -> dict[str, Any]:
    """A ``training`` section of the configuration (or of the plan) overrides the engine defaults."""
    return {**plans.data.get("training", {}), **cfg.data.get("training", {})}


def resolve(settings: TrainSettings, plans: Plans, cfg: Configuration) -> TrainSettings:
    """Fill every ``None`` from the plan (or engine defaults) so the record says what actually ran.

    Validation batches: ``--val_iterations``, else the plan's ``val_iterations``, else
    ``default_val_iterations(iterations)``; the resolved number is recorded (debug.json, checkpoints)."""
    plan = plan_training_defaults(plans, cfg)
    from autotrans.families.base import get_family  # local: families import the planning layer only

    planned_bs = get_family(settings.model).planned_batch_size(cfg)
    seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(4), "little") % (2 ** 31)
    workers = settings.num_workers
    if workers is None:
        env = os.environ.get("autotrans_n_proc_DA")
        workers = int(env) if env else min(max((os.cpu_count() or 2) - 1, 1), 12)
    # default: on for CUDA with the torch pipeline. Its workers only decompress the in-volume crops (5-6 % of the
    # CPU path's per-sample cost at 128^3, documentation/performance.md) and the device applies the very same
    # transforms (batches identical to the CPU path's, tested); elsewhere the CPU path (no device to spare)
    gpu_aug = (settings.gpu_augmentation if settings.gpu_augmentation is not None
               else settings.device == "cuda" and settings.augmentation.pipeline == "torch")
    if gpu_aug and settings.augmentation.pipeline != "torch":
        raise ConfigurationError("--gpu_augmentation runs the torch pipeline on the device; it cannot be combined "
                                 "with --augmentation_pipeline batchgenerators")
    iterations = int(settings.iterations or plan.get("iterations_per_epoch", DEFAULT_ITERATIONS))
    if settings.val_iterations is not None:
        val_iterations = int(settings.val_iterations)
    elif plan.get("val_iterations") is not None:
        val_iterations = int(plan["val_iterations"])
    else:
        val_iterations = default_val_iterations(iterations)
    return replace(
        settings,
        num_epochs=int(settings.num_epochs or plan.get("num_epochs", DEFAULT_EPOCHS)),
        iterations=iterations,
        val_iterations=val_iterations,
        batch_size=int(settings.batch_size or planned_bs or cfg.batch_size),
        compile=settings.compile if settings.compile is not None else settings.device == "cuda",
        seed=int(seed),
        num_workers=int(workers),
        gpu_augmentation=gpu_aug,
        augmentation=replace(settings.augmentation, on_device=gpu_aug),
    )


def mixed_precision(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype, needs a GradScaler): bf16 on CUDA, fp16 + scaler without bf16, fp32 elsewhere."""
    if device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True
