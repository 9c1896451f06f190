"""Dataset fingerprint: what the planner needs to know about the data, extracted once.

Per case: spacing, shape, shape after cropping, and intensity statistics of every source channel and the
target inside the mask (or the source non-background when there is no mask). Dataset-level statistics
pool a bounded, seeded sample of foreground voxels per case, like nnU-Net, so memory stays flat. The
per-case statistics use every foreground voxel: the normalization planner takes the PET ceiling and the MR
target headroom from the per-case maxima (``case_statistics``), which a voxel sample can miss.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.dataset.format import CaseFiles, DatasetJson
from autotrans.dataset.integrity import load_case
from autotrans.errors import DatasetError
from autotrans.utils.parallel import pool_context
from autotrans.utils.progress import progress
from autotrans.preprocessing.cropping import crop_region

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 99.5, 99.9)
SAMPLES_PER_CASE = 200_000
FINGERPRINT_VERSION = 1


def intensity_stats(values: np.ndarray) -> dict[str, float]:
    """Statistics nnU-Net records plus p99.9 for a 1D array of foreground voxels."""
    if values.size == 0:
        return {k: float("nan") for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5", "percentile_99_9")}
    v = values.astype(np.float64, copy=False)
    p = np.percentile(v, (50.0, *PERCENTILES))
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(p[0]),
        "min": float(v.min()),
        "max": float(v.max()),
        "percentile_00_5": float(p[1]),
        "percentile_99_5": float(p[2]),
        "percentile_99_9": float(p[3]),
    }


def case_fingerprint(cf: CaseFiles, dj: DatasetJson, seed: int = 1234) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Fingerprint one case; also returns its integrity problems (the fingerprint is None when any)."""
    arrays, problems = load_case(cf, dj)
    if arrays is None:
        return None, problems
    modalities = [c.modality for c in dj.source_channels]
    geom = arrays.geometry
    ref = arrays.source if arrays.source is not None else arrays.target[None]
    mods = modalities if arrays.source is not None else [dj.target.modality]
    box, fg = crop_region(ref, arrays.mask, mods)
    if not fg.any():
        return None, [(cf.case_id, "no foreground: the source is entirely background")]
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(fg)
    sample = idx if idx.size <= SAMPLES_PER_CASE else np.sort(rng.choice(idx, SAMPLES_PER_CASE, replace=False))
    out: dict[str, Any] = {
        "case": cf.case_id,
        "spacing": list(geom.spacing_zyx),
        "shape": list(geom.shape_zyx),
        "shape_after_crop": [b - a for a, b in box],
        "relative_size_after_crop": float(np.prod([b - a for a, b in box]) / np.prod(geom.shape_zyx)),
        "has_mask": arrays.mask is not None,
        "has_lesions": arrays.lesions is not None,
        "channels": {},
        "target": None,
        "samples": {},
        "image_range": {},  # whole-image [min, max] per source channel and target: the unit checks need air
    }
    if arrays.source is not None:
        for i in range(arrays.source.shape[0]):
            flat = arrays.source[i].reshape(-1)
            out["channels"][str(i)] = intensity_stats(flat[idx])
            out["samples"][str(i)] = flat[sample].astype(np.float32)
            out["image_range"][str(i)] = [float(flat.min()), float(flat.max())]
    if arrays.target is not None:
        flat = arrays.target.reshape(-1)
        out["image_range"]["target"] = [float(flat.min()), float(flat.max())]
        out["target"] = intensity_stats(flat[idx])
        out["samples"]["target"] = flat[sample].astype(np.float32)
    if arrays.lesions is not None:
        out["lesion_voxels"] = int((arrays.lesions > 0).sum())
    return out, []


def _worker(args: tuple[CaseFiles, DatasetJson]) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    cf, dj = args
    try:
        return case_fingerprint(cf, dj)
    except MemoryError:
        return None, [(cf.case_id, "out of memory while reading")]


def extract_fingerprint(cases: dict[str, CaseFiles], dj: DatasetJson, num_processes: int = 2) -> dict[str, Any]:
    """Fingerprint all cases (multiprocess); raises one DatasetError listing every problem found."""
    items = [(cases[c], dj) for c in sorted(cases)]
    results: list[tuple[dict[str, Any] | None, list[tuple[str, str]]]] = []
    if num_processes > 1 and len(items) > 1:
        with pool_context().Pool(min(num_processes, len(items))) as pool:
            for r in progress(pool.imap(_worker, items), total=len(items), desc="fingerprint", unit="case"):
                results.append(r)
    else:
        for it in progress(items, desc="fingerprint", unit="case"):
            results.append(_worker(it))
    problems = [p for _, probs in results for p in probs]
    if problems:
        raise DatasetError(problems, header="integrity check failed")
    per_case = [r for r, _ in results if r is not None]
    pooled: dict[str, dict[str, float]] = {}
    keys = sorted({k for r in per_case for k in r["samples"]}, key=lambda k: (k == "target", k))
    for key in keys:
        values = np.concatenate([r["samples"][key] for r in per_case if key in r["samples"]])
        pooled[key] = intensity_stats(values)
    for r in per_case:
        r.pop("samples")
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset_name": dj.name,
        "num_cases": len(per_case),
        "cases": {r["case"]: r for r in per_case},
        "spacings": [r["spacing"] for r in per_case],
        "shapes_after_crop": [r["shape_after_crop"] for r in per_case],
        "median_relative_size_after_cropping": float(np.median([r["relative_size_after_crop"] for r in per_case])),
        "foreground_intensity_properties_per_channel": {k: v for k, v in pooled.items() if k != "target"},
        "target_intensity_properties": pooled.get("target"),
        "has_masks": all(r["has_mask"] for r in per_case),
        "has_lesions": any(r["has_lesions"] for r in per_case),
    }


def case_statistics(fingerprint: dict[str, Any], key: str) -> list[dict[str, float]]:
    """Per-case intensity statistics of one channel (``"0"``, ``"1"``, ...) or of ``"target"``, over the cases
    that have it (sorted by case id); empty for a fingerprint without per-case entries."""
    out = []
    for case in sorted(fingerprint.get("cases", {})):
        entry = fingerprint["cases"][case]
        stats = entry.get("target") if key == "target" else entry.get("channels", {}).get(key)
        if stats:
            out.append(stats)
    return out


def fingerprint_path(preprocessed_dataset_dir: Path) -> Path:
    return preprocessed_dataset_dir / "dataset_fingerprint.json"
