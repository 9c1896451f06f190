"""Folder-level dose evaluation: pair real and synthetic CTs, plan on one, recompute on the other, compare.

dose.json has the shape of an ``autotrans_evaluate`` result ("cases" of rankable metrics, "aggregate"), so
``autotrans_evaluate --compare`` and the benchmark report rank models on dose exactly as on image metrics.
Only metrics with a direction sit in "cases": gamma pass rates (higher is better) and absolute DVH and dose
differences (lower is better); the signed differences, timings and plan records are in "case_details".
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autotrans.dataset.converters.common import body_mask_from_ct
from autotrans.dose.engine import DoseError, DoseSettings, case_dose, require_pyradplan, settings_record
from autotrans.evaluation.folders import PathLike, pair_cases, summarize, write_results
from autotrans.dose.metrics import dose_comparison
from autotrans.io import read_image, write_image
from autotrans.utils.lazy import LazyModule
from autotrans.utils.progress import progress

sitk = LazyModule("SimpleITK")

logger = logging.getLogger("autotrans.dose")

#: Target DVH points whose absolute difference (percent of the prescription) ranks models
RANKED_DVH = ("D98", "D95", "D50", "D2", "Dmean")


def ranked_metrics(modality: str, comparison: dict[str, float]) -> dict[str, float]:
    """The rankable subset of one modality's comparison, prefixed with the modality."""
    out = {f"{modality}_{k}": v for k, v in comparison.items() if k.startswith("gamma_")}
    for name in RANKED_DVH:
        out[f"{modality}_target_{name}_absdiff_pct"] = abs(comparison[f"target_{name}_diff_pct"])
    out[f"{modality}_body_mae_pct"] = comparison["body_mae_pct"]
    out[f"{modality}_cutoff_mae_pct"] = comparison["cutoff_mae_pct"]
    return out


def _check_case(case: str, ct: np.ndarray, syn: np.ndarray) -> None:
    for what, a in (("reference CT", ct), ("synthetic CT", syn)):
        if a.ndim != 3:
            raise DoseError(f"{case}: the {what} is {a.ndim}D; dose needs a 3D volume")
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise DoseError(f"{case}: the {what} has {bad} NaN/Inf voxels")
    lo, hi = float(ct.min()), float(ct.max())
    if hi < 100 or lo > -500:
        raise DoseError(f"{case}: the reference CT's values ({lo:.0f}..{hi:.0f}) do not look like HU; dose is "
                        "computed from HU (air -1000, water 0)")


def evaluate_dose(ref: PathLike, pred: PathLike, out_json: PathLike, modalities: Sequence[str] = ("photons",),
                  mask: PathLike | None = None, target: PathLike | None = None,
                  settings: dict[str, Any] | None = None, maps_dir: PathLike | None = None,
                  cache_dir: PathLike | None = None) -> dict[str, Any]:
    """Dose comparison of every case of ``ref`` (real CTs, HU) against ``pred`` (synthetic CTs, same grids).

    ``mask``: body masks (default: thresholded from the real CT); ``target``: target masks (default: an
    automatic sphere, see :func:`autotrans.dose.engine.automatic_target`). ``maps_dir`` receives per case and
    modality the reference and synthetic doses and their difference (Gy) and the target used; ``cache_dir``
    keeps the optimised reference plans for the next model evaluated on the same cases.
    """
    require_pyradplan()
    all_settings = [DoseSettings(modality=m, **(settings or {})) for m in modalities]
    pairs = pair_cases(ref, pred, mask, target=target)
    cases: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    cache = Path(cache_dir) if cache_dir is not None else None
    for case, entry in progress(pairs.items(), desc="dose", unit="case", disable=len(pairs) < 2):
        ct, geo = read_image(entry["ref"])
        syn, _ = read_image(entry["pred"])
        _check_case(case, ct, syn)
        body = (read_image(entry["mask"], dtype=np.uint8)[0] if entry["mask"] is not None
                else body_mask_from_ct(ct))
        if not body.any():
            raise DoseError(f"{case}: the body mask is empty")
        tgt = read_image(entry["target"], dtype=np.uint8)[0] if entry["target"] is not None else None
        image = geo.apply_to(sitk.Image([int(s) for s in geo.size], sitk.sitkUInt8))
        cases[case], details[case] = {}, {"body": "given" if entry["mask"] is not None else "thresholded at -500 HU"}
        for s in all_settings:
            d = case_dose(ct, syn, image, body, tgt, s, case, cache)
            t0 = time.perf_counter()
            comp = dose_comparison(d.reference, d.synthetic, geo.spacing_zyx, d.target, d.body, s.prescription_gy,
                                   criteria=s.gamma_criteria, cutoff_percent=s.cutoff_percent)
            d.seconds["metrics"] = time.perf_counter() - t0
            cases[case].update(ranked_metrics(s.modality, comp))
            details[case][s.modality] = {"metrics": comp, "target": d.target_source,
                                          "target_volume_cc": float(d.target.sum() * np.prod(geo.spacing) / 1000.0),
                                          "seconds": d.seconds, "peak_rss_mib": d.peak_rss_mib, "plan": d.plan}
            logger.info("%s %s: gamma 3%%/3mm %.2f %%, 2%%/2mm %.2f %%, 1%%/1mm %.2f %%; target D95 %+.2f %% "
                        "(%.0f s)", case, s.modality, comp.get("gamma_3%3mm", math.nan),
                        comp.get("gamma_2%2mm", math.nan), comp.get("gamma_1%1mm", math.nan),
                        comp["target_D95_diff_pct"], sum(v for k, v in d.seconds.items()
                                                 if k in ("reference_total", "recompute", "metrics")))
            if maps_dir is not None:
                out = Path(maps_dir)
                write_image(d.reference, geo, out / f"{case}_{s.modality}_dose_ref.nii.gz")
                write_image(d.synthetic, geo, out / f"{case}_{s.modality}_dose_sct.nii.gz")
                write_image((d.synthetic - d.reference).astype(np.float32), geo,
                            out / f"{case}_{s.modality}_dose_diff.nii.gz")
                if tgt is None:
                    write_image(d.target, geo, out / f"{case}_target.nii.gz")
    names = list(next(iter(cases.values())))
    result: dict[str, Any] = {
        "standard": "dose",
        "modality": "CT",
        "cases": cases,
        "aggregate": {k: summarize([c[k] for c in cases.values()]) for k in names},
        "case_details": details,
        "settings": [settings_record(s) for s in all_settings],
        "protocol": "plan optimised on the real CT (target mean = prescription), the same beams and weights "
                    "recomputed on the synthetic CT; outside the body the synthetic CT takes the real CT's values",
        "inputs": {"ref": str(ref), "pred": str(pred), "mask": None if mask is None else str(mask),
                   "target": None if target is None else str(target)},
    }
    write_results(result, out_json)
    return result
