"""Dose-comparison metrics for synthetic-CT dose evaluation (SynthRAD protocol: plan on the real CT, recompute on
the synthetic CT, compare the two doses).

Units: doses in Gy; DVH volumes (V_x) and pass rates in percent; differences are always ``evaluated - reference``
(synthetic-CT dose minus real-CT dose), in Gy and, with the ``_pct`` suffix, in percent of the prescription.
Arrays are numpy (z, y, x); spacings are in mm in the same order.

DVH convention: ``D_x`` is the dose received by at least x % of the structure volume, computed as the
(100 - x)th percentile of the structure's voxel doses with numpy's default linear interpolation between order
statistics (position ``(100 - x) / 100 * (n - 1)`` in the sorted doses). So D50 is the median, D2 the near-maximum
and D98 the near-minimum; on a linear ramp of n values ``v_0 .. v_{n-1}``, D50 is exactly the mid value. Every
voxel counts with equal volume (no partial-volume weighting).
"""
from __future__ import annotations

import numpy as np

from autotrans.dose.gamma import gamma_index, pass_rate
from autotrans.errors import ConfigurationError

#: the D_x levels reported for every structure (percent of the structure volume)
DVH_LEVELS = (98, 95, 50, 2)
#: body V_x thresholds (Gy) reported by :func:`dose_comparison` when the prescription exceeds them
BODY_VDOSE_GY = (5.0, 20.0)


def _structure_doses(dose: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The doses inside ``mask``: an empty or misshapen mask has no DVH, so it is an error, not NaN."""
    dose = np.asarray(dose, dtype=np.float64)
    mask = np.asarray(mask)
    if mask.shape != dose.shape:
        raise ConfigurationError(f"structure mask shape {mask.shape} differs from the dose shape {dose.shape}")
    values = dose[mask.astype(bool)]
    if values.size == 0:
        raise ConfigurationError("structure mask is empty: no dose-volume metrics can be computed")
    if not np.isfinite(values).all():
        raise ConfigurationError("dose inside the structure is not finite (NaN or inf found)")
    return values


def dvh_metrics(dose: np.ndarray, mask: np.ndarray,
                voxel_volume_cc: float | None = None) -> dict[str, float | int | None]:
    """D98, D95, D50, D2, Dmean, Dmax, Dmin (Gy) of the structure ``mask``, its voxel count and volume (cc).

    ``volume_cc`` is None without ``voxel_volume_cc``. See the module docstring for the D_x convention.
    """
    values = _structure_doses(dose, mask)
    levels = np.percentile(values, [100 - x for x in DVH_LEVELS])
    out: dict[str, float | int | None] = {f"D{x}": float(v) for x, v in zip(DVH_LEVELS, levels)}
    out.update(Dmean=float(values.mean()), Dmax=float(values.max()), Dmin=float(values.min()),
               n_voxels=int(values.size),
               volume_cc=None if voxel_volume_cc is None else float(values.size * voxel_volume_cc))
    return out


def vdose(dose: np.ndarray, mask: np.ndarray, threshold_gy: float) -> float:
    """V_x: percent of the structure volume receiving at least ``threshold_gy`` Gy (dose >= threshold)."""
    values = _structure_doses(dose, mask)
    return float(100.0 * np.count_nonzero(values >= threshold_gy) / values.size)


def dose_difference_map(ref_dose: np.ndarray, eval_dose: np.ndarray) -> np.ndarray:
    """``eval_dose - ref_dose`` in Gy (float64): positive where the synthetic-CT dose is higher."""
    ref = np.asarray(ref_dose, dtype=np.float64)
    ev = np.asarray(eval_dose, dtype=np.float64)
    if ref.shape != ev.shape:
        raise ConfigurationError(f"dose shapes differ: reference {ref.shape}, evaluated {ev.shape}")
    return ev - ref


def gamma_key(dose_percent: float, dta_mm: float) -> str:
    """Result key of one gamma criterion, e.g. ``gamma_3%3mm`` (``gamma_2.5%2mm`` for fractional values)."""
    return f"gamma_{dose_percent:g}%{dta_mm:g}mm"


def dose_comparison(ref_dose: np.ndarray, eval_dose: np.ndarray, spacing: tuple[float, float, float],
                    target_mask: np.ndarray, body_mask: np.ndarray, prescription_gy: float,
                    criteria: tuple[tuple[float, float], ...] = ((3, 3), (2, 2), (1, 1)),
                    cutoff_percent: float = 10.0, max_gamma: float = 2.0,
                    interp_fraction: int = 10) -> dict[str, float]:
    """All SynthRAD-style dose metrics of one case as a flat dict (floats; NaN only for an empty gamma region).

    Keys (``dd``/``dta`` formatted with ``%g``; ``_pct`` = percent of ``prescription_gy``):

    - ``gamma_{dd}%{dta}mm``: global gamma pass rate (%) over body voxels whose reference dose is at least
      ``cutoff_percent`` of the reference maximum; ``gamma_{dd}%{dta}mm_target``: the same within the target.
    - ``target_{D98,D95,D50,D2,Dmean}_diff_gy`` / ``_diff_pct``: target DVH differences.
    - ``body_Dmean_diff_gy`` / ``_pct``; ``body_V5_diff`` / ``body_V20_diff``: V_x differences in percentage
      points of the body volume, present only when the prescription exceeds the threshold (otherwise V_x is
      near 0 in both doses and its difference carries no information).
    - ``body_mae_gy`` / ``_pct``: mean |eval - ref| over the body; ``cutoff_mae_gy`` / ``_pct``: the same over
      body voxels above the cut-off (the gamma region), where a dose error matters clinically.
    - ``body_max_abs_diff_gy`` / ``_pct``: the largest |eval - ref| in the body.
    """
    if not prescription_gy > 0:
        raise ConfigurationError(f"prescription_gy must be > 0, got {prescription_gy!r}")
    diff = dose_difference_map(ref_dose, eval_dose)
    ref = np.asarray(ref_dose, dtype=np.float64)
    body = np.asarray(body_mask)
    target = np.asarray(target_mask)
    if body.shape != ref.shape or target.shape != ref.shape:
        raise ConfigurationError(f"mask shapes {target.shape} (target), {body.shape} (body) differ from the "
                                 f"dose shape {ref.shape}")
    body, target = body.astype(bool), target.astype(bool)
    if not body.any() or not target.any():
        raise ConfigurationError("target and body masks must both be non-empty")
    pct = 100.0 / prescription_gy
    out: dict[str, float] = {}
    for dd, dta in criteria:
        gamma = gamma_index(ref, eval_dose, spacing, dd, dta, cutoff_percent=cutoff_percent, max_gamma=max_gamma,
                            mask=body, interp_fraction=interp_fraction)
        key = gamma_key(dd, dta)
        out[key] = pass_rate(gamma)
        out[f"{key}_target"] = pass_rate(gamma, target)
    ref_dvh, eval_dvh = dvh_metrics(ref, target), dvh_metrics(eval_dose, target)
    for name in [f"D{x}" for x in DVH_LEVELS] + ["Dmean"]:
        delta = float(eval_dvh[name]) - float(ref_dvh[name])
        out[f"target_{name}_diff_gy"] = delta
        out[f"target_{name}_diff_pct"] = delta * pct
    body_diff = diff[body]
    out["body_Dmean_diff_gy"] = float(body_diff.mean())
    out["body_Dmean_diff_pct"] = out["body_Dmean_diff_gy"] * pct
    for threshold in BODY_VDOSE_GY:
        if prescription_gy > threshold:
            out[f"body_V{threshold:g}_diff"] = vdose(eval_dose, body, threshold) - vdose(ref, body, threshold)
    abs_diff = np.abs(body_diff)
    out["body_mae_gy"] = float(abs_diff.mean())
    out["body_mae_pct"] = out["body_mae_gy"] * pct
    above = ref[body] >= cutoff_percent / 100.0 * float(ref.max())
    out["cutoff_mae_gy"] = float(abs_diff[above].mean()) if above.any() else float("nan")
    out["cutoff_mae_pct"] = out["cutoff_mae_gy"] * pct
    out["body_max_abs_diff_gy"] = float(abs_diff.max())
    out["body_max_abs_diff_pct"] = out["body_max_abs_diff_gy"] * pct
    return out
