"""``autotrans_demo``: the whole pipeline on the bundled demo data, on a CPU, in minutes.

Installs the demo datasets, plans them coarsely (4 mm, a tiny GPU-memory target, hence small patches and
networks), trains every model on fold 0 for a few dozen iterations, predicts the held-out case, evaluates and
writes the report. The report says plainly that the training was short: the point is that every stage runs
on real data, not that the models are any good after a minute.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from autotrans.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEMO_MODELS = ("regression", "pix2pix", "cyclegan", "srgan", "ldm", "ldm_controlnet", "bbdm", "flow_matching")
#: reference rows, no training (fitted on the fold's training cases in well under a second each)
DEMO_BASELINES = ("identity", "intensity_map")
#: T2 -> FLAIR brains (lesion maps: lesion-level tables). CT -> PET (902) and simulated CBCT -> CT (903) are
#: opt-in (-d 901 902): with all eight models the latent models' whole-volume sampling of a PET/CT slab takes
#: minutes per model on 2 CPU cores, which does not fit the 15-minute default (documentation/benchmark.md)
DEMO_DATASETS = ("901",)
DEMO_FOLD = "0"
#: the tiny plan of the tests (~24^3 patches): brains at 4 mm (~33 x 40 x 33 voxels), the PET/CT slabs at 8 mm
#: (~31 x 29 x 47 voxels, as many as a brain; at their shipped 6 mm the latent models' whole-volume sampling of
#: one slab took 2-3 minutes per model on 2 CPU cores, at 4 mm eight times the voxels of a brain)
GPU_MEMORY_TARGET_GB = 0.05
TARGET_SPACING_MM = {901: (4.0, 4.0, 4.0), 902: (8.0, 8.0, 8.0), 903: (8.0, 8.0, 8.0)}
#: training iterations per model at --budget 1 (a real run: 1000 x 250 = 250,000); sized so that all eight
#: models on 901 finish within 15 minutes on the 2-core development machine (documentation/benchmark.md)
BASE_ITERATIONS = 10
ITERATIONS_PER_EPOCH = 10
VAL_ITERATIONS = 2
#: its own plans name, so the coarse demo plan never replaces (or reuses) a real plan of the same dataset
DEMO_PLANS = "autotransDemoPlans"
#: sampling steps of the latent models at prediction (their plans default to more; a CPU demo cannot wait)
DEMO_SAMPLING_STEPS = 10


@dataclass(frozen=True)
class DemoBudget:
    epochs: int
    iterations: int
    val_iterations: int
    steps: int


def minimum_epochs(model: str) -> int:
    """The fewest epochs that train ``model`` as what it is named (``Family.minimum_epochs``: SRGAN needs its
    pre-training and its GAN phase); 1 for a name that is not a trained family (the baselines)."""
    import autotrans.families  # noqa: F401  (registers the shipped families)
    from autotrans.families.base import get_family

    try:
        return int(get_family(model).minimum_epochs())
    except ConfigurationError:
        return 1


def budget_schedule(budget: float, model: str | None = None) -> DemoBudget:
    """Scale the total number of training iterations by ``budget``: epochs of 10 iterations, at least one epoch
    of two iterations (so even ``--budget 0.01`` trains, validates and checkpoints). With ``model``: at least
    its ``minimum_epochs``, the same total iterations spread over them (SRGAN at budget 1: 2 epochs x 5), so no
    model is trained as less than its name says and the demo's time stays about the same."""
    if not budget > 0:
        raise ConfigurationError(f"--budget {budget}: must be > 0")
    total = max(2, round(BASE_ITERATIONS * budget))
    epochs = max(1, total // ITERATIONS_PER_EPOCH, minimum_epochs(model) if model else 1)
    iterations = max(2, round(total / epochs))
    return DemoBudget(epochs, iterations, VAL_ITERATIONS, max(2, round(DEMO_SAMPLING_STEPS * min(budget, 1.0))))


def ensure_roots(base: Path | None = None) -> dict[str, Path]:
    """The three roots; unset ones default to ``./autotrans_data/{raw,preprocessed,results}`` (logged)."""
    base = (base or Path.cwd()) / "autotrans_data"
    out = {}
    for var, sub in (("autotrans_raw", "raw"), ("autotrans_preprocessed", "preprocessed"),
                     ("autotrans_results", "results")):
        if not os.environ.get(var):
            os.environ[var] = str(base / sub)
            logger.info("%s is not set: using %s", var, base / sub)
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
        out[var] = Path(os.environ[var])
    return out


def demo_dataset_name(dataset: str) -> str:
    from autotrans.dataset.demo import DEMO_DATASETS as SHIPPED, SIMULATED_CBCT_DEMO
    from autotrans.paths import dataset_folder_name

    known = {**SHIPPED, SIMULATED_CBCT_DEMO[0]: SIMULATED_CBCT_DEMO[1]}
    text = str(dataset).strip()
    if not text.isdigit() or int(text) not in known:
        raise ConfigurationError(f"demo dataset {dataset!r}: choose from {', '.join(map(str, sorted(known)))}")
    return dataset_folder_name(int(text), known[int(text)])


def run_demo(budget: float = 1.0, device: str = "cpu", models: list[str] | None = None,
             datasets: list[str] | None = None, output: str | Path | None = None) -> Path:
    """Install, plan, preprocess, train, predict, evaluate, report; returns the report's path."""
    from autotrans.benchmark.grid import check_models, make_grid
    from autotrans.benchmark.report import write_report
    from autotrans.benchmark.runner import collect, prepare_dataset, run_grid
    from autotrans.planning.planner import PlannerOptions

    sched = budget_schedule(budget)
    model_names = check_models(list(models or DEMO_MODELS + DEMO_BASELINES))  # before anything is installed
    names = [demo_dataset_name(d) for d in (datasets or DEMO_DATASETS)]
    roots = ensure_roots()
    from autotrans.dataset.demo import install_demo

    if all((roots["autotrans_raw"] / n).is_dir() for n in names):
        logger.info("demo datasets already installed in %s", roots["autotrans_raw"])
    else:
        install_demo(simulate_cbct=any(n.startswith("Dataset903") for n in names))
    grid = make_grid(names, list(model_names), [DEMO_FOLD], output or roots["autotrans_results"] / "demo_benchmark",
                     device=device, epochs=sched.epochs, iterations=sched.iterations,
                     val_iterations=sched.val_iterations, num_workers=0, seed=0, steps=sched.steps, tta=False,
                     num_processes=1, plans_name=DEMO_PLANS)
    for name in names:  # each dataset its own demo spacing (run_grid then finds them prepared)
        spacing = TARGET_SPACING_MM[int(name[7:10])]
        prepare_dataset(replace(grid, planner=PlannerOptions(gpu_memory_target_gb=GPU_MEMORY_TARGET_GB,
                                                             overwrite_target_spacing=spacing)), name)
    logger.info("demo: %s on %s, fold %s, %d epochs x %d iterations per model (budget %g), %d sampling steps for "
                "the latent models, no mirror TTA, device %s", ", ".join(model_names), ", ".join(names), DEMO_FOLD, sched.epochs,
                sched.iterations, budget, sched.steps, device)
    schedules: dict[DemoBudget, list[str]] = {}  # models with more epochs than the base schedule run apart
    for m in model_names:
        schedules.setdefault(budget_schedule(budget, m), []).append(m)
    failed: list[tuple[str, str]] = []
    for s, group in schedules.items():
        if s != sched:
            logger.info("demo: %s at %d epochs x %d iterations (the fewest epochs that train every phase of it)",
                        ", ".join(group), s.epochs, s.iterations)
        failed += run_grid(replace(grid, models=tuple(group), epochs=s.epochs, iterations=s.iterations))
    info = {"failed": [name for name, _ in failed], "demo": True, "budget": budget, "datasets": names, "models": list(model_names), "folds": [DEMO_FOLD],
            "device": device, "mirror_tta": False,
            "schedules": {m: {"epochs": s.epochs, "iterations": s.iterations} for s, g in schedules.items() for m in g},
            "planner": {"gpu_memory_target_gb": GPU_MEMORY_TARGET_GB,
                        "target_spacing_mm": {n: list(TARGET_SPACING_MM[int(n[7:10])]) for n in names}}}
    report = write_report(grid.output, collect(grid), info)
    if failed:
        from autotrans.errors import AutotransError

        logger.error("report of the finished tasks: %s", report)
        raise AutotransError(f"{len(failed)} demo task(s) failed (the others are in the report): "
                             + "; ".join(f"{n}: {e}" for n, e in failed))
    return report
