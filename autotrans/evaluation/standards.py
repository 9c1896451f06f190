"""Case-level scores under each evaluation standard (see documentation/evaluation.md).

``evaluate_case`` is the one entry point training validation, the CLI and the benchmark call; it
validates the inputs (naming the case in every error) and dispatches to one standard.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from autotrans.errors import AutotransError, ConfigurationError
from autotrans.evaluation.filters import local_moments, uniform_weights
from autotrans.evaluation.ssim import (
    cropped_selection,
    gaussian_ssim_region_means,
    masked_ms_ssim,
    masked_ssim,
    ssim_from_moments,
)

log = logging.getLogger(__name__)

STANDARDS = ("autotrans", "synthrad2023", "synthrad2025", "brasyn")
MODALITIES = ("CT", "CBCT", "PET", "MR")
CT_RANGE_2023 = (-1024.0, 3000.0)
CT_RANGE_2025 = (-1024.0, 3071.0)
STANDARD_METRICS = {
    "autotrans": ("mae", "mse", "psnr", "ssim", "ms_ssim"),
    "synthrad2023": ("mae", "psnr", "ssim"),
    "synthrad2025": ("mae", "psnr", "ms_ssim"),
    "brasyn": ("ssim_lesion", "ssim_non_lesion"),
}
# +1: larger is better, -1: smaller is better (used for ranking across models)
METRIC_DIRECTION = {
    "mae": -1, "mse": -1, "psnr": 1, "ssim": 1, "ms_ssim": 1, "ssim_lesion": 1, "ssim_non_lesion": 1,
}


def metric_direction(metric: str) -> int:
    """+1 when larger is better, -1 when smaller is: the table above, then the families of derived names.

    Dose and segmentation results carry prefixed names (``photons_gamma_2%2mm``, ``photons_body_mae_pct``,
    ``seg_dice_liver``): pass rates, Dice and SSIMs rank upwards; absolute differences, errors and surface
    distances downwards. An unknown name ranks upwards, as before.
    """
    if metric in METRIC_DIRECTION:
        return METRIC_DIRECTION[metric]
    name = metric.lower()
    if any(t in name for t in ("absdiff", "mae", "mse", "hd95", "error", "assd")):
        return -1
    return 1


class EvaluationError(AutotransError):
    """Inputs of one case cannot be scored; the message names the case."""


def _prepare(a: np.ndarray, mask: np.ndarray, lo: float, hi: float | None) -> np.ndarray:
    """Clip to [lo, hi] (SynthRAD; ``hi=None``: no clipping, the autotrans standard), set outside the mask to
    lo, shift so the range starts at 0 (float64)."""
    out = a.astype(np.float64, copy=True)
    if hi is not None:
        np.clip(out, lo, hi, out=out)
    out[~mask] = lo
    out -= lo
    return out


def _psnr(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> float:
    r = np.clip(ref[mask].astype(np.float64), lo, hi)
    p = np.clip(pred[mask].astype(np.float64), lo, hi)
    mse = float(np.mean((r - p) ** 2, dtype=np.float64))
    return float("inf") if mse == 0 else float(10 * np.log10((hi - lo) ** 2 / mse))


def _abs_err(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.abs(ref[mask].astype(np.float64) - pred[mask].astype(np.float64))


def synthrad2023(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    lo, hi = CT_RANGE_2023
    return {
        "mae": float(_abs_err(ref, pred, mask).mean()),
        "psnr": _psnr(ref, pred, mask, lo, hi),
        "ssim": masked_ssim(_prepare(ref, mask, lo, hi), _prepare(pred, mask, lo, hi), mask, hi - lo),
    }


def synthrad2025(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    lo, hi = CT_RANGE_2025
    return {
        "mae": float(_abs_err(ref, pred, mask).mean()),
        "psnr": _psnr(ref, pred, mask, lo, hi),
        "ms_ssim": masked_ms_ssim(_prepare(ref, mask, lo, hi), _prepare(pred, mask, lo, hi), mask, hi - lo),
    }


def autotrans_standard(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """Every metric on the same unclipped values inside the mask. [lo, hi] only sets PSNR's peak (hi - lo),
    SSIM's/MS-SSIM's data range (hi - lo) and the value outside the mask (lo): a reference or a prediction
    beyond hi (a hot lesion, a bright MR lesion) is scored as it is, by all metrics alike."""
    err = _abs_err(ref, pred, mask)
    mse = float(np.mean(err**2))
    x, y = _prepare(ref, mask, lo, None), _prepare(pred, mask, lo, None)
    sel = cropped_selection(mask, 3)
    mom = local_moments(x, y, sel, uniform_weights(7))
    ssim = float(ssim_from_moments(mom, hi - lo).mean(dtype=np.float64)) if sel.any() else float("nan")
    return {
        "mae": float(err.mean()),
        "mse": mse,
        "psnr": float("inf") if mse == 0 else float(10 * np.log10((hi - lo) ** 2 / mse)),
        "ssim": ssim,
        "ms_ssim": masked_ms_ssim(x, y, mask, hi - lo, first_moments=mom),
    }


def brasyn_normalize(a: np.ndarray, case: str, which: str) -> np.ndarray:
    """Scale to [0, 1] by the volume's own 0.5/99.5 percentiles, lower bound floored at 0."""
    a = a.astype(np.float64, copy=False)
    v_min, v_max = np.percentile(a, [0.5, 99.5])
    v_min = max(float(v_min), 0.0)
    if not v_max > v_min:
        raise EvaluationError(f"{case}: {which} has no intensity spread between its 0.5 and 99.5 percentiles")
    return (np.clip(a, v_min, v_max) - v_min) / (v_max - v_min)


def brasyn(ref: np.ndarray, pred: np.ndarray, lesion: np.ndarray, case: str) -> dict[str, float]:
    """BraSyn SSIM inside and outside the lesion (the intended region means, see the docs)."""
    r = brasyn_normalize(ref, case, "reference")
    p = brasyn_normalize(pred, case, "prediction")
    out = {}
    for name, region in (("ssim_lesion", lesion), ("ssim_non_lesion", ~lesion)):
        rr, pp = r * region, p * region
        data_range = max(float(np.ptp(pp)), float(np.ptp(rr)))
        if data_range == 0 or not region.any():
            log.warning("%s: %s undefined (empty or constant region); NaN", case, name)
            out[name] = float("nan")
            continue
        out[name] = gaussian_ssim_region_means(pp, rr, [region], data_range)[0]
    return out


def resolve_range(ref: np.ndarray, mask: np.ndarray, modality: str, value_range: Sequence[float] | None,
                  range_source: str, suv_ceiling: float | None, case: str) -> tuple[float, float, str]:
    """The [lo, hi] range of the autotrans standard and where it came from (recorded in the JSON)."""
    if modality in ("CT", "CBCT"):
        lo, hi, src = *CT_RANGE_2025, "fixed CT range"
    elif value_range is not None:
        lo, hi, src = float(value_range[0]), float(value_range[1]), range_source
    elif modality == "PET":
        if suv_ceiling is not None:
            lo, hi, src = 0.0, float(suv_ceiling), "--suv_ceiling"
        else:
            lo, hi, src = 0.0, float(np.percentile(ref[mask], 99.9)), "reference masked p99.9"
    else:
        lo, hi = (float(v) for v in np.percentile(ref[mask], [0.5, 99.5]))
        src = "reference masked p0.5/p99.5"
    if not hi > lo:
        raise EvaluationError(f"{case}: empty intensity range [{lo:g}, {hi:g}] ({src}) for {modality}")
    return lo, hi, src


def check_inputs(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray | None, lesions: np.ndarray | None,
                 case: str) -> np.ndarray:
    """Shapes agree, values are finite, the mask is not empty, lesion labels are non-negative integers (the
    dataset check's rule); returns the boolean mask."""
    for name, arr in (("prediction", pred), ("mask", mask), ("lesion map", lesions)):
        if arr is not None and arr.shape != ref.shape:
            raise EvaluationError(f"{case}: {name} shape {arr.shape} differs from reference {ref.shape}")
    if ref.ndim != 3:
        raise EvaluationError(f"{case}: expected 3D volumes, got shape {ref.shape}")
    for name, arr in (("reference", ref), ("prediction", pred)):
        if not np.isfinite(arr).all():
            raise EvaluationError(f"{case}: {name} contains NaN or infinite values")
    m = np.ones(ref.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    if not m.any():
        raise EvaluationError(f"{case}: mask is empty")
    if lesions is not None:
        from autotrans.dataset.integrity import lesion_label_problem  # the dataset check's own rule

        problem = lesion_label_problem(np.asarray(lesions))
        if problem is not None:
            raise EvaluationError(f"{case}: {problem}")
    return m


def evaluate_case(
    ref: np.ndarray,
    pred: np.ndarray,
    mask: np.ndarray | None = None,
    lesions: np.ndarray | None = None,
    modality: str = "CT",
    standard: str = "autotrans",
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    case: str = "case",
    value_range: Sequence[float] | None = None,
    range_source: str = "given",
    suv_ceiling: float | None = None,
    mr_k: float = 3.0,
) -> dict[str, Any]:
    """Score one case. Arrays are ``(z, y, x)``; ``spacing`` is ITK ``(x, y, z)`` in mm.

    Returns ``{"metrics": {name: value}, "info": {...}, "lesions": [per-lesion dicts]}`` (the
    last only when ``lesions`` is given). ``value_range`` fixes the autotrans range for PET/MR
    (e.g. from a plan); otherwise PET uses ``suv_ceiling`` or the reference's masked p99.9 and MR
    the reference's masked 0.5/99.5 percentiles.
    """
    modality = modality.upper()
    if modality not in MODALITIES:
        raise ConfigurationError(f"unknown modality {modality!r} (valid: {', '.join(MODALITIES)})")
    if standard not in STANDARDS:
        raise ConfigurationError(f"unknown standard {standard!r} (valid: {', '.join(STANDARDS)})")
    if standard.startswith("synthrad") and modality not in ("CT", "CBCT"):
        raise ConfigurationError(f"standard {standard} scores CT targets; modality {modality} is not CT/CBCT")
    m = check_inputs(ref, pred, mask, lesions, case)
    lesion_mask = None if lesions is None else np.asarray(lesions) > 0
    info: dict[str, Any] = {"mask_voxels": int(m.sum())}
    if standard == "synthrad2023":
        metrics = synthrad2023(ref, pred, m)
    elif standard == "synthrad2025":
        metrics = synthrad2025(ref, pred, m)
    elif standard == "brasyn":
        if lesion_mask is None:
            raise EvaluationError(f"{case}: standard brasyn needs a lesion map")
        metrics = brasyn(ref, pred, lesion_mask, case)
    else:
        lo, hi, src = resolve_range(ref, m, modality, value_range, range_source, suv_ceiling, case)
        info.update(range=[lo, hi], range_source=src)
        metrics = autotrans_standard(ref, pred, m, lo, hi)
    out: dict[str, Any] = {"metrics": metrics, "info": info}
    if lesions is not None:
        from autotrans.evaluation.lesions import lesion_metrics

        out["lesions"] = lesion_metrics(ref, pred, np.asarray(lesions), m, modality,
                                        tuple(float(s) for s in spacing)[::-1], mr_k=mr_k)
        info["lesion_count"] = len(out["lesions"])
        if modality == "MR":
            info["mr_k"] = mr_k
    return out
