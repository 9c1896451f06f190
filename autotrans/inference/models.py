"""Finding, choosing and loading trained models from ``$autotrans_results`` (read-only: inference trains nothing).

A model folder is self-contained (plans.json, dataset.json, dataset_fingerprint.json, fold_F/checkpoint),
so prediction needs neither the raw nor the preprocessed data. The checkpoint keys read here:

- ``family``, ``configuration``, ``plans_sha1``, ``overrides``, ``networks`` (see ``autotrans.results``);
- ``mirror_axes`` (optional, top level, or inside ``overrides``): spatial axes (0, 1, 2 of the preprocessed,
  transposed grid) the model was trained to be mirror-invariant on. Absent or empty: no mirror TTA, because
  averaging flips of a model that never saw flipped data blurs its output instead of denoising it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import autotrans.families  # noqa: F401  (registers the families shipped with autotrans)
from autotrans.errors import ConfigurationError
from autotrans.families.base import Family, get_family
from autotrans.paths import parse_dataset_folder_name, results_root
from autotrans.planning.plans import Configuration, Plans
from autotrans.results import load_checkpoint, parse_model_folder_name
from autotrans.utils.files import load_json

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ModelSpec:
    """One trained model folder ``DatasetXXX_Name/<model>__<plans>__<configuration>``."""

    folder: Path
    dataset: str
    model: str
    plans_name: str
    configuration: str

    def folds(self, checkpoint: str = DEFAULT_CHECKPOINT) -> list[str]:
        """Fold names (``"0"``, ``"1"``, ..., ``"all"``) that hold ``checkpoint``."""
        found = [p.parent.name[len("fold_"):] for p in self.folder.glob(f"fold_*/{checkpoint}")]
        return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))

    def flags(self) -> str:
        return f"-d {self.dataset} -c {self.configuration} -m {self.model} -p {self.plans_name}"


def find_models(root: Path | None = None) -> list[ModelSpec]:
    """Every model folder under the results root that holds at least one checkpoint of any kind."""
    root = results_root() if root is None else root
    specs = []
    if not root.is_dir():
        return specs
    for ds in sorted(root.iterdir()):
        if not ds.is_dir() or parse_dataset_folder_name(ds.name) is None:
            continue
        for mf in sorted(ds.iterdir()):
            parsed = parse_model_folder_name(mf.name)
            if parsed and mf.is_dir() and any(mf.glob("fold_*/*.pth")):
                specs.append(ModelSpec(mf, ds.name, *parsed))
    return specs


def _matches(spec: ModelSpec, dataset: str | None, configuration: str | None, model: str | None,
             plans_name: str | None) -> bool:
    if dataset is not None:
        parsed = parse_dataset_folder_name(spec.dataset)
        ok = spec.dataset == dataset or (parsed is not None and (
            (dataset.isdigit() and int(dataset) == parsed[0]) or dataset == parsed[1]))
        if not ok:
            return False
    return all(want is None or want == have for want, have in (
        (configuration, spec.configuration), (model, spec.model), (plans_name, spec.plans_name)))


def select_model(dataset: str | None = None, configuration: str | None = None, model: str | None = None,
                 plans_name: str | None = None) -> ModelSpec:
    """The one trained model matching the given flags; otherwise a one-line error naming the candidates."""
    root = results_root()
    all_specs = find_models(root)
    specs = [s for s in all_specs if _matches(s, dataset, configuration, model, plans_name)]
    if len(specs) == 1:
        return specs[0]
    given = " ".join(f"{k} {v}" for k, v in (("-d", dataset), ("-c", configuration), ("-m", model),
                                            ("-p", plans_name)) if v is not None)
    if not all_specs:
        raise ConfigurationError(f"no trained model in {root} (train one with autotrans_train first)")
    listing = "; ".join(s.flags() for s in all_specs)
    if not specs:
        raise ConfigurationError(f"no trained model matches {given or 'the request'} in {root}; available: {listing}")
    listing = "; ".join(s.flags() for s in specs)
    raise ConfigurationError(f"{len(specs)} trained models match{' ' + given if given else ''}; "
                             f"choose one with -d/-c/-m/-p: {listing}")


def resolve_folds(spec: ModelSpec, folds: list[str] | None, checkpoint: str = DEFAULT_CHECKPOINT) -> list[str]:
    """Requested folds, each checked to exist; default: every numbered fold with the checkpoint, else ``all``."""
    available = spec.folds(checkpoint)
    if folds:
        missing = [f for f in folds if f not in available]
        if missing:
            raise ConfigurationError(f"{spec.folder}: fold(s) {', '.join(missing)} have no {checkpoint} "
                                     f"(available: {', '.join(available) or 'none'})")
        return list(folds)
    numbered = [f for f in available if f.isdigit()]
    if numbered:
        return numbered
    if "all" in available:
        return ["all"]
    raise ConfigurationError(f"{spec.folder}: no fold holds {checkpoint} (use -chk to pick another checkpoint)")


@dataclass
class LoadedFold:
    """One fold's family, ready to predict, plus what inference needs to know about its training."""

    fold: str
    family: Family
    mirror_axes: tuple[int, ...]


def mirror_axes_of(ckpt: dict[str, Any]) -> tuple[int, ...]:
    """Axes the model trained with mirroring (see the module docstring for the key); empty = none."""
    axes = ckpt.get("mirror_axes", (ckpt.get("overrides") or {}).get("mirror_axes"))
    if not axes:
        return ()
    axes = tuple(int(a) for a in axes)
    if any(a not in (0, 1, 2) for a in axes):
        raise ConfigurationError(f"checkpoint mirror_axes {axes}: expected spatial axes among 0, 1, 2")
    return axes


def load_fold(spec: ModelSpec, plans: Plans, fold: str, checkpoint: str, device: torch.device,
              extra_overrides: dict[str, Any] | None = None) -> LoadedFold:
    """Build the checkpoint's family on ``device`` and load its weights (overrides: the run's, then ours)."""
    path = spec.folder / f"fold_{fold}" / checkpoint
    ckpt = load_checkpoint(path, plans.data, map_location="cpu")
    if ckpt["configuration"] != spec.configuration:
        raise ConfigurationError(f"{path}: trained for configuration {ckpt['configuration']!r}, "
                                 f"but the folder is for {spec.configuration!r}")
    cls = get_family(ckpt["family"])
    if not cls.translates:
        raise ConfigurationError(f"{spec.folder.name}: {ckpt['family']} does not translate (it reconstructs); predict "
                                 "with a model trained on it")
    overrides = {**(ckpt.get("overrides") or {}), **(extra_overrides or {})}
    family = cls(plans, plans.configuration(spec.configuration), overrides, device)
    family.build()
    family.load_state_dict(ckpt["networks"])
    family.eval()
    return LoadedFold(fold=fold, family=family, mirror_axes=mirror_axes_of(ckpt))


@dataclass
class LoadedModel:
    """Plans, dataset description, fingerprint and the loaded folds of one model folder."""

    spec: ModelSpec
    plans: Plans
    configuration: Configuration
    dataset_json: dict[str, Any]
    fingerprint: dict[str, Any]
    folds: list[LoadedFold]


def load_model(spec: ModelSpec, folds: list[str] | None = None, checkpoint: str = DEFAULT_CHECKPOINT,
               device: torch.device | str = "cpu", extra_overrides: dict[str, Any] | None = None) -> LoadedModel:
    """Load everything prediction needs from one model folder; every missing piece is one clear error."""
    for name in ("plans.json", "dataset.json"):
        if not (spec.folder / name).is_file():
            raise ConfigurationError(f"{spec.folder}: {name} missing (an incomplete results folder?)")
    plans = Plans.load(spec.folder / "plans.json")
    fp_file = spec.folder / "dataset_fingerprint.json"
    fingerprint = load_json(fp_file) if fp_file.is_file() else {}
    chosen = resolve_folds(spec, folds, checkpoint)
    device = torch.device(device)
    loaded = [load_fold(spec, plans, f, checkpoint, device, extra_overrides) for f in chosen]
    logger.info("model %s: folds %s of %s on %s", spec.folder.name, ", ".join(chosen), checkpoint, device)
    return LoadedModel(spec, plans, plans.configuration(spec.configuration), load_json(spec.folder / "dataset.json"),
                       fingerprint, loaded)
