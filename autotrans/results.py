"""Results folders: self-contained for inference, shared by training (writes) and inference (reads).

Layout (nnU-Net style)::

    $autotrans_results/DatasetXXX_Name/<model>__<plans>__<configuration>/
        plans.json  dataset.json  dataset_fingerprint.json
        fold_0/checkpoint_final.pth  checkpoint_best.pth  checkpoint_latest.pth  ...

A checkpoint is a ``torch.save``'d dict with at least ``family`` (registry name), ``configuration``,
``plans_sha1``, ``overrides`` (family hyperparameters this run used) and ``networks`` (``Family.state_dict()``);
training adds optimizers, epoch, RNG states and logs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from autotrans.errors import ConfigurationError
from autotrans.planning.planner import plans_hash
from autotrans.utils.files import atomic_path

CHECKPOINT_KEYS = ("family", "configuration", "plans_sha1", "overrides", "networks")


def model_folder_name(model: str, plans_name: str, configuration: str) -> str:
    return f"{model}__{plans_name}__{configuration}"


def parse_model_folder_name(name: str) -> tuple[str, str, str] | None:
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, plans: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; corrupt files and checkpoints of other plans get a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise ConfigurationError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise ConfigurationError(f"{path}: not an autotrans checkpoint (missing {', '.join(k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state)})")
    if plans is not None and state["plans_sha1"] != plans_hash(plans):
        raise ConfigurationError(f"{path}: checkpoint was trained with different plans than {plans.get('plans_name')!r} in this folder")
    return state
