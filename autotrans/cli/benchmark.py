"""``autotrans_benchmark``: run or resume the dataset x model x fold grid and write the report, or emit it as
SLURM jobs. See documentation/benchmark.md."""
from __future__ import annotations

import argparse
import logging

from autotrans.cli.common import run, setup_logging
from autotrans.errors import AutotransError

log = logging.getLogger("autotrans.benchmark")


def add_budget(p: argparse.ArgumentParser) -> None:
    """Flags passed through to training (and prediction); shared with ``autotrans_demo``."""
    p.add_argument("-device", "--device", default="cuda", help="cpu, cuda or mps (cuda)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (plan, else 1000)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (plan, else 250)")
    p.add_argument("--val_iterations", type=int, default=None,
                   help="validation batches per epoch (plan, else iterations // 5, at least 1, at most 50)")
    p.add_argument("-num_workers", "--num_workers", type=int, default=None,
                   help="augmentation workers per training run (training default)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: drawn and recorded per task)")
    p.add_argument("--disable_tta", action="store_true",
                   help="no mirror test-time augmentation in the final validation and the prediction (8x faster)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps of the stochastic (latent) models at prediction (plan's default)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_benchmark",
        description="Run or resume plan -> preprocess -> train -> predict -> evaluate for every dataset x model x "
        "fold, skipping what is finished, then write report.html/report.md under $autotrans_results/benchmark "
        "(or -o). With --emit_slurm DIR, write SLURM job scripts instead of running.")
    p.add_argument("-d", nargs="+", required=True, metavar="DATASET", help="dataset ids or names")
    p.add_argument("-m", nargs="+", required=True, metavar="MODEL",
                   help="models (registered families, e.g. regression pix2pix ldm) and reference baselines "
                   "(identity intensity_map: no training, fitted on each fold's training cases)")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], metavar="FOLD",
                   help="folds (default 0 1 2 3 4; each must exist in every dataset's split)")
    p.add_argument("-c", default="3d_fullres", metavar="CONFIG", help="configuration (3d_fullres)")
    p.add_argument("-p", default="autotransPlans", metavar="PLANS",
                   help="plans name (autotransPlans; a preset's, e.g. autotransResEncUNetLPlans, plans new datasets "
                        "with that preset)")
    add_budget(p)
    p.add_argument("-gpu_memory_target", type=float, default=None, metavar="GB",
                   help="planner GPU memory target for datasets not planned yet (planner default 8)")
    p.add_argument("--overwrite_target_spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="planner target spacing for datasets not planned yet")
    p.add_argument("-np", type=int, default=2, help="worker processes for preprocessing (2)")
    p.add_argument("--dose", nargs="+", choices=("photons", "protons"), default=None, metavar="BEAMS",
                   help="also evaluate dose on CT targets: photons and/or protons (plan on the real CT, recompute on "
                        "the synthetic CT; needs pip install 'autotrans[dose]'; documentation/dose.md)")
    p.add_argument("--dose_grid", type=float, default=3.0, metavar="MM", help="dose grid spacing for --dose (3 mm)")
    p.add_argument("--segmenter", default=None, metavar="PATH",
                   help="also report segmentation consistency: a trained nnU-Net v2 model folder (or "
                        "totalsegmentator[:TASK]) run on the real and the synthetic volume (Dice, HD95)")
    p.add_argument("-o", "--output", default=None, help="output folder (default $autotrans_results/benchmark)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--emit_slurm", default=None, metavar="DIR", help="write SLURM scripts into DIR, run nothing")
    mode.add_argument("--prepare_only", action="store_true", help="only plan and preprocess the datasets")
    mode.add_argument("--no_report", action="store_true", help="run the tasks, write no report (SLURM array tasks)")
    mode.add_argument("--report_only", action="store_true", help="only write the report from finished tasks")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def planner_options(args: argparse.Namespace):  # -> PlannerOptions
    from autotrans.planning.planner import PlannerOptions
    from autotrans.planning.presets import preset_for_plans_name

    kw = {}
    preset = preset_for_plans_name(args.p)  # -p autotransResEncUNetLPlans plans new datasets with -pl ResEncL
    if preset is not None:
        kw.update(preset=preset.name, plans_name=args.p)
    if args.gpu_memory_target is not None:
        kw["gpu_memory_target_gb"] = args.gpu_memory_target
    if args.overwrite_target_spacing is not None:
        kw["overwrite_target_spacing"] = tuple(args.overwrite_target_spacing)
    return PlannerOptions(**kw)


def grid_kwargs(args: argparse.Namespace) -> dict:
    return dict(configuration=args.c, plans_name=args.p, device=args.device, epochs=args.epochs,
                iterations=args.iterations, val_iterations=args.val_iterations, num_workers=args.num_workers,
                seed=args.seed, steps=args.steps, tta=not args.disable_tta, planner=planner_options(args), num_processes=args.np,
                dose=tuple(dict.fromkeys(args.dose or ())), dose_grid_mm=args.dose_grid, segmenter=args.segmenter)


def _flags(args: argparse.Namespace, for_training: bool) -> list[str]:
    """The budget (and, for the benchmark, planner/output) flags to repeat in every emitted command."""
    out = ["-device", args.device]
    if for_training and args.disable_tta:
        out += ["--disable_val_tta"]
    for flag, v in (("--epochs", args.epochs), ("--iterations", args.iterations),
                    ("--val_iterations", args.val_iterations), ("-num_workers", args.num_workers),
                    ("--seed", args.seed)):
        if v is not None:
            out += [flag, str(v)]
    if for_training:
        return out
    if args.steps is not None:
        out += ["--steps", str(args.steps)]
    if args.disable_tta:
        out += ["--disable_tta"]
    if args.gpu_memory_target is not None:
        out += ["-gpu_memory_target", str(args.gpu_memory_target)]
    if args.overwrite_target_spacing is not None:
        out += ["--overwrite_target_spacing", *map(str, args.overwrite_target_spacing)]
    if args.dose:
        out += ["--dose", *args.dose, "--dose_grid", str(args.dose_grid)]
    if args.segmenter:
        out += ["--segmenter", args.segmenter]
    return out


def _main(args: argparse.Namespace) -> int:
    from autotrans.benchmark import collect, make_grid, run_grid, write_report
    from autotrans.benchmark.runner import prepare_dataset

    grid = make_grid(args.d, args.m, args.f, args.output, **grid_kwargs(args))
    if args.emit_slurm:
        from autotrans.benchmark.slurm import emit_slurm

        common = ["-c", grid.configuration, "-p", grid.plans_name, *_flags(args, False), "-o", str(grid.output)]
        print(emit_slurm(grid, args.emit_slurm, common, _flags(args, True)))
        return 0
    if args.prepare_only:
        for d in grid.datasets:
            prepare_dataset(grid, d)
        return 0
    failed = [] if args.report_only else run_grid(grid)
    if not args.no_report:
        info = {"datasets": list(grid.datasets), "models": list(grid.models), "folds": list(grid.folds),
                "configuration": grid.configuration, "plans_name": grid.plans_name, "device": grid.device,
                "failed": [name for name, _ in failed]}
        print(write_report(grid.output, collect(grid), info))
    if failed:
        raise AutotransError(f"{len(failed)} task(s) failed (the others finished; rerun to retry): "
                             + "; ".join(f"{n}: {e}" for n, e in failed))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run("autotrans_benchmark", lambda: _main(args))


if __name__ == "__main__":
    raise SystemExit(main())
