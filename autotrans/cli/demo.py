"""``autotrans_demo``: install the bundled demo data, train every model briefly on a CPU, predict, evaluate and
write the benchmark report (its path is printed). See documentation/benchmark.md."""
from __future__ import annotations

import argparse

from autotrans.cli.common import run, setup_logging
from autotrans.utils.devices import add_device_argument


def build_parser() -> argparse.ArgumentParser:
    from autotrans.benchmark.demo import DEMO_BASELINES, DEMO_DATASETS, DEMO_MODELS

    p = argparse.ArgumentParser(
        prog="autotrans_demo",
        description="The whole pipeline on the bundled real demo data: install, plan (4 mm), preprocess, train "
        "every model on fold 0 for ten iterations, predict the held-out case, evaluate, and write "
        "report.html. About 5 minutes on 2 idle CPU cores (up to about 20 on a shared machine) at --budget 1 with the default dataset. The report states how short the training "
        "was: the numbers show that the pipeline works, not model quality. Roots default to ./autotrans_data.")
    p.add_argument("--budget", type=float, default=1.0,
                   help="scales the training iterations per model (1.0: 1 epoch x 10 iterations; 3.0: 3 x 10; "
                   "a model that needs more epochs for all its phases gets them, same total: SRGAN 2 x 5)")
    add_device_argument(p, "cpu")
    p.add_argument("-m", nargs="+", default=list(DEMO_MODELS + DEMO_BASELINES), metavar="MODEL",
                   help=f"models and baselines (default: all eight models, {' '.join(DEMO_MODELS)}, and the "
                   f"baselines {' '.join(DEMO_BASELINES)} as reference rows)")
    p.add_argument("-d", nargs="+", default=list(DEMO_DATASETS), metavar="DATASET",
                   help=f"demo datasets: 901 (T2->FLAIR), 902 (CT->PET), 903 (simulated CBCT->CT) "
                   f"(default: {' '.join(DEMO_DATASETS)})")
    p.add_argument("-o", "--output", default=None, help="report folder (default $autotrans_results/demo_benchmark)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        from autotrans.benchmark.demo import run_demo

        print(run_demo(args.budget, args.device, args.m, args.d, args.output))
        return 0

    return run("autotrans_demo", go)


if __name__ == "__main__":
    raise SystemExit(main())
