"""``autotrans_evaluate``: score predictions against references, or compare models' result files."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from autotrans.cli.common import run, setup_logging
from autotrans.errors import ConfigurationError
from autotrans.evaluation.standards import MODALITIES, STANDARDS

log = logging.getLogger("autotrans.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_evaluate",
        description="Evaluate synthetic volumes (folders of {CASE}{ending} files or single files) under a "
        "metric standard, writing JSON plus a CSV beside it; or, with --compare, compare several result "
        "files case by case (Friedman, Nemenyi + CD diagram, Wilcoxon/Holm, bootstrap CIs). "
        "See documentation/evaluation.md.",
    )
    p.add_argument("-ref", "--ref", help="reference (real) volumes: folder or file")
    p.add_argument("-pred", "--pred", help="predicted (synthetic) volumes: folder or file")
    p.add_argument("-mask", "--mask", default=None, help="masks (binarized at > 0): folder or file")
    p.add_argument("-lesions", "--lesions", default=None, help="lesion maps: folder or file (lesion-level metrics)")
    p.add_argument("-modality", "--modality", type=str.upper, choices=MODALITIES, help="target modality")
    p.add_argument("--standard", choices=STANDARDS, default="autotrans", help="metric definitions (autotrans)")
    p.add_argument("--mr_range", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="MR intensity range of the autotrans standard (default: reference masked p0.5/p99.5 per case)")
    p.add_argument("--suv_ceiling", type=float, default=None,
                   help="PET SUV ceiling of the autotrans standard (default: reference masked p99.9 per case)")
    p.add_argument("--mr_k", type=float, default=3.0,
                   help="MR lesion threshold: local background mean + k * std (3)")
    p.add_argument("--segmenter", default=None, metavar="PATH",
                   help="segmentation consistency: an nnU-Net v2 results folder (plans.json, dataset.json, fold_X) "
                   "or totalsegmentator[:task]; segments REF and PRED and reports per-label Dice and HD95")
    p.add_argument("--segmenter_folds", nargs="+", default=None,
                   help="nnU-Net folds to ensemble (default: every fold_X with the checkpoint)")
    p.add_argument("--segmenter_checkpoint", default="checkpoint_final.pth", help="nnU-Net checkpoint file name")
    p.add_argument("--segmenter_device", default="cpu", help="device for the segmenter: cpu, cuda or cuda:N (cpu)")
    p.add_argument("--segmenter_no_mirroring", action="store_true",
                   help="nnU-Net without mirroring test-time augmentation (about 8x faster, e.g. on CPU)")
    p.add_argument("--compare", nargs="+", metavar="RESULT_JSON", default=None,
                   help="compare these autotrans_evaluate results (two or more) instead of evaluating")
    p.add_argument("--names", nargs="+", default=None, help="model names for --compare (default: file stems)")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics for --compare (default: all shared)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level for --compare, strictly between 0 and 1 (0.05)")
    p.add_argument("-o", "--output", required=True, help="output JSON file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _check_output(output: str) -> None:
    """-o names a JSON file in a folder we can write to; checked before any work."""
    from autotrans.utils.files import ensure_writable_dir

    out = Path(output)
    if out.is_dir():
        raise ConfigurationError(f"-o {out} is a folder; give a file name, e.g. {out / 'evaluation.json'}")
    ensure_writable_dir(out.parent, "-o")


def _main(args: argparse.Namespace) -> int:
    if not 0.0 < args.alpha < 1.0:
        raise ConfigurationError(f"--alpha {args.alpha:g}: must lie strictly between 0 and 1 (e.g. 0.05)")
    _check_output(args.output)
    if args.compare:
        from autotrans.evaluation.statistics import compare_runs

        compare_runs(args.compare, names=args.names, metrics=args.metrics, out_json=args.output, alpha=args.alpha)
        return 0
    missing = [flag for flag, v in (("-ref", args.ref), ("-pred", args.pred), ("-modality", args.modality)) if not v]
    if missing:
        raise ConfigurationError(f"missing {', '.join(missing)} (or use --compare)")
    if args.mr_range is not None and args.modality != "MR":
        raise ConfigurationError("--mr_range applies to -modality MR only")
    if args.suv_ceiling is not None and (args.modality != "PET" or args.suv_ceiling <= 0):
        raise ConfigurationError("--suv_ceiling needs -modality PET and a positive value")
    segmenter = None
    if args.segmenter:
        from autotrans.evaluation.segmentation import make_segmenter

        segmenter = make_segmenter(args.segmenter, folds=args.segmenter_folds, checkpoint=args.segmenter_checkpoint,
                                   device=args.segmenter_device, modality=args.modality,
                                   use_mirroring=not args.segmenter_no_mirroring)
    from autotrans.evaluation.folders import evaluate_folders

    res = evaluate_folders(args.ref, args.pred, args.mask, args.lesions, args.modality, args.standard,
                           Path(args.output), value_range=args.mr_range, range_source="--mr_range",
                           suv_ceiling=args.suv_ceiling, mr_k=args.mr_k, segmenter=segmenter)
    for name, agg in res["aggregate"].items():
        log.info("%-16s mean %.6g  median %.6g  (n=%d)", name, agg["mean"], agg["median"], agg["n"])
    for label, agg in res.get("segmentation", {}).get("aggregate", {}).items():
        log.info("seg %-12s Dice mean %.4g (n=%d)  HD95 mean %.4g mm (n=%d)", label, agg["dice"]["mean"],
                 agg["dice"]["n"], agg["hd95"]["mean"], agg["hd95"]["n"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run("autotrans_evaluate", lambda: _main(args))


if __name__ == "__main__":
    raise SystemExit(main())
