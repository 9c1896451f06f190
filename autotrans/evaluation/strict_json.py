"""Strict JSON for evaluation results: NaN and Infinity are not JSON, so no file we write holds them.

An undefined score (NaN) is written as ``null``. An infinite one (PSNR of a prediction identical to its
reference) is written as ``null`` plus a flag beside it, ``"psnr_infinite": true`` (``"<key>_negative_infinite"``
for minus infinity), so nothing is lost and every JSON parser reads the file. :func:`restore` turns such a
file back into the numbers the evaluation produced (what ``--compare`` and the benchmark report read).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.utils.files import atomic_path, load_json

INF_FLAG = "_infinite"
NEG_INF_FLAG = "_negative_infinite"


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return v


def sanitise(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts (see the module doc)."""
    obj = _plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            v = _plain(v)
            out[k] = sanitise(v)
            if isinstance(v, float) and math.isinf(v):
                out[f"{k}{INF_FLAG if v > 0 else NEG_INF_FLAG}"] = True
        return out
    if isinstance(obj, (list, tuple)):
        return [sanitise(v) for v in obj]
    return obj


def restore(obj: Any) -> Any:
    """Inverse of :func:`sanitise` for infinities: a ``null`` with its flag becomes the infinity again, and
    the flag is dropped. Other ``null``s stay ``None`` (see :func:`load_results` for metric tables)."""
    if isinstance(obj, list):
        return [restore(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        for flag in (INF_FLAG, NEG_INF_FLAG):
            if k.endswith(flag) and k[: -len(flag)] in obj and v is True:
                break
        else:
            if v is None and obj.get(f"{k}{INF_FLAG}") is True:
                v = math.inf
            elif v is None and obj.get(f"{k}{NEG_INF_FLAG}") is True:
                v = -math.inf
            out[k] = restore(v)
    return out


def _nan_for_null(row: Any) -> Any:
    if isinstance(row, dict):
        return {k: math.nan if v is None else v for k, v in row.items()}
    return row


def save_strict_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write ``sanitise(obj)`` atomically with ``allow_nan=False`` (a non-finite number left over is a bug)."""
    text = json.dumps(sanitise(obj), indent=indent, allow_nan=False)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def load_results(path: str | os.PathLike) -> Any:
    """Read an ``autotrans_evaluate`` result (strict, or an older one with NaN/Infinity) back into the numbers
    the evaluation produced: infinities from their flags, NaN for the other nulls of the score tables
    (``cases``, ``aggregate``, ``lesions``)."""
    data = restore(load_json(path))
    if isinstance(data, dict):
        for key in ("cases", "aggregate"):
            if isinstance(data.get(key), dict):
                data[key] = {name: _nan_for_null(row) for name, row in data[key].items()}
        if isinstance(data.get("lesions"), dict):
            data["lesions"] = {c: [_nan_for_null(r) for r in rows] if isinstance(rows, list) else rows
                               for c, rows in data["lesions"].items()}
    return data
