"""``export_model``: one trained model folder (and, if asked, the models it builds on) to a zip."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

import autotrans
import autotrans.families  # noqa: F401  (registers the shipped families: checkpoints name theirs)
from autotrans.errors import ConfigurationError
from autotrans.families.base import get_family
from autotrans.inference.models import DEFAULT_CHECKPOINT, ModelSpec, select_model
from autotrans.paths import results_root
from autotrans.planning.planner import DEFAULT_PLANS_NAME
from autotrans.planning.plans import Plans
from autotrans.results import CHECKPOINT_KEYS, load_checkpoint, parse_model_folder_name
from autotrans.sharing.card import write_model_card
from autotrans.sharing.layout import (_CHECKPOINT_RE, CARD, CARD_KEYS, FORMAT, FORMAT_VERSION, KEEP_KEYS, MANIFEST,
                                      FoldRecord, _sha256, check_member)
from autotrans.utils.files import atomic_path, load_json

logger = logging.getLogger(__name__)


def export_folds(spec: ModelSpec, folds: list[str] | None, checkpoints: list[str]) -> list[str]:
    """Requested folds, each checked to hold every requested checkpoint; default: every fold that does."""
    have = {chk: set(spec.folds(chk)) for chk in checkpoints}
    common = [f for f in spec.folds(checkpoints[0]) if all(f in h for h in have.values())]
    if folds:
        missing = [(f, [c for c in checkpoints if f not in have[c]]) for f in folds]
        missing = [(f, cs) for f, cs in missing if cs]
        if missing:
            what = "; ".join(f"fold {f} has no {', '.join(cs)}" for f, cs in missing)
            existing = "; ".join(f"{c}: folds {', '.join(sorted(have[c])) or 'none'}" for c in checkpoints)
            raise ConfigurationError(f"{spec.folder}: {what} (existing {existing})")
        return list(dict.fromkeys(folds))
    if not common:
        found = sorted({p.name for p in spec.folder.glob("fold_*/*.pth")})
        raise ConfigurationError(f"{spec.folder}: no fold holds {', '.join(checkpoints)} (checkpoints there: "
                                 f"{', '.join(found) or 'none'}; pick one with -chk)")
    return common


def _relative_dependencies(state: dict[str, Any], root: Path) -> list[Path]:
    """Rewrite the dependency paths in ``state``'s overrides (absolute, into ``root``) relative to the root, so
    they mean the same in whichever results root installs the model; returns the absolute paths."""
    try:
        deps = get_family(state["family"]).dependencies
    except ConfigurationError:
        return []
    found = []
    overrides = dict(state.get("overrides") or {})
    for _model, key in deps:
        value = overrides.get(key)
        if not value or not Path(value).is_absolute():
            continue
        try:
            rel = Path(value).resolve().relative_to(root.resolve())
        except ValueError:
            logger.warning("%s=%s lies outside %s: kept as it is in the export", key, value, root)
            continue
        overrides[key] = rel.as_posix()
        found.append(Path(value))
    state["overrides"] = overrides
    return found


def _scrub_pretrained_path(state: dict[str, Any]) -> None:
    """The run settings keep ``-pretrained_weights`` as given (a local path): the export keeps its file name."""
    init = state.get("init_args")
    settings = (init or {}).get("settings")
    if isinstance(settings, dict) and settings.get("pretrained_weights"):
        state["init_args"] = {**init, "settings": {**settings,
                                                   "pretrained_weights": Path(settings["pretrained_weights"]).name}}


def _stripped(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in (*CHECKPOINT_KEYS, *KEEP_KEYS) if k in state}


def _collect_fold(spec: ModelSpec, plans: Plans, fold: str, checkpoints: list[str]) -> FoldRecord:
    fold_dir = spec.folder / f"fold_{fold}"
    rec = FoldRecord(fold)
    for chk in checkpoints:
        state = load_checkpoint(fold_dir / chk, plans.data)  # weights only; refuses foreign/corrupt files
        if state["configuration"] != spec.configuration:
            raise ConfigurationError(f"{fold_dir / chk}: a checkpoint of configuration {state['configuration']!r}, "
                                     f"not {spec.configuration!r}")
        rec.states[chk] = state
    for name, attr in (("validation/summary.json", "summary"), ("debug.json", "debug")):
        try:
            setattr(rec, attr, load_json(fold_dir / name) if (fold_dir / name).is_file() else None)
        except ValueError:
            logger.warning("%s: unreadable JSON, not used", fold_dir / name)
    rec.runs = len(list(fold_dir.glob("training_log_*.txt")))
    return rec


def export_model(dataset: str, configuration: str, model: str, output: str | os.PathLike,
                 plans_name: str = DEFAULT_PLANS_NAME, folds: list[str] | None = None,
                 checkpoints: list[str] | None = None, full_checkpoints: bool = False,
                 include_dependencies: bool = False) -> Path:
    """Write one trained model (and, if asked, the models it builds on) to the zip ``output``; returns it."""
    checkpoints = list(dict.fromkeys(checkpoints or [DEFAULT_CHECKPOINT]))
    for chk in checkpoints:
        if not _CHECKPOINT_RE.match(chk):
            raise ConfigurationError(f"-chk {chk}: expected a checkpoint file name such as {DEFAULT_CHECKPOINT}")
    output = Path(output)
    if output.is_dir():
        raise ConfigurationError(f"-o {output}: a folder; give the zip file to write, e.g. {output / 'model.zip'}")
    spec = select_model(dataset, configuration, model, plans_name)
    root = results_root()
    chosen = export_folds(spec, folds, checkpoints)
    todo = [(spec, chosen, checkpoints)]
    exported_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    files: dict[str, dict[str, Any]] = {}
    models: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="autotrans_export_") as tmp_name:
        tmp = Path(tmp_name)
        with atomic_path(output, suffix=".zip") as zip_tmp, zipfile.ZipFile(zip_tmp, "w") as zf:
            def add(src: Path, rel: str, compress: bool) -> None:
                check_member(rel)  # what install will accept, checked at the source
                zf.write(src, rel, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
                files[rel] = {"sha256": _sha256(src), "bytes": src.stat().st_size}

            done: set[Path] = set()
            while todo:
                s, fs, chks = todo.pop(0)
                if s.folder in done:
                    continue
                done.add(s.folder)
                deps = _export_one(s, fs, chks, root, tmp, add, full_checkpoints, exported_at, output.name)
                models.append({"folder": f"{s.dataset}/{s.folder.name}", "model": s.model, "plans": s.plans_name,
                               "configuration": s.configuration, "folds": fs, "checkpoints": chks})
                if include_dependencies:
                    todo.extend(_dependency_specs(deps, root))
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "autotrans_version": autotrans.__version__,
                        "torch_version": torch.__version__, "exported": exported_at,
                        "stripped_checkpoints": not full_checkpoints, "models": models, "files": files}
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n", zipfile.ZIP_DEFLATED)
    logger.info("exported %s (folds %s, %s) to %s: %d file(s)", ", ".join(m["folder"] for m in models),
                ", ".join(chosen), ", ".join(checkpoints), output, len(files))
    return output


def _dependency_specs(deps: list[Path], root: Path) -> list[tuple[ModelSpec, list[str], list[str]]]:
    """The model folders of the dependency checkpoints ``deps`` (``.../<model folder>/fold_F/<checkpoint>``)."""
    grouped: dict[tuple[Path, str], list[str]] = {}
    for path in deps:
        if not path.is_file():
            raise ConfigurationError(f"{path}: this model's dependency checkpoint is missing, so it cannot be "
                                     "included (export without --include_dependencies: predicting does not need it)")
        fold = path.parent.name[len("fold_"):]
        grouped.setdefault((path.parent.parent, path.name), []).append(fold)
    out = []
    for (folder, chk), folds in grouped.items():
        parsed = parse_model_folder_name(folder.name)
        if parsed is None or folder.parent.parent.resolve() != root.resolve():
            raise ConfigurationError(f"{folder}: a dependency outside the results root's layout, cannot be exported")
        out.append((ModelSpec(folder, folder.parent.name, *parsed), sorted(set(folds)), [chk]))
    return out


def _export_one(spec: ModelSpec, folds: list[str], checkpoints: list[str], root: Path, tmp: Path, add: Any,
                full_checkpoints: bool, exported_at: str, zip_name: str = "model.zip") -> list[Path]:
    """Add one model folder to the zip; returns the dependency checkpoints its checkpoints name."""
    for name in ("plans.json", "dataset.json"):
        if not (spec.folder / name).is_file():
            raise ConfigurationError(f"{spec.folder}: {name} missing (an incomplete results folder?)")
    plans = Plans.load(spec.folder / "plans.json")
    dataset_json = load_json(spec.folder / "dataset.json")
    base = f"{spec.dataset}/{spec.folder.name}"
    records: list[FoldRecord] = []
    deps: list[Path] = []
    for fold in folds:  # one fold's checkpoints in memory at a time
        rec = _collect_fold(spec, plans, fold, checkpoints)
        records.append(rec)
        fold_dir = spec.folder / f"fold_{rec.fold}"
        for chk, state in rec.states.items():
            out = dict(state) if full_checkpoints else _stripped(state)
            deps.extend(_relative_dependencies(out, root))
            _scrub_pretrained_path(out)
            staged = tmp / f"{spec.folder.name}_{rec.fold}_{chk}"
            torch.save(out, staged)
            add(staged, f"{base}/fold_{rec.fold}/{chk}", compress=False)
            staged.unlink()
            rec.states[chk] = {k: v for k, v in out.items() if k in CARD_KEYS}  # the weights are written: let go
        for name, compress in (("progress.png", False), ("validation/summary.json", True)):
            if (fold_dir / name).is_file() and (name != "validation/summary.json" or rec.summary is not None):
                add(fold_dir / name, f"{base}/fold_{rec.fold}/{name}", compress)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (spec.folder / name).is_file():
            add(spec.folder / name, f"{base}/{name}", compress=True)
    card = tmp / CARD
    card.write_text(write_model_card(spec, plans, dataset_json, records, checkpoints, full_checkpoints,
                                     exported_at, zip_name), encoding="utf-8")
    add(card, f"{base}/{CARD}", compress=True)
    return deps


