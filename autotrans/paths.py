"""The three roots (nnU-Net style env vars) and dataset id/name resolution."""
from __future__ import annotations

import os
import re
from pathlib import Path

from autotrans.errors import ConfigurationError

ROOT_VARS = ("autotrans_raw", "autotrans_preprocessed", "autotrans_results")
_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


def get_root(var: str) -> Path:
    """Return the folder named by env var ``var``; a one-line error says how to set it when unset."""
    if var not in ROOT_VARS:
        raise ValueError(f"unknown root {var!r}; valid: {ROOT_VARS}")
    value = os.environ.get(var)
    if not value:
        raise ConfigurationError(
            f"environment variable {var} is not set: export {var}=/path/to/folder "
            f"(autotrans needs {', '.join(ROOT_VARS)}; see README 'Folders')"
        )
    return Path(value).expanduser()


def raw_root() -> Path:
    return get_root("autotrans_raw")


def preprocessed_root() -> Path:
    return get_root("autotrans_preprocessed")


def results_root() -> Path:
    return get_root("autotrans_results")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 <= dataset_id <= 999:
        raise ConfigurationError(f"dataset id {dataset_id} outside 0..999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ConfigurationError(f"dataset name {name!r}: use letters, digits, '-' and '_'")
    return f"Dataset{dataset_id:03d}_{name}"


def parse_dataset_folder_name(folder: str) -> tuple[int, str] | None:
    m = _DATASET_RE.match(folder)
    return (int(m.group(1)), m.group(2)) if m else None


def resolve_dataset(dataset: str | int) -> str:
    """Resolve ``3``, ``"3"``, ``"Dataset003_X"`` or ``"X"`` to the full ``DatasetXXX_Name`` folder name.

    Looks in the raw and preprocessed roots (whichever are set), like nnU-Net's ``maybe_convert_to_dataset_name``.
    """
    text = str(dataset).strip()
    if parse_dataset_folder_name(text):
        return text
    candidates: set[str] = set()
    roots = [Path(os.environ[v]).expanduser() for v in ROOT_VARS if os.environ.get(v)]
    if not roots:
        raw_root()  # raises the one-line "how to set it" error
    for root in roots:
        if not root.is_dir():
            continue
        for child in root.iterdir():
            parsed = parse_dataset_folder_name(child.name)
            if not parsed or not child.is_dir():
                continue
            if (text.isdigit() and parsed[0] == int(text)) or parsed[1] == text:
                candidates.add(child.name)
    if not candidates:
        where = ", ".join(str(r) for r in roots)
        raise ConfigurationError(f"dataset {text!r} not found in {where} (expected a folder DatasetXXX_Name)")
    if len(candidates) > 1:
        raise ConfigurationError(f"dataset {text!r} is ambiguous: {sorted(candidates)}")
    return candidates.pop()
