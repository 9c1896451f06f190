"""Validation: per-epoch patch metrics in physical units, and the final whole-volume validation.

Per epoch, the fixed validation patches are predicted and both prediction and reference are mapped to the
scale the final validation, ``autotrans_predict`` and the benchmark report score in (``validation_scale``):
HU and SUV through the target normalization's inverse; MR in the plan's per-case output scale (each case's
p0.5 -> -1, p99.5 -> +1, "normalized MR scale"), never raw scanner units, so the numbers in the training log,
progress.png, summary.json and the report are one scale for one model. The EMA that picks
``checkpoint_best.pth`` is in that unit (``validation_unit`` names it in every log line and plot).

The final validation runs the inference code itself (``autotrans.inference``: checkpoint loading from the
results folder, sliding windows, mirror TTA, ``export_prediction``), so its numbers are exactly what
``autotrans_predict`` would give, and a results folder that cannot serve inference fails here, not later.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotrans.dataset.format import discover_cases, load_dataset_json
from autotrans.dataset.integrity import load_case
from autotrans.evaluation import evaluate_case
from autotrans.inference.models import ModelSpec, load_model
from autotrans.inference.predictor import Predictor, PredictorSettings, export_ensemble
from autotrans.io import Geometry, write_image
from autotrans.planning.plans import Plans
from autotrans.preprocessing.normalization import Normalization
from autotrans.preprocessing.store import PreprocessedCase
from autotrans.utils.files import save_json
from autotrans.utils.progress import progress

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("mae", "psnr", "ssim")


#: the short name of the MR per-case output scale (the report's "normalized MR scale"; predictions are written in it)
MR_SCALE = "normalized MR scale"


def validation_unit(norm: Normalization) -> str:
    """The unit per-epoch and final validation numbers are in: ``HU``, ``SUV`` or ``normalized MR scale``
    (short, for log lines and axis labels; the plan's ``target_output_scale`` has the long form)."""
    return MR_SCALE if norm.per_case else (norm.unit or "physical units")


def _to_validation_scale(norm: Normalization, y: np.ndarray, case_params: dict[str, float] | None) -> np.ndarray:
    """Network space -> the validation scale: the per-case output scale for MR, physical units otherwise."""
    return norm.to_output_scale(y) if norm.per_case else norm.inverse(y, case_params)


def physical_patch_errors(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: Normalization,
                          params: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(masked MAE, PSNR) per sample in the final validation's scale (``validation_unit``: HU, SUV, or MR's
    per-case output scale); samples with an empty mask are skipped.

    PSNR's peak is the span of the output scale's [-1, 1] in that unit, the range the final validation's
    autotrans standard uses (``evaluation_range``): the HU window, [0, SUV ceiling], and for MR 2 (the case's
    p0.5..p99.5; not the wider span of the network's [-1, 1], which includes the planned headroom).
    """
    p = pred.detach().float().cpu().numpy()
    t = target.detach().float().cpu().numpy()
    m = mask.detach().cpu().numpy() > 0.5
    out = []
    for i in range(p.shape[0]):
        if not m[i].any():
            continue
        case_params = params[i] or None
        pi, ti = _to_validation_scale(norm, p[i], case_params), _to_validation_scale(norm, t[i], case_params)
        diff = (pi[m[i]].astype(np.float64) - ti[m[i]])
        mae, mse = float(np.abs(diff).mean()), float((diff ** 2).mean())
        ends = norm.from_output_scale(np.array([-1.0, 1.0], dtype=np.float32))
        span = float(np.ptp(_to_validation_scale(norm, ends, case_params)))
        psnr = float("inf") if mse == 0 else 10 * math.log10(span ** 2 / mse)
        out.append((mae, psnr))
    return out


def evaluation_range(plans: Plans) -> tuple[float, float] | None:
    """The autotrans-standard range: CT fixed by the evaluator, PET [0, ceiling], MR the output scale's [-1, 1]
    (p0.5..p99.5; values beyond it are scored unclipped, the range sets PSNR's peak and SSIM's data range)."""
    norm = plans.target_normalization
    if norm.per_case:
        return (-1.0, 1.0)
    if plans.target_modality == "PET":
        return (0.0, float(getattr(norm, "ceiling")))
    return None


def _reference(plans: Plans, target: np.ndarray, props: dict[str, Any]) -> np.ndarray:
    """The raw target in the unit predictions are exported in (MR: the plan's per-case output scale, unclipped)."""
    return plans.target_normalization.raw_to_output_scale(target, props.get("target_normalization_params") or None)


def final_validation(spec: ModelSpec, fold: str, checkpoint: str, data_dir: Path, raw_dir: Path,
                     val_cases: list[str], device: torch.device, tta: bool = True) -> dict[str, Any]:
    """Predict each validation case whole with the saved checkpoint, export it, score it; write summary.json."""
    model = load_model(spec, [fold], checkpoint, device)
    predictor = Predictor(model, PredictorSettings(device=str(device), tta=tta))
    plans, cfg = model.plans, model.configuration
    dj = load_dataset_json(raw_dir)
    raw_cases = discover_cases(raw_dir, dj, "Tr").cases
    out_dir = spec.folder / f"fold_{fold}" / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    per_case: dict[str, Any] = {}
    value_range = evaluation_range(plans)
    logger.info("final validation on %d case(s) with %s (whole volumes, %s): predictions and summary.json in %s",
                len(val_cases), checkpoint, "mirror TTA" if tta else "no TTA", out_dir)
    for case_id in progress(val_cases, desc="final validation", unit="case"):
        case = PreprocessedCase(data_dir, case_id)
        if not (case.properties.get("has_source", True) and case.properties.get("has_target", True)):
            logger.info("%s: no paired source/target, not validated", case_id)
            continue
        preds = predictor.predict_folds(case.load("source"), case_id)
        pred, _ = export_ensemble(preds, case.properties, plans, cfg, predictor.invert, False)
        geometry = Geometry.from_dict(case.properties["geometry"])
        write_image(pred, geometry, out_dir / f"{case_id}{dj.file_ending}")
        arrays, problems = load_case(raw_cases[case_id], dj)
        if arrays is None or arrays.target is None:
            logger.warning("%s: raw reference unreadable (%s), not scored", case_id, problems)
            continue
        result = evaluate_case(_reference(plans, arrays.target, case.properties), pred, arrays.mask, arrays.lesions,
                               modality=plans.target_modality, standard="autotrans", spacing=geometry.spacing,
                               case=case_id, value_range=value_range, range_source="plan")
        per_case[case_id] = result
    mean = {k: float(np.mean([r["metrics"][k] for r in per_case.values()])) for k in SUMMARY_METRICS} if per_case else {}
    summary = {"standard": "autotrans", "checkpoint": checkpoint, "unit": predictor.output_unit(),
               "mirror_tta_axes": list(model.folds[0].mirror_axes) if tta else [],
               "mean": mean, "cases": per_case}
    save_json(summary, out_dir / "summary.json")
    if mean:
        logger.info("final validation (%d case(s); MAE in %s, PSNR in dB): %s", len(per_case),
                    validation_unit(plans.target_normalization), ", ".join(f"{k}={v:.4g}" for k, v in mean.items()))
    else:
        logger.warning("final validation: no validation case has both source and target; summary.json has no scores")
    return summary
