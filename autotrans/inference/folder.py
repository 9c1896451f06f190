"""Folder prediction: up-front checks, preprocessing and export in background workers, the network in between.

Reading + resampling a case and resampling + compressing its prediction take about as long as the sliding
window on a GPU, so both run in worker processes (nnU-Net's layout) while the main process only predicts.
Workers never touch torch, which makes ``fork`` safe even after the model is loaded.

``timings.json`` in the output folder records, per case and fold, the seconds the network part took
(``predict_s``; latent families add ``encode_s``, ``sample_s``, ``decode_s``, ``steps``, ``tiles``), plus the
top-level ``device`` and ``model``. It is rewritten atomically after every case whose prediction was written
(a failed case gets no new entry) and merged with an existing file, so ``--continue_prediction`` keeps the
timings of cases predicted earlier.

Before any work: ``-o`` must not be ``-i`` (nor an existing file), and no output may be one of the input files.
Hidden temporaries that a killed run left in ``-o`` are removed first. Before each case its tile count is
logged, with an estimate once the rate is measured, and a warning for a workload that will take very long.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import ExitStack
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any, Callable, Iterator


from autotrans.errors import ConfigurationError, DatasetError
from autotrans.inference.cases import InputCase, check_headers, discover_inputs, load_and_preprocess
from autotrans.inference.predictor import Predictor, export_ensemble, output_paths
from autotrans.inference.windows import format_duration
from autotrans.io import Geometry, write_image
from autotrans.planning.plans import Plans
from autotrans.utils.files import clean_stale_temps, load_json, save_json
from autotrans.utils.parallel import pool_context
from autotrans.utils.progress import progress

logger = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
_TIMINGS_META = ("device", "model")
#: a case needing more tile predictions than this (tiles x mirror passes x folds) is warned about
LARGE_WORKLOAD_TILES = 20_000
#: a case whose resampled volume holds this many times the voxels of its (cropped) input is warned about
LARGE_RESAMPLING_FACTOR = 10.0


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name one folder (``samefile`` when both exist, else the resolved paths)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the later steps report it
        return False


def check_output_target(in_dir: Path, out_dir: Path) -> None:
    """Refuse an ``-o`` that is an existing file or the input folder itself (before anything is loaded)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"output folder {out_dir} is an existing file, not a folder")
    if _same_folder(in_dir, out_dir):
        raise ConfigurationError(f"output folder {out_dir} is the input folder {in_dir}: a prediction "
                                 f"{{CASE}}{{ending}} could replace an input {{CASE}}_XXXX{{ending}}; choose another -o")


def check_no_input_overwritten(cases: list[InputCase], todo: list[InputCase], out_dir: Path,
                               with_std: bool) -> None:
    """No output about to be written may be one of the input files (a link, or -o reached another way)."""
    inputs: dict[tuple[int, int], Path] = {}
    for c in cases:
        for f in c.files:
            st = f.stat()
            inputs[(st.st_dev, st.st_ino)] = f
    problems = []
    for c in todo:
        pred, std = output_paths(out_dir, c.case_id, c.ending)
        for out in (std, pred) if with_std else (pred,):
            try:
                st = out.stat()
            except OSError:
                continue
            if (hit := inputs.get((st.st_dev, st.st_ino))) is not None:
                problems.append((c.case_id, f"its output {out} is the input file {hit} and would replace it; "
                                            f"choose another -o"))
    if problems:
        raise DatasetError(problems, header="outputs that would overwrite inputs")


def check_output_folder(out_dir: Path) -> None:
    """Fail before predicting anything when the output folder cannot be created or written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"output folder {out_dir} is an existing file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # named like our temporaries (pid inside), so a probe left by a killed run is cleaned like them
        fd, probe = tempfile.mkstemp(prefix=f".write_probe.at{os.getpid()}.", dir=out_dir)
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
    std_written = False
    try:
        pred, std = export_ensemble(preds, props, plans, cfg, invert, with_std)
        geometry = Geometry.from_dict(props["geometry"])
        if std is not None:
            write_image(std, geometry, std_path, reference=reference)
            std_written = True
        write_image(pred, geometry, pred_path, reference=reference)
    except (OSError, ValueError, RuntimeError) as e:
        if std_written:  # nothing of a failed case stays behind
            try:
                Path(std_path).unlink()
            except OSError:
                pass
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

    Raises ``DatasetError`` after the run when some cases failed; its summary names the cases that were
    written (nothing of a failed case is).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_output_target(in_dir, out_dir)
    plans, cfg = predictor.plans, predictor.configuration
    cases = discover_inputs(in_dir, len(plans.source_modalities))
    check_headers(cases)
    with_std = predictor.settings.save_uncertainty
    todo = [c for c in cases if not (continue_prediction and is_finished(c, out_dir, with_std))]
    check_no_input_overwritten(cases, todo, out_dir, with_std)
    check_output_folder(out_dir)
    clean_stale_temps(out_dir)
    _warn_sub_voxel_step(predictor)
    skipped = [c.case_id for c in cases if c not in todo]
    if skipped:
        logger.info("--continue_prediction: %d case(s) already predicted, skipped", len(skipped))
    logger.info("predicting %d case(s) into %s (target unit: %s)", len(todo), out_dir, predictor.output_unit())
    failures: list[tuple[str, str]] = []
    written: list[str] = []
    tasks = [(c, plans, cfg.name, predictor.model.fingerprint) for c in todo]
    timings_path = out_dir / TIMINGS_FILE
    timings = _load_timings(timings_path) if todo else {}
    rate = _Rate()

    def finish(result: tuple[str, str | None]) -> None:
        case_id, error = result
        if error is not None:
            failures.append((case_id, error))
            return
        written.append(case_id)
        _save_timings(timings_path, timings, predictor, case_id)

    with ExitStack() as stack:
        pre_pool = _pool(stack, num_processes_preprocessing, len(todo))
        exp_pool = _pool(stack, num_processes_export, len(todo))
        pending: list[AsyncResult] = []
        for item in progress(_preprocessed(tasks, pre_pool), total=len(tasks), desc="predict", unit="case"):
            case: InputCase = item["case"]
            if "error" in item:
                failures.append((case.case_id, item["error"]))
                continue
            for w in item["warnings"]:
                logger.warning(w)
            n_tiles = announce_case(predictor, case.case_id, item["data"].shape[1:], item["properties"], rate)
            try:
                preds = predictor.predict_folds(item["data"], case.case_id)
            except (RuntimeError, ValueError) as e:  # torch errors (out of memory, ...) fail this case only
                logger.debug("%s: prediction failed", case.case_id, exc_info=True)
                failures.append((case.case_id, f"prediction failed: {e}"))
                continue
            rate.add(n_tiles, sum(t.get("predict_s", 0.0) for t in predictor.timings.get(case.case_id, {}).values()))
            task = (case.case_id, preds, item["properties"], plans, cfg, predictor.invert, with_std,
                    *output_paths(out_dir, case.case_id, case.ending), case.files[0])
            if exp_pool is None:
                finish(export_and_write(task))
            else:
                pending.append(exp_pool.apply_async(export_and_write, (task,)))
                pending = _drain(pending, finish, keep=2 * num_processes_export)
        _drain(pending, finish, keep=0)
    order = {c.case_id: i for i, c in enumerate(todo)}
    written.sort(key=order.__getitem__)
    if failures:
        failures.sort(key=lambda f: order.get(f[0], len(order)))
        raise DatasetError(failures, header=f"{len(failures)} of {len(todo)} case(s) failed",
                           summary=failure_summary([f[0] for f in failures], written, len(todo), out_dir))
    return {"predicted": written, "skipped": skipped}


def _names(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def failure_summary(failed: list[str], written: list[str], n_todo: int, out_dir: Path) -> str:
    """The line above the per-case errors: which cases failed (nothing of them written), which were written."""
    head = f"{len(failed)} of {n_todo} case(s) failed and nothing of them was written ({_names(failed)})"
    if not written:
        return f"{head}; no case was written:"
    return f"{head}; {len(written)} case(s) were written to {out_dir} ({_names(written)}):"


class _Rate:
    """Seconds per tile prediction, measured on the cases predicted so far in this run."""

    def __init__(self) -> None:
        self.tiles = 0
        self.seconds = 0.0

    def add(self, tiles: int, seconds: float) -> None:
        if tiles > 0 and seconds > 0:
            self.tiles += tiles
            self.seconds += seconds

    def estimate(self, tiles: int) -> float | None:
        return None if self.tiles == 0 else tiles * self.seconds / self.tiles


def announce_case(predictor: Predictor, case_id: str, shape: tuple[int, ...], props: dict[str, Any],
                  rate: _Rate) -> int:
    """Log one case's workload before it runs (tiles, passes, an estimate once measured); warn when huge.

    Returns the number of tile predictions (tiles x passes summed over folds).
    """
    per_pass, passes, total = predictor.workload(shape)
    voxels = math.prod(int(n) for n in shape)
    before = props.get("shape_after_crop") or props.get("shape_before_crop")
    source_voxels = math.prod(int(n) for n in before) if before else 0
    n_folds = len(predictor.model.folds)
    text = (f"{case_id}: {per_pass:,} tiles x {passes} pass(es) (mirror TTA x {n_folds} fold(s)) = "
            f"{total:,} tile predictions on {'x'.join(map(str, shape))} voxels")
    if (seconds := rate.estimate(total)) is not None:
        text += f", about {format_duration(seconds)} at the measured rate"
    factor = voxels / source_voxels if source_voxels else 0.0
    reasons = []
    if factor > LARGE_RESAMPLING_FACTOR:
        reasons.append(f"resampling to the plan's spacing made {factor:.0f}x the input's "
                       f"{source_voxels:,} voxels")
    if total > LARGE_WORKLOAD_TILES:
        reasons.append(f"more than {LARGE_WORKLOAD_TILES:,} tile predictions")
    if reasons:
        logger.warning("%s; this will take very long (%s; check the input's spacing and -step_size)",
                       text, "; ".join(reasons))
    else:
        logger.info(text)
    return total


def _warn_sub_voxel_step(predictor: Predictor) -> None:
    """A step size whose stride is below one voxel cannot place more tiles than one per voxel: say so."""
    step = predictor.settings.step_size
    smallest = min(min(predictor.window_patch(f)) for f in predictor.model.folds)
    if smallest > 1 and step * smallest < 1:
        logger.warning("step_size %g is a stride of %.3g voxel(s) on a patch axis of %d: tiles are placed at "
                       "every voxel instead (the densest tiling; step_size %.3g gives the same)",
                       step, step * smallest, smallest, 1 / smallest)


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


def _drain(pending: list[AsyncResult], finish: Callable[[tuple[str, str | None]], None], keep: int
           ) -> list[AsyncResult]:
    """Wait for the oldest exports until at most ``keep`` are in flight (bounds memory on long runs)."""
    while len(pending) > keep:
        finish(pending.pop(0).get())
    return pending

