"""Integrity checks: every problem of every case found in one pass, reported together, nothing written.

The same loader serves the fingerprint and the preprocessor, so each file is read once per step and a
case that passes here cannot fail later for a reason this module knows about.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotrans.dataset.format import CaseFiles, DatasetJson, discover_cases
from autotrans.errors import DatasetError
from autotrans.io import Geometry, ImageReadError, read_geometry, read_image


@dataclass
class CaseArrays:
    """One case in memory, arrays in ``(z, y, x)``; ``source`` is ``(C, z, y, x)``; any part may be absent."""

    case_id: str
    geometry: Geometry
    source: np.ndarray | None
    target: np.ndarray | None
    mask: np.ndarray | None
    lesions: np.ndarray | None


def _check_values(case: str, label: str, arr: np.ndarray, problems: list[tuple[str, str]]) -> None:
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        problems.append((case, f"{label} contains {n_nan} NaN and {n_inf} Inf voxels"))


def lesion_label_problem(values: np.ndarray) -> str | None:
    """The one rule for lesion maps (dataset check and ``autotrans_evaluate``): non-negative integer labels."""
    values = np.unique(values)
    if (values < 0).any() or not np.allclose(values, np.round(values)):
        return "lesion map must hold non-negative integer labels"
    return None


def load_case(cf: CaseFiles, dj: DatasetJson) -> tuple[CaseArrays | None, list[tuple[str, str]]]:
    """Read and validate one case. Returns the arrays (None when unusable) and the problems found."""
    problems: list[tuple[str, str]] = []
    case = cf.case_id
    reference: Geometry | None = None
    reference_label = ""
    loaded: dict[str, np.ndarray] = {}
    for label, path in cf.all_files():
        try:
            arr, geom = read_image(path)
        except ImageReadError as e:
            problems.append((case, f"{label}: {e}"))
            continue
        if reference is None:
            reference, reference_label = geom, label
        else:
            diff = reference.mismatch(geom)
            if diff is not None:
                problems.append((case, f"geometry mismatch: {label} vs {reference_label}: {diff}"))
                continue
        _check_values(case, label, arr, problems)
        loaded[label] = arr
    for label in ("mask", "lesion map"):
        arr = loaded.get(label)
        if arr is None:
            continue
        values = np.unique(arr)
        if label == "mask":
            if not np.isin(values, (0, 1)).all():
                shown = ", ".join(f"{v:g}" for v in values[:6])
                problems.append((case, f"mask is not binary (values {shown}{'...' if len(values) > 6 else ''})"))
            elif not (arr > 0).any():
                problems.append((case, "mask is empty (no voxel is 1)"))
        elif (bad_labels := lesion_label_problem(values)) is not None:
            problems.append((case, bad_labels))
    if problems or reference is None:
        if reference is None and not problems:
            problems.append((case, "no readable files"))
        return None, problems
    n_ch = dj.num_channels
    src = None
    if all(f"source channel {i}" in loaded for i in range(n_ch)):
        src = np.stack([loaded[f"source channel {i}"] for i in range(n_ch)])
    mask = loaded.get("mask")
    lesions = loaded.get("lesion map")
    return (
        CaseArrays(
            case_id=case,
            geometry=reference,
            source=src,
            target=loaded.get("target"),
            mask=None if mask is None else (mask > 0).astype(np.uint8),
            lesions=None if lesions is None else np.round(lesions).astype(np.int16),
        ),
        problems,
    )


def check_headers(cases: dict[str, CaseFiles]) -> list[tuple[str, str]]:
    """Cheap header-only pass (dimensionality, readability, geometry) used before heavy work starts."""
    problems: list[tuple[str, str]] = []
    for case, cf in sorted(cases.items()):
        ref: tuple[str, Geometry] | None = None
        for label, path in cf.all_files():
            try:
                g = read_geometry(path)
            except ImageReadError as e:
                problems.append((case, f"{label}: {e}"))
                continue
            if ref is None:
                ref = (label, g)
            elif (diff := ref[1].mismatch(g)) is not None:
                problems.append((case, f"geometry mismatch: {label} vs {ref[0]}: {diff}"))
    return problems


def discover_and_check(dataset_dir: Path, dj: DatasetJson, splits: tuple[str, ...] = ("Tr", "Ts")) -> dict[str, dict[str, CaseFiles]]:
    """Discover cases and check naming, pairing and headers of every split; raise one DatasetError for all."""
    problems: list[tuple[str, str]] = []
    out: dict[str, dict[str, CaseFiles]] = {}
    for split in splits:
        found = discover_cases(dataset_dir, dj, split)
        problems += found.problems
        problems += check_headers(found.cases)
        out[split] = found.cases
    if not out.get("Tr"):
        problems.append(("dataset", f"no training cases found in {dataset_dir / 'imagesTr'} / targetsTr"))
    if dj.num_training and out.get("Tr") and dj.num_training != len(out["Tr"]):
        problems.append(("dataset", f"dataset.json says numTraining={dj.num_training} but {len(out['Tr'])} cases were found"))
    if problems:
        raise DatasetError(problems, header=f"{dataset_dir.name}: integrity check failed")
    return out
