"""Folder-level evaluation: pair cases, check them before any heavy work, score, aggregate, write.

All input problems (case lists, geometry, missing masks or lesion maps) are collected and reported
together before scoring starts, so a long evaluation never dies on case 57 of 60.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.errors import ConfigurationError, DatasetError
from autotrans.evaluation.lesions import stratify
from autotrans.evaluation.segmentation import Segmenter, csv_columns, segmentation_consistency
from autotrans.evaluation.standards import STANDARD_METRICS, evaluate_case
from autotrans.evaluation.strict_json import save_strict_json
from autotrans.io import SUPPORTED_ENDINGS, file_ending, read_geometry, read_image
from autotrans.utils.files import atomic_path
from autotrans.utils.progress import progress

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def case_name(path: PathLike) -> str:
    name = Path(path).name
    return name[: -len(file_ending(name))]


def discover(path: PathLike, what: str) -> dict[str, Path]:
    """``{case: file}`` for a folder of ``{CASE}{ending}`` files, or a single file."""
    p = Path(path)
    if p.is_file():
        return {case_name(p): p}
    if not p.is_dir():
        raise ConfigurationError(f"{what} {p}: no such file or folder")
    found: dict[str, Path] = {}
    dupes = []
    for f in sorted(p.iterdir()):
        if not f.is_file() or f.name.startswith(".") or not f.name.lower().endswith(SUPPORTED_ENDINGS):
            continue
        case = case_name(f)
        if case in found:
            dupes.append((case, f"{what} has both {found[case].name} and {f.name}"))
        found[case] = f
    if dupes:
        raise DatasetError(dupes, header=f"ambiguous {what} files")
    if not found:
        raise ConfigurationError(f"{what} {p}: no images ({', '.join(SUPPORTED_ENDINGS)})")
    return found


def _lookup(source: dict[str, Path], case: str, single: bool) -> Path | None:
    if case in source:
        return source[case]
    if single and len(source) == 1:  # one REF file: a single mask file applies whatever its name
        return next(iter(source.values()))
    return None


def pair_cases(ref: PathLike, pred: PathLike, mask: PathLike | None = None,
               lesions: PathLike | None = None, target: PathLike | None = None) -> dict[str, dict[str, Path | None]]:
    """Match REF/PRED/MASK/LESION(/TARGET: dose target masks) files by case and check headers; all problems in
    one error."""
    refs, preds = discover(ref, "REF"), discover(pred, "PRED")
    single = Path(ref).is_file()
    if single and Path(pred).is_file():
        preds = {next(iter(refs)): next(iter(preds.values()))}
    problems = [(c, "in REF but not in PRED") for c in sorted(set(refs) - set(preds))]
    problems += [(c, "in PRED but not in REF") for c in sorted(set(preds) - set(refs))]
    if problems:
        raise DatasetError(problems, header="REF and PRED case lists differ")
    masks = discover(mask, "MASK") if mask is not None else None
    lesion_files = discover(lesions, "LESIONS") if lesions is not None else None
    targets = discover(target, "TARGET") if target is not None else None
    pairs: dict[str, dict[str, Path | None]] = {}
    for case in sorted(refs):
        entry: dict[str, Path | None] = {"ref": refs[case], "pred": preds[case], "mask": None, "lesions": None,
                                         "target": None}
        for key, source, label in (("mask", masks, "mask"), ("lesions", lesion_files, "lesion map"),
                                   ("target", targets, "target")):
            if source is None:
                continue
            entry[key] = _lookup(source, case, single)
            if entry[key] is None:
                problems.append((case, f"no {label} file"))
        pairs[case] = entry
    if problems:
        raise DatasetError(problems, header="missing files")
    for case, entry in pairs.items():
        geo = read_geometry(entry["ref"])
        for key in ("pred", "mask", "lesions", "target"):
            if entry[key] is not None:
                diff = geo.mismatch(read_geometry(entry[key]))
                if diff:
                    problems.append((case, f"{key} geometry differs from REF: {diff}"))
    if problems:
        raise DatasetError(problems, header="geometry mismatch")
    return pairs


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, std (population), median, min, max, quartiles, count; NaN values (undefined scores) are
    left out, infinite PSNR (identical volumes) stays in."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan,
                "q25": math.nan, "q75": math.nan, "n": 0}
    with np.errstate(invalid="ignore"):  # inf - inf inside std when a PSNR is infinite
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        std = float(v.std())
    return {"mean": float(v.mean()), "std": std, "median": float(med), "min": float(v.min()),
            "max": float(v.max()), "q25": float(q25), "q75": float(q75), "n": int(v.size)}


def evaluate_folders(
    ref: PathLike,
    pred: PathLike,
    mask: PathLike | None = None,
    lesions: PathLike | None = None,
    modality: str = "CT",
    standard: str = "autotrans",
    out_json: PathLike | None = None,
    *,
    value_range: Sequence[float] | None = None,
    range_source: str = "given",
    suv_ceiling: float | None = None,
    mr_k: float = 3.0,
    segmenter: Segmenter | None = None,
) -> dict[str, Any]:
    """Score every case of REF against PRED; write ``out_json`` (+ CSV beside it) when given.

    ``segmenter``: also segment REF and PRED and score their agreement (``segmentation`` section, see
    :mod:`autotrans.evaluation.segmentation`); label maps go beside ``out_json`` (required then)."""
    if segmenter is not None and out_json is None:
        raise ConfigurationError("segmentation consistency needs an output file (-o) beside which label maps go")
    pairs = pair_cases(ref, pred, mask, lesions)
    cases: dict[str, dict[str, float]] = {}
    info: dict[str, dict[str, Any]] = {}
    lesion_rows: dict[str, list[dict[str, Any]]] = {}
    for case, entry in progress(pairs.items(), desc=f"evaluate {standard}", unit="case", disable=len(pairs) < 2):
        r, geo = read_image(entry["ref"])
        p, _ = read_image(entry["pred"])
        m = read_image(entry["mask"])[0] if entry["mask"] is not None else None
        les = read_image(entry["lesions"])[0] if entry["lesions"] is not None else None
        res = evaluate_case(r, p, m, les, modality, standard, spacing=geo.spacing, case=case,
                            value_range=value_range, range_source=range_source,
                            suv_ceiling=suv_ceiling, mr_k=mr_k)
        cases[case], info[case] = res["metrics"], res["info"]
        if "lesions" in res:
            lesion_rows[case] = res["lesions"]
    names = list(STANDARD_METRICS[standard])
    result: dict[str, Any] = {
        "standard": standard,
        "modality": modality.upper(),
        "cases": cases,
        "aggregate": {k: summarize([c[k] for c in cases.values()]) for k in names},
        "case_info": info,
        "inputs": {"ref": str(ref), "pred": str(pred), "mask": None if mask is None else str(mask),
                   "lesions": None if lesions is None else str(lesions)},
    }
    if lesions is not None:
        result["lesions"] = lesion_rows
        result["lesion_strata"] = stratify([row for rows in lesion_rows.values() for row in rows])
    if segmenter is not None:
        out = Path(out_json)  # type: ignore[arg-type]
        result["segmentation"] = segmentation_consistency(pairs, segmenter, out.parent, out.with_suffix("").name)
    if out_json is not None:
        write_results(result, out_json)
    return result


def write_results(result: dict[str, Any], out_json: PathLike) -> None:
    """JSON plus ``<stem>.csv`` (one row per case) and, with lesions, ``<stem>_lesions.csv``.

    The JSON is strict: an infinite score (PSNR of an identical prediction) is ``null`` with
    ``"<metric>_infinite": true`` beside it, an undefined one ``null`` (see :mod:`strict_json`)."""
    out_json = Path(out_json)
    if out_json.is_dir():
        raise ConfigurationError(f"-o {out_json} is a folder; give a file name, e.g. "
                                 f"{out_json / 'evaluation.json'}")
    save_strict_json(result, out_json)
    stem = out_json.with_suffix("")
    names = list(result["aggregate"])
    seg_header, seg_rows = csv_columns(result["segmentation"]) if result.get("segmentation") else ([], {})
    with atomic_path(out_json.with_suffix(".csv"), suffix=".csv") as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", *names, *seg_header])
        for case, vals in result["cases"].items():
            w.writerow([case, *[repr(float(vals[k])) for k in names], *map(repr, seg_rows.get(case, []))])
    if result.get("lesions"):
        rows = [{"case": c, **row} for c, rs in result["lesions"].items() for row in rs]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with atomic_path(Path(f"{stem}_lesions.csv"), suffix=".csv") as tmp, \
                open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    log.info("wrote %s", out_json)
