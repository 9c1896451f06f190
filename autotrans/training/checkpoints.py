"""Training checkpoints: what they hold, RNG capture/restore, and which one ``--c`` resumes from.

A checkpoint holds everything an exact resume needs (networks, optimizers, schedulers, scaler, epoch,
every RNG, the data stream position, the log history) plus what inference needs (family, configuration,
plan hash, overrides, mirror axes). Writes go through ``autotrans.results.save_checkpoint`` (atomic), so a
crash mid-write leaves the previous file intact and ``--c`` finds a valid one.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotrans.errors import ConfigurationError
from autotrans.results import load_checkpoint

logger = logging.getLogger(__name__)

FINAL, LATEST, BEST = "checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"
#: at equal epochs the final checkpoint wins over latest, latest over best
RESUME_ORDER = (FINAL, LATEST, BEST)


def rng_state() -> dict[str, Any]:
    """Every RNG, as tensors and plain Python values only (checkpoints load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(),
                             "numpy": (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]  # keys: a list (or, in earlier checkpoints, an array)
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_compatible(state: dict[str, Any], path: Path, model: str, configuration: str) -> None:
    """A checkpoint of another model or configuration must never be resumed into this run."""
    if state["family"] != model:
        raise ConfigurationError(f"{path}: checkpoint of model {state['family']!r}, not {model!r}")
    if state["configuration"] != configuration:
        raise ConfigurationError(f"{path}: checkpoint of configuration {state['configuration']!r}, not {configuration!r}")
    if "epoch" not in state or "train_state" not in state:
        raise ConfigurationError(f"{path}: an inference-only checkpoint (no training state) cannot be resumed")


def find_resume_checkpoint(fold_dir: Path, plans: dict[str, Any], model: str, configuration: str
                           ) -> tuple[Path, dict[str, Any]] | None:
    """The newest valid checkpoint (by epoch) or None when the fold has none at all.

    Invalid candidates (corrupt, other plans/model) are skipped with a warning when a valid one exists;
    when every candidate is invalid the first problem is raised, because silently restarting from
    scratch would overwrite a run the user meant to continue.
    """
    found: list[tuple[int, int, Path, dict[str, Any]]] = []
    problems: list[str] = []
    for rank, name in enumerate(RESUME_ORDER):
        path = fold_dir / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path, plans)
            check_compatible(state, path, model, configuration)
        except ConfigurationError as e:
            problems.append(str(e))
            continue
        found.append((int(state["epoch"]), -rank, path, state))
    if not found:
        if problems:
            raise ConfigurationError(f"cannot continue: {problems[0]}")
        return None
    for p in problems:
        logger.warning("skipping invalid checkpoint: %s", p)
    _, _, path, state = max(found, key=lambda t: (t[0], t[1]))
    return path, state


def load_pretrained(path: str, family: Any) -> None:
    """Initialise networks from any autotrans checkpoint (other plans allowed); shape mismatches are one line."""
    state = load_checkpoint(path)
    if state["family"] != family.name:
        raise ConfigurationError(f"{path}: pretrained weights of model {state['family']!r}, not {family.name!r}")
    try:
        family.load_state_dict(state["networks"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigurationError(f"{path}: pretrained weights do not fit this plan's networks "
                                 f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    logger.info("initialised networks from %s", path)
