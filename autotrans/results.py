"""Results folders: self-contained for inference, shared by training (writes) and inference (reads).

Layout (nnU-Net style)::

    $autotrans_results/DatasetXXX_Name/<model>__<plans>__<configuration>/
        plans.json  dataset.json  dataset_fingerprint.json
        fold_0/checkpoint_final.pth  checkpoint_best.pth  checkpoint_latest.pth  ...

A checkpoint is a ``torch.save``'d dict with at least ``family`` (registry name), ``configuration``,
``plans_sha1``, ``overrides`` (family hyperparameters this run used) and ``networks`` (``Family.state_dict()``);
training adds optimizers, epoch, RNG states and logs.

Results folders are shared, so a checkpoint is untrusted input: it is read with ``torch.load(weights_only=True)``,
which accepts tensors and plain Python containers/scalars only and never runs code from the file. Checkpoints
hold nothing else (the numpy RNG state is stored as a list); the numpy arrays of checkpoints written before
that are accepted as the one exception (``_legacy_numpy_globals``: array reconstruction only, no code).
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotrans.errors import ConfigurationError
from autotrans.planning.planner import plans_hash
from autotrans.utils.files import atomic_path

CHECKPOINT_KEYS = ("family", "configuration", "plans_sha1", "overrides", "networks")
#: errors of a filesystem without hard links (FAT/exFAT, some network and FUSE mounts): ``link_checkpoint`` copies
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP,
                  getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}

logger = logging.getLogger(__name__)


def _legacy_numpy_globals() -> list[Any]:
    """What checkpoints of earlier versions need beyond the weights-only defaults: numpy's RNG state array
    (``_reconstruct``/``ndarray``/``dtype``, under numpy 2's and numpy 1's module names). These rebuild an
    array from its bytes; no callable that runs code is allowed."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    reconstruct = multiarray._reconstruct
    return [*((reconstruct, f"{m}.multiarray._reconstruct") for m in ("numpy._core", "numpy.core")),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that never executes code from the file (weights only; see the module docstring)."""
    with torch.serialization.safe_globals(_legacy_numpy_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _load_problem(path: Path, e: Exception) -> str:
    """One line for a checkpoint that cannot be read: refused content (a crafted pickle) or a damaged file."""
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+)"
                        r"|Can only (?:create new object|build)[^<]*?but got <class '([\w.]+)'>", text)
    if isinstance(e, pickle.UnpicklingError) and refused:
        what = next(g for g in refused.groups() if g)
        return (f"{path}: refused to load: the checkpoint contains code or objects that autotrans checkpoints never "
                f"hold ({what}); it may be crafted to run code, use checkpoints only from sources you trust")
    return f"{path}: corrupt or unreadable checkpoint ({type(e).__name__})"


def model_folder_name(model: str, plans_name: str, configuration: str) -> str:
    return f"{model}__{plans_name}__{configuration}"


def parse_model_folder_name(name: str) -> tuple[str, str, str] | None:
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Atomic: a crash mid-write (a full disk, kill -9) leaves the previous checkpoint intact.

    An ``OSError`` names ``path`` (not the hidden temporary, which is removed), so the message says which
    checkpoint could not be written."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    try:
        with atomic_path(path, suffix=".pth") as tmp:
            torch.save(state, tmp)
    except OSError as e:
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def link_checkpoint(source: str | os.PathLike, path: str | os.PathLike) -> str:
    """Make ``path`` the same checkpoint as ``source`` without a second copy on disk; returns "link" or "copy".

    Used when two checkpoints hold the same weights (``checkpoint_best.pth`` written at the last epoch, then
    ``checkpoint_final.pth``): a hard link, made under a hidden temporary name and renamed onto ``path``, so it is
    as atomic as ``save_checkpoint``. Later writes of either name are ``save_checkpoint``'s rename of a new file
    onto that name: it replaces that directory entry only, so the other name keeps the old weights. Where the
    filesystem has no hard links the file is copied (still through a temporary and a rename)."""
    source, path = Path(source), Path(path)
    try:
        with atomic_path(path, suffix=".pth") as tmp:
            tmp.unlink()  # the temporary's name is ours; the link takes it
            try:
                os.link(source, tmp)
                how = "link"
            except OSError as e:
                if e.errno not in _NO_HARD_LINKS:
                    raise
                logger.debug("no hard links for %s (%s): copying", path, e.strerror)
                shutil.copyfile(source, tmp)
                how = "copy"
    except OSError as e:
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    return how


def load_checkpoint(path: str | os.PathLike, plans: dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load (weights only: never runs code from the file) and validate a checkpoint; crafted, corrupt and
    foreign files and checkpoints of other plans get a one-line ``ConfigurationError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{path}: checkpoint not found")
    try:
        state = safe_torch_load(path, map_location=map_location)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise ConfigurationError(_load_problem(path, e)) from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise ConfigurationError(f"{path}: not an autotrans checkpoint (missing {', '.join(k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state)})")
    if plans is not None and state["plans_sha1"] != plans_hash(plans):
        raise ConfigurationError(f"{path}: checkpoint was trained with different plans than {plans.get('plans_name')!r} in this folder")
    return state
