"""Python API behind the plan/preprocess commands: folders, idempotency, re-planning rules."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from autotrans.dataset.format import CaseFiles, DatasetJson, load_dataset_json, save_dataset_json
from autotrans.dataset.integrity import discover_and_check
from autotrans.dataset.splits import ensure_splits
from autotrans.dataset.units import fingerprint_unit_warnings
from autotrans.errors import ConfigurationError
from autotrans.paths import preprocessed_root, raw_root, resolve_dataset
from autotrans.planning.fingerprint import extract_fingerprint
from autotrans.planning.planner import DEFAULT_PLANS_NAME, PlannerOptions, merge_user_configurations, plan_experiment
from autotrans.planning.plans import Plans
from autotrans.preprocessing.preprocessor import preprocess_dataset
from autotrans.utils.files import ensure_writable_folder, load_json, save_json

logger = logging.getLogger(__name__)


def file_sha1(path: Path) -> str:
    """SHA-1 of a file's bytes: what a case's inputs hold, not when they were touched (size and mtime survive
    ``cp -p``, ``rsync -t`` and in-place edits that keep the size)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def case_signatures(cases: dict[str, CaseFiles]) -> dict[str, str]:
    """Per case, a hash of the content of its input files (sources, target, mask, lesion map) and their roles."""
    out = {}
    for case in sorted(cases):
        h = hashlib.sha1()
        for label, path in cases[case].all_files():
            h.update(f"{label}|{path.name}|{file_sha1(path)}\n".encode())
        out[case] = h.hexdigest()
    return out


def _files_signature(signatures: dict[str, str]) -> str:
    """Changes when any training file is added, removed or changed in content: the fingerprint is then redone."""
    h = hashlib.sha1(b"content-v1\n")
    for case in sorted(signatures):
        h.update(f"{case}|{signatures[case]}\n".encode())
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


def extract_fingerprint_step(dataset: str | int, num_processes: int = 2, clean: bool = False,
                             pair_check: bool = False) -> Path:
    """Integrity check + fingerprint. Skips when the training files are unchanged since the last run."""
    return _extract_fingerprint(dataset, num_processes, clean, pair_check)[0]


def _pair_check(folders: DatasetFolders, fingerprint: dict[str, Any], dj: DatasetJson, cases: dict[str, CaseFiles],
                num_processes: int, signatures: dict[str, str], clean: bool, previous: dict[str, Any] | None) -> bool:
    """Add the ``pair_alignment`` section (cached per case by content hash) and warn about flagged pairs.
    Returns whether the fingerprint changed."""
    from autotrans.dataset import alignment

    section = fingerprint.get("pair_alignment")
    if section is None or section.get("method", {}).get("version") != alignment.ALIGNMENT_VERSION:
        cached = None if clean else alignment.previous_results(folders.preprocessed, previous)
        section = alignment.check_pairs(cases, dj, num_processes, signatures, cached)
        fingerprint["pair_alignment"] = section
        alignment.log_flagged(section, folders.name)
        return True
    alignment.log_flagged(section, folders.name)
    return False


def _extract_fingerprint(dataset: str | int, num_processes: int, clean: bool,
                         pair_check: bool = False) -> tuple[Path, dict[str, str]]:
    folders = DatasetFolders(dataset)
    ensure_writable_folder(folders.preprocessed)  # a read-only output fails now, not after the fingerprint
    dj, cases = _checked(folders)
    signatures = case_signatures(cases)
    signature = _files_signature(signatures)
    fp_file = folders.fingerprint_file
    old: dict[str, Any] = {}
    if fp_file.exists() and not clean:
        try:
            old = load_json(fp_file)
        except ValueError:
            old = {}
        if old.get("files_signature") == signature:
            logger.info("%s: fingerprint is up to date, not recomputed (use --clean to force)", folders.name)
            if pair_check and _pair_check(folders, old, dj, cases, num_processes, signatures, clean, None):
                save_json(old, fp_file)
            return fp_file, signatures
    fingerprint = extract_fingerprint(cases, dj, num_processes)  # raises before anything is written
    fingerprint["files_signature"] = signature
    fingerprint["case_signatures"] = signatures
    if pair_check:  # after the integrity check: unreadable cases are reported by it, all together
        _pair_check(folders, fingerprint, dj, cases, num_processes, signatures, clean, old.get("pair_alignment"))
    folders.preprocessed.mkdir(parents=True, exist_ok=True)
    save_dataset_json(dj, folders.preprocessed)
    save_json(fingerprint, fp_file)
    logger.info("%s: fingerprint written to %s", folders.name, fp_file)
    return fp_file, signatures


def unit_warnings(fingerprint: dict[str, Any], dj: DatasetJson) -> list[str]:
    """CT/CBCT not in HU, PET not in SUV (the checks autotrans_predict applies to its inputs)."""
    roles = [(str(i), f"source channel {i:04d} ({c.name}, {c.modality})", c.modality)
             for i, c in enumerate(dj.source_channels)]
    roles.append(("target", f"target ({dj.target.name}, {dj.target.modality})", dj.target.modality))
    return fingerprint_unit_warnings(fingerprint, roles)


def plan_step(dataset: str | int, options: PlannerOptions = PlannerOptions()) -> Path:
    """Write ``<plans_name>.json``, keeping user-added configurations of an existing file."""
    folders = DatasetFolders(dataset)
    if not folders.fingerprint_file.exists():
        raise ConfigurationError(f"{folders.name}: no fingerprint yet; run autotrans_extract_fingerprint -d {dataset} first")
    ensure_writable_folder(folders.preprocessed)
    dj = load_dataset_json(folders.raw)
    fingerprint = load_json(folders.fingerprint_file)
    for warning in unit_warnings(fingerprint, dj):
        logger.warning("%s: %s", folders.name, warning)
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
                    plans_name: str = DEFAULT_PLANS_NAME, _signatures: dict[str, str] | None = None) -> dict[str, Any]:
    """Preprocess the training cases for each configuration and write the split file.

    A case is redone when the plan's decisions changed or when the content of its input files changed since it
    was preprocessed (``_signatures``: the per-case content hashes, when the caller has just computed them).
    """
    folders = DatasetFolders(dataset)
    ensure_writable_folder(folders.preprocessed)
    dj, cases = _checked(folders)
    plans = Plans.load(folders.plans_file(plans_name))
    fingerprint = load_json(folders.fingerprint_file) if folders.fingerprint_file.exists() else {}
    signatures = _signatures if _signatures is not None else case_signatures(cases)
    if fingerprint.get("files_signature") != _files_signature(signatures):
        raise ConfigurationError(f"{folders.name}: training files changed since the fingerprint; rerun "
                                 f"autotrans_plan_and_preprocess -d {dataset} (or autotrans_extract_fingerprint)")
    wanted = configurations or [c for c in ("3d_fullres", "3d_lowres") if c in plans.configuration_names]
    done: dict[str, Any] = {}
    for name in wanted:
        cfg = plans.configuration(name)
        out_dir = folders.preprocessed / cfg.data_identifier
        done[name] = preprocess_dataset(cases, dj, plans, name, out_dir, num_processes, input_signatures=signatures)
    ensure_splits(folders.preprocessed, folders.raw, sorted(cases))
    return done


def plan_and_preprocess(dataset: str | int, configurations: list[str] | None = None, num_processes: int = 2,
                        options: PlannerOptions = PlannerOptions(), no_pp: bool = False, clean: bool = False,
                        pair_check: bool = True) -> None:
    _, signatures = _extract_fingerprint(dataset, num_processes, clean, pair_check)
    plan_step(dataset, options)
    if not no_pp:
        preprocess_step(dataset, configurations, num_processes, options.plans_name, _signatures=signatures)
