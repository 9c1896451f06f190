"""The benchmark grid: which (dataset, model, fold) tasks exist, where their outputs live, and the checks
that run before anything is written.

A task is *finished* when its ``result.json`` exists; every stage inside a task has its own marker file, so
an interrupted grid resumes at the stage it stopped in (see ``runner.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrans.errors import ConfigurationError
from autotrans.paths import preprocessed_root, raw_root, resolve_dataset, results_root
from autotrans.planning.planner import DEFAULT_PLANS_NAME, PlannerOptions
from autotrans.results import model_folder_name
from autotrans.training.settings import DEFAULT_EPOCHS, DEFAULT_ITERATIONS
from autotrans.utils.files import load_json

logger = logging.getLogger(__name__)

#: the engine's default schedule (nnU-Net's), the reference against which the report calls a run "short"
FULL_EPOCHS = DEFAULT_EPOCHS
FULL_ITERATIONS = DEFAULT_ITERATIONS


@dataclass(frozen=True)
class GridSpec:
    """A validated grid. ``datasets`` hold full ``DatasetXXX_Name`` folder names; ``None`` budgets mean the
    plan's schedule (the training engine resolves them)."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    folds: tuple[str, ...]
    output: Path
    configuration: str = "3d_fullres"
    plans_name: str = DEFAULT_PLANS_NAME
    device: str = "cuda"
    epochs: int | None = None
    iterations: int | None = None
    val_iterations: int | None = None
    num_workers: int | None = None
    seed: int | None = None
    steps: int | None = None  # sampling steps of stochastic families at prediction (None: the plan's)
    tta: bool = True  # mirror test-time augmentation (where trained with mirroring) in validation and prediction
    planner: PlannerOptions = field(default_factory=PlannerOptions)  # only for datasets not planned yet
    num_processes: int = 2
    dose: tuple[str, ...] = ()  # beam types of the dose evaluation (CT targets only; needs autotrans[dose])
    dose_grid_mm: float = 3.0
    segmenter: str | None = None  # segmentation-consistency model (nnU-Net v2 results folder or totalsegmentator)

    def tasks(self) -> list["Task"]:
        return [Task(self, d, m, f) for d in self.datasets for m in self.models for f in self.folds]


@dataclass(frozen=True)
class Task:
    """One (dataset, model, fold) cell of the grid."""

    grid: GridSpec
    dataset: str
    model: str
    fold: str

    @property
    def model_key(self) -> str:
        return model_folder_name(self.model, self.grid.plans_name, self.grid.configuration)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model_key}/fold_{self.fold}"

    @property
    def folder(self) -> Path:
        return self.grid.output / "tasks" / self.dataset / self.model_key / f"fold_{self.fold}"

    @property
    def result_file(self) -> Path:
        return self.folder / "result.json"

    @property
    def results_fold_dir(self) -> Path:
        """The training engine's fold folder (``$autotrans_results/...``), where checkpoints live."""
        return results_root() / self.dataset / self.model_key / f"fold_{self.fold}"

    @property
    def finished(self) -> bool:
        return self.result_file.is_file()


def _suggest(name: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_models(models: list[str]) -> tuple[str, ...]:
    """Registered families that translate, and the reference baselines (``autotrans.baselines``: no training,
    fitted per fold); shared stages (autoencoder, ldm_prior) are trained where needed."""
    import autotrans.families  # noqa: F401  (registers the shipped families)
    from autotrans.baselines import available_baselines, is_baseline
    from autotrans.families.base import available_families, get_family

    names = available_families() + available_baselines()
    out = []
    for m in models:
        if m not in names:
            raise ConfigurationError(f"unknown model {m!r}{_suggest(m, names)}; available: {', '.join(names)}")
        if is_baseline(m):
            if m not in out:
                out.append(m)
            continue
        if not getattr(get_family(m), "translates", True):
            raise ConfigurationError(f"model {m!r} does not translate (a shared stage, trained automatically for "
                                     "the models that build on it); leave it out of -m")
        if m not in out:
            out.append(m)
    return tuple(out)


def number_of_folds(dataset: str) -> int:
    """Folds of the dataset's split: the preprocessed split file, else a user split in raw, else what
    ``make_splits`` will create (5, or leave-one-out below 5 cases)."""
    for folder in (preprocessed_root() / dataset, raw_root() / dataset):
        split = folder / "splits_final.json"
        if split.is_file():
            try:
                return len(load_json(split))
            except ValueError:
                raise ConfigurationError(f"{split}: invalid JSON") from None
    from autotrans.dataset.format import discover_cases, load_dataset_json

    raw = raw_root() / dataset
    dj = load_dataset_json(raw)
    n = len(discover_cases(raw, dj, "Tr").cases)
    if n < 2:
        raise ConfigurationError(f"{dataset}: {n} training case(s); cross-validation needs at least 2")
    return min(5, n)


def check_folds(folds: list[str], datasets: tuple[str, ...]) -> tuple[str, ...]:
    """Numbered folds inside every dataset's split ('all' has no held-out cases, so it cannot be benchmarked)."""
    out = []
    for f in folds:
        f = str(f).strip()
        if f == "all":
            raise ConfigurationError("fold 'all' has no held-out cases to evaluate; give numbered folds (-f 0 1 2 3 4)")
        if not f.isdigit():
            raise ConfigurationError(f"fold {f!r}: expected a number such as 0")
        if str(int(f)) not in out:
            out.append(str(int(f)))
    for d in datasets:
        n = number_of_folds(d)
        bad = [f for f in out if int(f) >= n]
        if bad:
            raise ConfigurationError(f"fold {bad[0]} is out of range for {d}: it has {n} folds (0..{n - 1})")
    return tuple(out)


def check_datasets(datasets: list[str]) -> tuple[str, ...]:
    """Resolve ids/names; each needs its raw folder (plans are made from it when missing)."""
    out = []
    for d in datasets:
        name = resolve_dataset(d)
        if not (raw_root() / name).is_dir():
            raise ConfigurationError(f"dataset {d!r}: raw folder {raw_root() / name} not found")
        if name not in out:
            out.append(name)
    return tuple(out)


def check_pairing(datasets: tuple[str, ...], models: tuple[str, ...]) -> None:
    """Paired families cannot train on unpaired data: refuse the whole grid up front, not task 17 of 35."""
    from autotrans.baselines import is_baseline
    from autotrans.dataset.format import load_dataset_json
    from autotrans.families.base import get_family

    for d in datasets:
        if load_dataset_json(raw_root() / d).paired:
            continue
        for m in models:
            if is_baseline(m) or getattr(get_family(m), "paired_batches", True):
                raise ConfigurationError(f"model {m!r} needs paired data, but {d} is unpaired (use cyclegan)")


def check_budget(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < (0 if name == "val_iterations" else 1):
            raise ConfigurationError(f"--{name} {v}: must be >= {0 if name == 'val_iterations' else 1}")


def check_dose(dose: tuple[str, ...], datasets: tuple[str, ...], dose_grid_mm: float) -> None:
    """``--dose`` needs pyRadPlan and at least one dataset with a CT target; checked before anything runs."""
    if not dose:
        return
    from autotrans.dataset.format import load_dataset_json
    from autotrans.dose.engine import DoseSettings, require_pyradplan

    for m in dose:
        DoseSettings(modality=m, dose_grid_mm=dose_grid_mm)
    require_pyradplan()
    targets = {d: load_dataset_json(raw_root() / d).target.modality.upper() for d in datasets}
    if "CT" not in targets.values():
        raise ConfigurationError("--dose evaluates synthetic CT, but no dataset has a CT target ("
                                 + ", ".join(f"{d}: {t}" for d, t in targets.items()) + ")")
    for d, t in targets.items():
        if t != "CT":
            logger.warning("%s: target %s, not CT: no dose evaluation for this dataset", d, t)


def make_grid(datasets: list[str], models: list[str], folds: list[str], output: str | Path | None = None,
              **kwargs: Any) -> GridSpec:
    """Validate every input (one-line ``ConfigurationError`` on the first problem) and build the grid.

    Nothing is written here: a rejected grid leaves the disk as it was.
    """
    if not datasets or not models or not folds:
        raise ConfigurationError("need at least one dataset (-d), model (-m) and fold (-f)")
    model_names = check_models(models)
    names = check_datasets(datasets)
    fold_names = check_folds(folds, names)
    check_pairing(names, model_names)
    check_budget(epochs=kwargs.get("epochs"), iterations=kwargs.get("iterations"),
                 val_iterations=kwargs.get("val_iterations"))
    from autotrans.training.settings import check_device

    check_device(kwargs.get("device", "cuda"), 1)
    check_dose(tuple(kwargs.get("dose") or ()), names, kwargs.get("dose_grid_mm", 3.0))
    if kwargs.get("segmenter"):  # folder, plans, folds, checkpoint: checked without loading the model
        from autotrans.evaluation.segmentation import make_segmenter

        make_segmenter(kwargs["segmenter"], device=kwargs.get("device", "cuda"))
    out = Path(output) if output is not None else results_root() / "benchmark"
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"output {out} exists and is not a folder")
    return GridSpec(names, model_names, fold_names, out.resolve(), **kwargs)
