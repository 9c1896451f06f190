"""Unit plausibility of image values: CT/CBCT in HU, PET in SUV (warnings, never errors).

The rules are those ``autotrans_predict`` applies to its inputs (``autotrans.inference.cases``), here for the
training data at planning time and for the CTs of ``autotrans_simulate_cbct``:

- CT/CBCT must be in HU: a CT in HU contains air (about -1000 HU) unless it is cropped inside the body, so an
  image whose smallest value lies above ``CT_MIN_PLAUSIBLE_FLOOR`` holds raw scanner values (0..4095: the
  DICOM rescale slope/intercept were not applied).
- PET must be in SUV: activity concentration in Bq/ml is thousands of times larger (tissue around 2000-10000
  Bq/ml where its SUV is about 1), so a foreground median above ``PET_SUV_MEDIAN_MAX`` or a maximum above
  ``PET_SUV_MAX`` is not SUV (``autotrans_dicom2nifti --suv`` converts Bq/ml to SUVbw).
"""
from __future__ import annotations

import math
from typing import Any

#: a CT in HU always contains air (about -1000 HU) unless it is cropped inside the body (as in autotrans_predict)
CT_MIN_PLAUSIBLE_FLOOR = -200.0
#: FDG SUV: soft tissue 0.5-3, tumours up to a few tens, the bladder rarely above 100-200
PET_SUV_MEDIAN_MAX = 50.0
PET_SUV_MAX = 1000.0


def ct_units_problem(lo: float, hi: float, modality: str = "CT") -> str | None:
    """Why values ``lo..hi`` (the whole image) do not look like HU, or None."""
    if math.isfinite(lo) and lo > CT_MIN_PLAUSIBLE_FLOOR:
        return (f"{modality} values {lo:g}..{hi:g} do not look like HU (no air near -1000 HU; raw scanner values "
                "without rescale slope/intercept?)")
    return None


def pet_units_problem(median: float, hi: float) -> str | None:
    """Why PET foreground values (median, maximum) do not look like SUV, or None."""
    if (math.isfinite(median) and median > PET_SUV_MEDIAN_MAX) or (math.isfinite(hi) and hi > PET_SUV_MAX):
        return (f"PET foreground median {median:g}, maximum {hi:g} do not look like SUV (activity concentration in "
                "Bq/ml? autotrans_dicom2nifti --suv converts a PET series to SUVbw)")
    return None


def fingerprint_unit_warnings(fingerprint: dict[str, Any], channels: list[tuple[str, str, str]]) -> list[str]:
    """One warning per image role whose values do not look like its modality's unit, naming the cases.

    ``channels``: ``(key, label, modality)`` with ``key`` ``"0"``, ``"1"``, ... or ``"target"`` as in the
    fingerprint's per-case entries. CT/CBCT use the whole image's range (``image_range``), PET the foreground
    statistics; MR has no absolute unit.
    """
    out = []
    cases = fingerprint.get("cases", {})
    for key, label, modality in channels:
        bad: list[tuple[str, str]] = []
        for case in sorted(cases):
            entry = cases[case]
            if modality in ("CT", "CBCT"):
                rng = entry.get("image_range", {}).get(key)
                why = ct_units_problem(float(rng[0]), float(rng[1]), modality) if rng else None
            elif modality == "PET":
                stats = entry.get("target") if key == "target" else entry.get("channels", {}).get(key)
                why = pet_units_problem(float(stats["median"]), float(stats["max"])) if stats else None
            else:
                why = None
            if why:
                bad.append((case, why))
        if bad:
            shown = ", ".join(c for c, _ in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            out.append(f"{label}: {len(bad)} of {len(cases)} case(s) ({shown}): {bad[0][1]}")
    return out
