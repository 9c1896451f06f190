"""Baseline tasks of the grid: fit on the fold's training cases -> predict the held-out cases -> evaluate.

The same folders and stages as a model task (``runner.run_task``), so the report reads both alike: the fitted
table is ``baseline.json`` in the results' fold folder (``results/DatasetX/intensity_map__<plans>__<config>/
fold_F``); predictions go to the task's ``predictions/`` in the same geometry and units as a model's (the
inference chain's preprocessing and export, ``Baseline.predict``), and ``runner.evaluate`` scores them. A baseline
that makes no sense for a dataset (identity for MR -> CT) finishes as *skipped*: its ``result.json`` holds the
reason, which the report prints instead of a row.
"""
from __future__ import annotations

import logging
import shutil
import time
from typing import Any

import numpy as np

from autotrans.benchmark.grid import Task
from autotrans.paths import preprocessed_root
from autotrans.utils.files import load_json, save_json

logger = logging.getLogger(__name__)

PARAMS = "baseline.json"


def _baseline(task: Task) -> Any:
    from autotrans.baselines import get_baseline
    from autotrans.planning.plans import Plans

    plans = Plans.load(preprocessed_root() / task.dataset / f"{task.grid.plans_name}.json")
    return get_baseline(task.model)(plans, plans.configuration(task.grid.configuration))


def fit(task: Task, baseline: Any) -> dict[str, Any]:
    """Fit on the fold's training cases (``splits_final.json``) unless ``baseline.json`` exists; the record."""
    from autotrans.training.data import locate_fold_data

    params = task.results_fold_dir / PARAMS
    record = task.folder / "training.json"
    if params.is_file() and record.is_file():
        baseline.load(params)
        return load_json(record)
    fold = locate_fold_data(task.dataset, task.grid.configuration, task.fold, task.grid.plans_name)
    start = time.perf_counter()
    baseline.fit(fold.data_dir, fold.train_cases)
    wall = time.perf_counter() - start
    task.results_fold_dir.mkdir(parents=True, exist_ok=True)
    baseline.save(params)
    out = {"wall_s": wall, "train_cases": list(fold.train_cases), "parameters": str(params)}
    save_json(out, record)
    return out


def predict(task: Task, baseline: Any, cases: list[Any]) -> dict[str, Any]:
    """Predict each held-out case from its raw source files into ``predictions/`` (named like the target)."""
    from autotrans.io import read_image, write_image

    marker = task.folder / "inference.json"
    if marker.is_file():
        return load_json(marker)
    out_dir = task.folder / "predictions"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    start = time.perf_counter()
    for c in cases:
        arrays, geometries = zip(*(read_image(p) for p in c.images))
        pred = baseline.predict(np.stack(arrays), geometries[0], c.case_id)
        write_image(pred, geometries[0], out_dir / c.target.name)
    total = time.perf_counter() - start
    record = {"cases": [c.case_id for c in cases], "total_s": total, "seconds_per_volume": total / len(cases),
              "network_seconds_per_volume": None, "per_case_network_s": {}, "device": "cpu", "mirror_tta": None,
              "note": "baseline: wall clock of read, preprocess, look-up, export, write divided by the cases"}
    save_json(record, marker)
    return record


def run_baseline_task(task: Task) -> dict[str, Any]:
    """Fit, predict, evaluate one baseline task (each stage skipped when done); write ``result.json``."""
    from autotrans.baselines import BaselineNotApplicable, get_baseline
    from autotrans.benchmark.runner import clinical_evaluations, evaluate, fold_cases
    from autotrans.planning.planner import plans_hash

    task.folder.mkdir(parents=True, exist_ok=True)
    baseline = _baseline(task)
    g = task.grid
    plans = baseline.plans
    base = {"dataset": task.dataset, "model": task.model, "fold": task.fold, "configuration": g.configuration,
            "plans_name": g.plans_name, "modality": plans.target_modality,
            "source_modalities": list(plans.source_modalities), "baseline": True,
            "baseline_description": get_baseline(task.model).description}
    try:
        baseline.check()
    except BaselineNotApplicable as e:
        logger.info("%s: skipped: %s", task.name, e)
        save_json({**base, "skipped": str(e)}, task.result_file)
        return load_json(task.result_file)
    fitted = fit(task, baseline)
    cases = fold_cases(task)
    inference = predict(task, baseline, cases)
    evaluation = evaluate(task, cases)
    extra = clinical_evaluations(task, plans)
    training = {"epochs": 0, "iterations_per_epoch": 0, "total_iterations": 0, "planned_epochs": 0,
                "val_iterations": None, "batch_size": None, "seed": None, "device": "cpu", "num_gpus": None,
                "plans_sha1": plans_hash(plans.data), "hours": fitted["wall_s"] / 3600.0, "validation_hours": None,
                "hours_source": "baseline: fitting time (no training)", "wall_s_benchmark": fitted["wall_s"],
                "train_cases": fitted["train_cases"]}
    result = {
        **base, "cases": [c.case_id for c in cases],
        "files": {c.case_id: {"source": str(c.images[0]), "reference": f"reference/{c.target.name}",
                              "prediction": f"predictions/{c.target.name}",
                              "mask": str(c.mask) if c.mask else None,
                              "lesions": str(c.lesions) if c.lesions else None} for c in cases},
        "evaluation": "evaluation.json",
        "evaluation_lesions": ("evaluation_lesions.json" if (task.folder / "evaluation_lesions.json").is_file()
                               else None),
        "aggregate": evaluation.get("aggregate", {}), **extra, "training": training, "inference": inference,
    }
    save_json(result, task.result_file)
    return result
