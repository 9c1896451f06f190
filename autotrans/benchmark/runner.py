"""Run or resume the grid: plan -> preprocess -> train -> predict -> evaluate, task by task.

Each stage leaves a marker and is skipped when the marker exists, so rerunning a grid redoes only what is
missing: a dataset is prepared when its data are preprocessed with the current plan; training is finished
when ``checkpoint_final.pth`` exists (an interrupted run resumes with ``--c`` semantics); prediction when
``inference.json`` exists (a half-predicted folder is redone, so its timing is honest); evaluation when
``evaluation.json`` exists; the task when ``result.json`` exists. A baseline task (``autotrans.baselines``) fits on
the fold's training cases instead of training and predicts through the same export (``benchmark/baselines.py``).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autotrans.benchmark.grid import GridSpec, Task
from autotrans.errors import ConfigurationError
from autotrans.paths import preprocessed_root, raw_root, results_root
from autotrans.utils.files import load_json, save_json

logger = logging.getLogger(__name__)

RESUMABLE = ("checkpoint_latest.pth", "checkpoint_best.pth")
FINAL = "checkpoint_final.pth"


# --- datasets ------------------------------------------------------------------------------------------
def prepare_dataset(grid: GridSpec, dataset: str) -> None:
    """Plan and preprocess unless the configuration's data are already preprocessed with the current plan.

    An existing plan is never re-planned here (that would orphan trained checkpoints); only missing
    preprocessing is done. ``grid.planner`` applies to datasets planned for the first time.
    """
    from autotrans.planning import api
    from autotrans.training.data import locate_fold_data

    plans_file = preprocessed_root() / dataset / f"{grid.plans_name}.json"
    if not plans_file.is_file():
        logger.info("%s: no %s yet: fingerprint, plan and preprocess", dataset, plans_file.name)
        api.plan_and_preprocess(dataset, [grid.configuration], grid.num_processes,
                                replace(grid.planner, plans_name=grid.plans_name))
        return
    try:
        locate_fold_data(dataset, grid.configuration, grid.folds[0], grid.plans_name)
        logger.info("%s: preprocessed with the current %s, skipped", dataset, plans_file.name)
    except ConfigurationError as e:
        logger.info("%s: %s: preprocessing", dataset, e)
        api.preprocess_step(dataset, [grid.configuration], grid.num_processes, grid.plans_name)


# --- training ------------------------------------------------------------------------------------------
def train(task: Task) -> None:
    """Train the fold unless ``checkpoint_final.pth`` exists; resume from a latest/best checkpoint if any."""
    from autotrans.training.run import run_training
    from autotrans.training.settings import TrainSettings

    g = task.grid
    fold_dir = task.results_fold_dir
    record = task.folder / "training.json"
    if (fold_dir / FINAL).is_file():
        logger.info("%s: %s exists, training skipped", task.name, FINAL)
        return
    resume = any((fold_dir / n).is_file() for n in RESUMABLE)
    from autotrans.families.base import get_family

    # stochastic families record --steps in their checkpoint (per-epoch validation patches sample with it too)
    overrides = {"sampling_steps": g.steps} if g.steps is not None and get_family(task.model).stochastic else {}
    settings = TrainSettings(dataset=task.dataset, configuration=g.configuration, model=task.model, fold=task.fold,
                             plans_name=g.plans_name, device=g.device, num_epochs=g.epochs, iterations=g.iterations,
                             val_iterations=g.val_iterations, num_workers=g.num_workers, seed=g.seed,
                             continue_training=resume, overrides=overrides, val_tta=g.tta,
                             final_validation=False)  # the benchmark predicts the held-out cases itself, timed
    logger.info("%s: %s", task.name, "resuming training (--c)" if resume else "training")
    start = time.perf_counter()
    run_training(settings)
    wall = time.perf_counter() - start
    earlier = load_json(record) if record.is_file() else {}
    save_json({"wall_s": float(earlier.get("wall_s", 0.0)) + wall,
               "invocations": int(earlier.get("invocations", 0)) + 1,
               "note": "wall clock of autotrans training calls made by the benchmark (without a final validation: the "
                       "benchmark predicts the held-out cases itself; for the first latent model of a fold it "
                       "includes training the fold's shared stages: the autoencoder, the ControlNet's prior)"}, record)


def checkpoint_record(fold_dir: Path) -> dict[str, Any]:
    """What was actually trained, read from ``checkpoint_final.pth``: epochs done, schedule, seed, hours."""
    from autotrans.results import load_checkpoint

    state = load_checkpoint(fold_dir / FINAL)  # weights only: a crafted checkpoint cannot run code
    settings = (state.get("init_args") or {}).get("settings", {})
    history = state.get("history") or {}
    def total(key: str) -> float | None:
        values = [float(t) for t in history.get(key, []) if t is not None and np.isfinite(t)]
        return sum(values) / 3600.0 if values else None

    epochs = int(state.get("epoch", 0))
    train_h, val_h = total("train_time"), total("val_time")
    iterations = settings.get("iterations")
    return {"epochs": epochs, "iterations_per_epoch": iterations,
            "total_iterations": epochs * int(iterations) if iterations else None,
            "planned_epochs": settings.get("num_epochs"), "val_iterations": settings.get("val_iterations"),
            "batch_size": settings.get("batch_size"), "seed": settings.get("seed"), "device": settings.get("device"),
            "num_gpus": settings.get("num_gpus"), "plans_sha1": state.get("plans_sha1"),
            "hours": train_h if train_h is not None else (total("epoch_time") or 0.0), "validation_hours": val_h,
            "hours_source": "sum of per-epoch training times in the checkpoint history (per-epoch validation "
                            "excluded, in validation_hours)" if train_h is not None else
                            "sum of per-epoch times in the checkpoint history (validation included)"}


# --- cases ---------------------------------------------------------------------------------------------
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def fold_cases(task: Task) -> list[Any]:
    """The fold's held-out cases that have both source and target in raw (others cannot be scored)."""
    from autotrans.dataset.format import discover_cases, load_dataset_json

    splits = load_json(preprocessed_root() / task.dataset / "splits_final.json")
    raw = raw_root() / task.dataset
    found = discover_cases(raw, load_dataset_json(raw), "Tr").cases
    out = []
    for case in splits[int(task.fold)]["val"]:
        files = found.get(case)
        if files is None or files.target is None or any(p is None for p in files.images):
            logger.info("%s: %s lacks a source or target in raw, not benchmarked", task.name, case)
            continue
        out.append(files)
    if not out:
        raise ConfigurationError(f"{task.name}: no held-out case with both source and target")
    return out


# --- prediction ----------------------------------------------------------------------------------------
def network_seconds(timings_file: Path) -> dict[str, float]:
    """Per-case network seconds from the inference code's ``timings.json`` (sum of ``predict_s`` over folds)."""
    if not timings_file.is_file():
        return {}
    out = {}
    for case, folds in load_json(timings_file).items():
        if isinstance(folds, dict):
            vals = [float(t["predict_s"]) for t in folds.values() if isinstance(t, dict) and "predict_s" in t]
            if vals:
                out[case] = sum(vals)
    return out


def predict(task: Task, cases: list[Any]) -> dict[str, Any]:
    """Predict the held-out cases with ``predict_folder`` (the ``autotrans_predict`` chain), timed."""
    from autotrans.inference import Predictor, PredictorSettings, load_model, predict_folder
    from autotrans.inference.models import ModelSpec

    g = task.grid
    marker = task.folder / "inference.json"
    if marker.is_file():
        return load_json(marker)
    in_dir, out_dir = task.folder / "input", task.folder / "predictions"
    for d in (in_dir, out_dir):
        shutil.rmtree(d, ignore_errors=True)
    for c in cases:
        for i, img in enumerate(c.images):
            _link(img, in_dir / f"{c.case_id}_{i:04d}{img.name[len(c.case_id) + 5:]}")
    spec = ModelSpec(results_root() / task.dataset / task.model_key, task.dataset, task.model, g.plans_name,
                     g.configuration)
    overrides = {"sampling_steps": g.steps} if g.steps is not None else None
    predictor = Predictor(load_model(spec, [task.fold], FINAL, g.device, overrides),
                          PredictorSettings(device=g.device, tta=g.tta))
    start = time.perf_counter()
    predict_folder(predictor, in_dir, out_dir, num_processes_preprocessing=0, num_processes_export=0)
    total = time.perf_counter() - start
    net = network_seconds(out_dir / "timings.json")
    record = {"cases": [c.case_id for c in cases], "total_s": total, "seconds_per_volume": total / len(cases),
              "network_seconds_per_volume": float(np.mean(list(net.values()))) if net else None,
              "per_case_network_s": net, "device": g.device, "mirror_tta": g.tta,
              "note": "seconds_per_volume: wall clock of predict_folder (read, preprocess, network, export, write) "
                      "divided by the cases; network_seconds_per_volume: from the folder's timings.json"}
    save_json(record, marker)
    return record


# --- evaluation ----------------------------------------------------------------------------------------
def _reference_folder(task: Task, cases: list[Any], plans: Any) -> Path:
    """References in the unit predictions are exported in: HU/SUV as raw; MR in the plan's output scale
    (``raw_to_output_scale`` with each case's own percentile parameters, unclipped, as the training's final
    validation scores it)."""
    from autotrans.io import read_image, write_image
    from autotrans.preprocessing.store import PreprocessedCase

    ref = task.folder / "reference"
    norm = plans.target_normalization
    data_dir = preprocessed_root() / task.dataset / plans.configuration(task.grid.configuration).data_identifier
    for c in cases:
        dst = ref / c.target.name
        if not norm.per_case:
            _link(c.target, dst)
            continue
        arr, geo = read_image(c.target)
        params = PreprocessedCase(data_dir, c.case_id).properties["target_normalization_params"]
        write_image(norm.raw_to_output_scale(arr, params), geo, dst)
    return ref


def evaluate(task: Task, cases: list[Any]) -> dict[str, Any]:
    """Autotrans standard on every held-out case; lesion level on the cases that have lesion maps."""
    from autotrans.evaluation.folders import evaluate_folders
    from autotrans.planning.plans import Plans
    from autotrans.training.validation import evaluation_range

    out_json = task.folder / "evaluation.json"
    if out_json.is_file():
        return load_json(out_json)
    plans = Plans.load(preprocessed_root() / task.dataset / f"{task.grid.plans_name}.json")
    ref = _reference_folder(task, cases, plans)
    pred = task.folder / "predictions"
    masks = None
    if all(c.mask is not None for c in cases):
        masks = task.folder / "masks"
        for c in cases:
            _link(c.mask, masks / c.mask.name)
    kw = {"value_range": evaluation_range(plans), "range_source": "plan"}
    with_lesions = [c for c in cases if c.lesions is not None]
    if with_lesions:
        sub = task.folder / "lesion_eval"
        for c in with_lesions:
            _link(ref / c.target.name, sub / "reference" / c.target.name)
            _link(pred / c.target.name, sub / "predictions" / c.target.name)
            _link(c.lesions, sub / "lesions" / c.lesions.name)
            if masks is not None:
                _link(c.mask, sub / "masks" / c.mask.name)
        evaluate_folders(sub / "reference", sub / "predictions", sub / "masks" if masks is not None else None,
                         sub / "lesions", plans.target_modality, "autotrans", task.folder / "evaluation_lesions.json",
                         **kw)
    return evaluate_folders(ref, pred, masks, None, plans.target_modality, "autotrans", out_json, **kw)


def evaluate_dose(task: Task, plans: Any) -> dict[str, Any] | None:
    """Dose of the task's predictions (CT targets, ``--dose``): plans optimised once per case under the grid's
    ``dose_plans/`` and reused by every model, so each model's synthetic CT meets exactly the same beams."""
    if not task.grid.dose or plans.target_modality.upper() != "CT":
        return None
    out_json = task.folder / "dose.json"
    if out_json.is_file():
        return load_json(out_json)
    from autotrans.dose.evaluate import evaluate_dose as run_dose

    masks = task.folder / "masks"
    return run_dose(task.folder / "reference", task.folder / "predictions", out_json, task.grid.dose,
                    mask=masks if masks.is_dir() else None, settings={"dose_grid_mm": task.grid.dose_grid_mm},
                    cache_dir=task.grid.output / "dose_plans" / task.dataset)


def evaluate_segmentation(task: Task, plans: Any) -> dict[str, Any] | None:
    """Segmentation consistency of the task's predictions (``--segmenter``): the segmenter runs on each reference
    (cached under the grid's ``segmentation/``, shared by every model) and on each prediction. The result file
    has an evaluation result's shape ("cases" of rankable metrics), so the report ranks models on it."""
    if not task.grid.segmenter:
        return None
    out_json = task.folder / "segmentation.json"
    if out_json.is_file():
        return load_json(out_json)
    from autotrans.evaluation.folders import pair_cases, summarize, write_results
    from autotrans.evaluation.segmentation import make_segmenter, segmentation_consistency

    seg = make_segmenter(task.grid.segmenter, device=task.grid.device, modality=plans.target_modality,
                         use_mirroring=task.grid.tta)
    pairs = pair_cases(task.folder / "reference", task.folder / "predictions")
    section = segmentation_consistency(pairs, seg, task.grid.output / "segmentation" / task.dataset,
                                       f"{task.model_key}_fold_{task.fold}")
    cases = {case: {"seg_dice_mean": section["case_mean"][case]["dice"],
                    "seg_hd95_mean": section["case_mean"][case]["hd95"],
                    **{f"seg_{m}_{label}": row[m] for label, row in labels.items() for m in ("dice", "hd95")}}
             for case, labels in section["cases"].items()}
    names = list(next(iter(cases.values())))
    result = {"standard": "segmentation", "modality": plans.target_modality, "cases": cases,
              "aggregate": {k: summarize([c[k] for c in cases.values()]) for k in names}, "segmentation": section}
    write_results(result, out_json)
    return result


def clinical_evaluations(task: Task, plans: Any) -> dict[str, str | None]:
    """The optional evaluations beyond image metrics (dose, segmentation consistency), for trained models and
    baselines alike; returns the ``result.json`` entries naming their files (None: not configured or not
    applicable)."""
    return {"dose": "dose.json" if evaluate_dose(task, plans) is not None else None,
            "segmentation": "segmentation.json" if evaluate_segmentation(task, plans) is not None else None}


# --- one task, the grid --------------------------------------------------------------------------------
def run_task(task: Task) -> dict[str, Any]:
    """Train, predict, evaluate one task (each stage skipped when done); write and return ``result.json``."""
    if task.finished:
        logger.info("%s: finished earlier, skipped", task.name)
        return load_json(task.result_file)
    from autotrans.baselines import is_baseline

    if is_baseline(task.model):  # fit on the fold's training cases instead of training; same predict/evaluate
        from autotrans.benchmark.baselines import run_baseline_task

        return run_baseline_task(task)
    task.folder.mkdir(parents=True, exist_ok=True)
    train(task)
    cases = fold_cases(task)
    inference = predict(task, cases)
    evaluation = evaluate(task, cases)
    from autotrans.families.base import get_family
    from autotrans.planning.plans import Plans

    g = task.grid
    plans = Plans.load(preprocessed_root() / task.dataset / f"{g.plans_name}.json")
    extra = clinical_evaluations(task, plans)
    training = checkpoint_record(task.results_fold_dir)
    rec_file = task.folder / "training.json"
    training["wall_s_benchmark"] = load_json(rec_file)["wall_s"] if rec_file.is_file() else None
    from autotrans.results import model_folder_name

    for stage, _ in get_family(task.model).dependencies:  # the fold's shared stages, each with its own hours
        folder = results_root() / task.dataset / model_folder_name(stage, g.plans_name, g.configuration)
        if (folder / f"fold_{task.fold}" / FINAL).is_file():
            training.setdefault("stages", {})[stage] = checkpoint_record(folder / f"fold_{task.fold}")
    result = {
        "dataset": task.dataset, "model": task.model, "fold": task.fold, "configuration": g.configuration,
        "plans_name": g.plans_name, "modality": plans.target_modality,
        "source_modalities": list(plans.source_modalities), "cases": [c.case_id for c in cases],
        "files": {c.case_id: {"source": str(c.images[0]), "reference": f"reference/{c.target.name}",
                              "prediction": f"predictions/{c.target.name}",
                              "mask": str(c.mask) if c.mask else None,
                              "lesions": str(c.lesions) if c.lesions else None} for c in cases},
        "evaluation": "evaluation.json",
        "evaluation_lesions": "evaluation_lesions.json" if (task.folder / "evaluation_lesions.json").is_file() else None,
        "aggregate": evaluation.get("aggregate", {}),
        **extra,
        "training": training, "inference": inference,
    }
    save_json(result, task.result_file)
    return result


def run_grid(grid: GridSpec) -> list[tuple[str, str]]:
    """Prepare each dataset, then run every task in order; returns the failed tasks as ``(task, error)``.

    A failing task is logged with its traceback and the grid goes on: one broken model must not cost the
    other cells of a long grid (rerunning the command retries only what did not finish).
    """
    grid.output.mkdir(parents=True, exist_ok=True)
    todo = [t for t in grid.tasks() if not t.finished]
    logger.info("benchmark grid: %d dataset(s) x %d model(s) x %d fold(s) = %d task(s), %d to run, output %s",
                len(grid.datasets), len(grid.models), len(grid.folds), len(grid.tasks()), len(todo), grid.output)
    for d in sorted({t.dataset for t in todo}):
        prepare_dataset(grid, d)
    failed = []
    for task in tqdm(grid.tasks(), desc="benchmark", unit="task"):
        try:
            run_task(task)
        except Exception as e:  # noqa: BLE001 - reported per task, see docstring
            logger.exception("%s failed: %s", task.name, e)
            failed.append((task.name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    return failed


def collect(grid: GridSpec) -> list[dict[str, Any]]:
    """The results of the grid's finished tasks (the report is written from whatever finished)."""
    return [load_json(t.result_file) for t in grid.tasks() if t.finished]
