"""Folder prediction: up-front checks, preprocessing and export in background workers, the network in between.

Reading + resampling a case and resampling + compressing its prediction take about as long as the sliding
window on a GPU, so both run in worker processes (nnU-Net's layout) while the main process only predicts.
Workers never touch torch, which makes ``fork`` safe even after the model is loaded.

``timings.json`` in the output folder records, per case and fold, the seconds the network part took
(``predict_s``; latent families add ``encode_s``, ``sample_s``, ``decode_s``, ``steps``, ``tiles``), plus the
top-level ``device`` and ``model``. It is rewritten atomically after every case and merged with an existing
file, so ``--continue_prediction`` keeps the timings of cases predicted earlier.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import ExitStack
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from autotrans.errors import ConfigurationError, DatasetError
from autotrans.inference.cases import InputCase, check_headers, discover_inputs, load_and_preprocess
from autotrans.inference.predictor import Predictor, export_ensemble, output_paths
from autotrans.io import Geometry, write_image
from autotrans.planning.plans import Plans
from autotrans.utils.files import load_json, save_json
from autotrans.utils.parallel import pool_context

logger = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
_TIMINGS_META = ("device", "model")


def check_output_folder(out_dir: Path) -> None:
    """Fail before predicting anything when the output folder cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".autotrans_write_test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigurationError(f"output folder {out_dir} is not writable ({e.strerror or e})") from None


def is_finished(case: InputCase, out_dir: Path, with_std: bool) -> bool:
    """A case is done when its prediction exists; the std map is written first, so it exists too."""
    pred, std = output_paths(out_dir, case.case_id, case.ending)
    return pred.is_file() and (std.is_file() or not with_std)


def export_and_write(task: tuple[Any, ...]) -> tuple[str, str | None]:
    """Worker entry (picklable): export the fold ensemble and write it (std first, prediction last)."""
    case_id, preds, props, plans, cfg, invert, with_std, pred_path, std_path, reference = task
    try:
        pred, std = export_ensemble(preds, props, plans, cfg, invert, with_std)
        geometry = Geometry.from_dict(props["geometry"])
        if std is not None:
            write_image(std, geometry, std_path, reference=reference)
        write_image(pred, geometry, pred_path, reference=reference)
    except (OSError, ValueError, RuntimeError) as e:
        return case_id, f"export failed: {e}"
    return case_id, None


def _preprocessed(tasks: list[tuple[InputCase, Plans, str, dict[str, Any]]], pool: Pool | None
                  ) -> Iterator[dict[str, Any]]:
    if pool is None:
        return (load_and_preprocess(t) for t in tasks)
    return pool.imap(load_and_preprocess, tasks)  # ordered; workers run ahead of the network


def predict_folder(predictor: Predictor, in_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   continue_prediction: bool = False, num_processes_preprocessing: int = 2,
                   num_processes_export: int = 2) -> dict[str, list[str]]:
    """Predict every case of ``in_dir`` into ``out_dir``; returns the cases predicted and skipped.

    Raises ``DatasetError`` after the run when some cases failed (the others are written).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    plans, cfg = predictor.plans, predictor.configuration
    cases = discover_inputs(in_dir, len(plans.source_modalities))
    check_headers(cases)
    check_output_folder(out_dir)
    with_std = predictor.settings.save_uncertainty
    todo = [c for c in cases if not (continue_prediction and is_finished(c, out_dir, with_std))]
    skipped = [c.case_id for c in cases if c not in todo]
    if skipped:
        logger.info("--continue_prediction: %d case(s) already predicted, skipped", len(skipped))
    logger.info("predicting %d case(s) into %s (target unit: %s)", len(todo), out_dir, predictor.output_unit())
    failures: list[tuple[str, str]] = []
    tasks = [(c, plans, cfg.name, predictor.model.fingerprint) for c in todo]
    timings = _load_timings(out_dir / TIMINGS_FILE) if todo else {}
    with ExitStack() as stack:
        pre_pool = _pool(stack, num_processes_preprocessing, len(todo))
        exp_pool = _pool(stack, num_processes_export, len(todo))
        pending: list[AsyncResult] = []
        for item in tqdm(_preprocessed(tasks, pre_pool), total=len(tasks), desc="predict", unit="case"):
            case: InputCase = item["case"]
            if "error" in item:
                failures.append((case.case_id, item["error"]))
                continue
            for w in item["warnings"]:
                logger.warning(w)
            preds = predictor.predict_folds(item["data"], case.case_id)
            _save_timings(out_dir / TIMINGS_FILE, timings, predictor, case.case_id)
            task = (case.case_id, preds, item["properties"], plans, cfg, predictor.invert, with_std,
                    *output_paths(out_dir, case.case_id, case.ending), case.files[0])
            if exp_pool is None:
                _record(export_and_write(task), failures)
            else:
                pending.append(exp_pool.apply_async(export_and_write, (task,)))
                pending = _drain(pending, failures, keep=2 * num_processes_export)
        _drain(pending, failures, keep=0)
    if failures:
        raise DatasetError(failures, header=f"{len(failures)} of {len(todo)} case(s) failed (the others were written)")
    return {"predicted": [c.case_id for c in todo], "skipped": skipped}


def _load_timings(path: Path) -> dict[str, Any]:
    """An earlier run's ``timings.json`` (kept and extended), or an empty dict when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        data = load_json(path)
    except (OSError, ValueError) as e:
        logger.warning("%s is unreadable (%s); starting a new one", path, e)
        return {}
    if not isinstance(data, dict):
        logger.warning("%s does not hold a JSON object; starting a new one", path)
        return {}
    return data


def _save_timings(path: Path, timings: dict[str, Any], predictor: Predictor, case_id: str) -> None:
    """Add one case's per-fold timings and rewrite the file atomically (a crash never leaves half a file)."""
    if case_id in _TIMINGS_META:
        logger.warning("case %r clashes with a top-level key of %s; its timings are not recorded", case_id, path.name)
        return
    spec = predictor.model.spec
    timings["device"] = predictor.describe_device()
    timings["model"] = f"{spec.dataset}/{spec.folder.name}"
    timings[case_id] = {fold: {k: round(v, 6) if isinstance(v, float) else v for k, v in t.items()}
                        for fold, t in predictor.timings.get(case_id, {}).items()}
    try:
        save_json(timings, path)
    except OSError as e:  # timings are a report: never fail a prediction run over them
        logger.warning("could not write %s: %s", path, e)


def _pool(stack: ExitStack, processes: int, n_cases: int) -> Pool | None:
    """A worker pool, or None (work in this process) for 0 workers or a single case."""
    if processes <= 0 or n_cases <= 1:
        return None
    return stack.enter_context(pool_context().Pool(min(processes, n_cases)))


def _record(result: tuple[str, str | None], failures: list[tuple[str, str]]) -> None:
    case_id, error = result
    if error is not None:
        failures.append((case_id, error))


def _drain(pending: list[AsyncResult], failures: list[tuple[str, str]], keep: int) -> list[AsyncResult]:
    """Wait for the oldest exports until at most ``keep`` are in flight (bounds memory on long runs)."""
    while len(pending) > keep:
        _record(pending.pop(0).get(), failures)
    return pending

