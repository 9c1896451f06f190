"""Python API behind the plan/preprocess commands: folders, idempotency, re-planning rules."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from autotrans.dataset.format import CaseFiles, DatasetJson, load_dataset_json, save_dataset_json
from autotrans.dataset.integrity import discover_and_check
from autotrans.dataset.splits import ensure_splits
from autotrans.errors import ConfigurationError
from autotrans.paths import preprocessed_root, raw_root, resolve_dataset
from autotrans.planning.fingerprint import extract_fingerprint
from autotrans.planning.planner import DEFAULT_PLANS_NAME, PlannerOptions, merge_user_configurations, plan_experiment
from autotrans.planning.plans import Plans
from autotrans.preprocessing.preprocessor import preprocess_dataset
from autotrans.utils.files import load_json, save_json

logger = logging.getLogger(__name__)


def _files_signature(cases: dict[str, CaseFiles]) -> str:
    """Changes when any training file is added, removed, resized or touched: the fingerprint is then redone."""
    h = hashlib.sha1()
    for case in sorted(cases):
        for label, path in cases[case].all_files():
            st = path.stat()
            h.update(f"{case}|{label}|{path.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


class DatasetFolders:
    """Where one dataset lives in the three roots."""

    def __init__(self, dataset: str | int) -> None:
        self.name = resolve_dataset(dataset)
        self.raw = raw_root() / self.name
        self.preprocessed = preprocessed_root() / self.name
        if not self.raw.is_dir():
            raise ConfigurationError(f"raw dataset folder {self.raw} does not exist")

    def plans_file(self, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
        return self.preprocessed / f"{plans_name}.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.preprocessed / "dataset_fingerprint.json"


def _checked(folders: DatasetFolders) -> tuple[DatasetJson, dict[str, CaseFiles]]:
    dj = load_dataset_json(folders.raw)
    splits = discover_and_check(folders.raw, dj)
    return dj, splits["Tr"]


def extract_fingerprint_step(dataset: str | int, num_processes: int = 2, clean: bool = False) -> Path:
    """Integrity check + fingerprint. Skips when the training files are unchanged since the last run."""
    folders = DatasetFolders(dataset)
    dj, cases = _checked(folders)
    signature = _files_signature(cases)
    fp_file = folders.fingerprint_file
    if fp_file.exists() and not clean:
        try:
            if load_json(fp_file).get("files_signature") == signature:
                logger.info("%s: fingerprint is up to date, not recomputed (use --clean to force)", folders.name)
                return fp_file
        except ValueError:
            pass
    fingerprint = extract_fingerprint(cases, dj, num_processes)  # raises before anything is written
    fingerprint["files_signature"] = signature
    folders.preprocessed.mkdir(parents=True, exist_ok=True)
    save_dataset_json(dj, folders.preprocessed)
    save_json(fingerprint, fp_file)
    logger.info("%s: fingerprint written to %s", folders.name, fp_file)
    return fp_file


def plan_step(dataset: str | int, options: PlannerOptions = PlannerOptions()) -> Path:
    """Write ``<plans_name>.json``, keeping user-added configurations of an existing file."""
    folders = DatasetFolders(dataset)
    if not folders.fingerprint_file.exists():
        raise ConfigurationError(f"{folders.name}: no fingerprint yet; run autotrans_extract_fingerprint -d {dataset} first")
    dj = load_dataset_json(folders.raw)
    fingerprint = load_json(folders.fingerprint_file)
    plans = plan_experiment(fingerprint, dj, folders.name, options)
    plans_file = folders.plans_file(options.plans_name)
    old = load_json(plans_file) if plans_file.exists() else None
    plans = merge_user_configurations(plans, old)
    save_json(plans, plans_file)
    cfg = plans["configurations"]["3d_fullres"]
    logger.info("%s: 3d_fullres spacing %s patch %s batch %d%s", folders.name, cfg["spacing"], cfg["patch_size"],
                cfg["batch_size"], "; 3d_lowres added" if "3d_lowres" in plans["configurations"] else "")
    return plans_file


def preprocess_step(dataset: str | int, configurations: list[str] | None = None, num_processes: int = 2,
                    plans_name: str = DEFAULT_PLANS_NAME) -> dict[str, Any]:
    """Preprocess the training cases for each configuration and write the split file."""
    folders = DatasetFolders(dataset)
    dj, cases = _checked(folders)
    plans = Plans.load(folders.plans_file(plans_name))
    fingerprint = load_json(folders.fingerprint_file) if folders.fingerprint_file.exists() else {}
    if fingerprint.get("files_signature") != _files_signature(cases):
        raise ConfigurationError(f"{folders.name}: training files changed since the fingerprint; rerun "
                                 f"autotrans_plan_and_preprocess -d {dataset} (or autotrans_extract_fingerprint)")
    wanted = configurations or [c for c in ("3d_fullres", "3d_lowres") if c in plans.configuration_names]
    done: dict[str, Any] = {}
    for name in wanted:
        cfg = plans.configuration(name)
        out_dir = folders.preprocessed / cfg.data_identifier
        done[name] = preprocess_dataset(cases, dj, plans, name, out_dir, num_processes)
    ensure_splits(folders.preprocessed, folders.raw, sorted(cases))
    return done


def plan_and_preprocess(dataset: str | int, configurations: list[str] | None = None, num_processes: int = 2,
                        options: PlannerOptions = PlannerOptions(), no_pp: bool = False, clean: bool = False) -> None:
    extract_fingerprint_step(dataset, num_processes, clean)
    plan_step(dataset, options)
    if not no_pp:
        preprocess_step(dataset, configurations, num_processes, options.plans_name)
