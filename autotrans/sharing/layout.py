"""The zip's layout: what an export may hold (``check_member``), its manifest's name and format, checksums."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from autotrans.errors import ConfigurationError
from autotrans.paths import parse_dataset_folder_name
from autotrans.results import parse_model_folder_name

MANIFEST = "autotrans_export.json"
CARD = "MODEL_CARD.md"
FORMAT = "autotrans-model"
FORMAT_VERSION = 1
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json", CARD)
#: what a stripped checkpoint keeps besides ``CHECKPOINT_KEYS``: what inference and the card read
KEEP_KEYS = ("mirror_axes", "epoch", "history", "ema", "best_ema", "val_unit", "init_args", "engine_version")
#: what the card reads from a checkpoint
CARD_KEYS = ("family", "overrides", "mirror_axes", "epoch", "best_ema", "val_unit", "init_args")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
_CHECKPOINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\.pth$")
_CHUNK = 1 << 20


# --- the zip's layout ------------------------------------------------------------------------------
def check_member(name: str) -> PurePosixPath:
    """The relative path of an allowed zip member, or a one-line refusal saying why it is not one.

    Allowed: ``DatasetXXX_Name/<model>__<plans>__<cfg>/{plans,dataset,dataset_fingerprint}.json|MODEL_CARD.md``,
    ``.../fold_F/<name>.pth|progress.png`` and ``.../fold_F/validation/summary.json``: nothing else can be written
    into the results root by an install (no absolute paths, ``..``, hidden files or other kinds of file)."""
    bad = ConfigurationError(f"refused member {name!r}: not a file of an autotrans model folder (expected "
                             "DatasetXXX_Name/<model>__<plans>__<configuration>/...; no absolute paths, '..', "
                             "links or other file kinds)")
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise bad
    path = PurePosixPath(name)
    parts = path.parts
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts) or len(parts) < 3:
        raise bad
    if parse_dataset_folder_name(parts[0]) is None or parse_model_folder_name(parts[1]) is None:
        raise bad
    rest = parts[2:]
    ok = (len(rest) == 1 and rest[0] in MODEL_FILES) or (
        len(rest) >= 2 and _FOLD_RE.match(rest[0]) is not None and (
            (len(rest) == 2 and (rest[1] == "progress.png" or _CHECKPOINT_RE.match(rest[1]) is not None))
            or rest[1:] == ("validation", "summary.json")))
    if not ok:
        raise bad
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()




@dataclass
class FoldRecord:
    """What the card says about one exported fold (read from its checkpoints and the files training wrote)."""

    fold: str
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # checkpoint name -> loaded state
    summary: dict[str, Any] | None = None  # validation/summary.json
    debug: dict[str, Any] | None = None  # debug.json (read for the card, not exported)
    runs: int = 0  # training_log_*.txt files: one per training invocation


