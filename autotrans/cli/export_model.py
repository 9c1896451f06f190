"""``autotrans_export_model``: one trained model as a zip for colleagues (nnU-Net's export_model_to_zip shape)."""
from __future__ import annotations

import argparse
import sys

from autotrans.cli.common import run, setup_logging

# torch and the inference code are imported when an export runs, not for --help or an argument error; these
# copy ``autotrans.inference.models.DEFAULT_CHECKPOINT`` and ``autotrans.planning.planner.DEFAULT_PLANS_NAME``
# (tests/inference/test_export_install.py checks that they agree)
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
DEFAULT_PLANS_NAME = "autotransPlans"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_export_model",
        description="Write a trained model (plans, dataset.json, the chosen checkpoints, a MODEL_CARD.md, a "
                    "checksummed manifest) to a zip that autotrans_install_model puts into another results root. "
                    "No raw or preprocessed data and no validation predictions are included.")
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset id or name")
    p.add_argument("-c", required=True, metavar="CONFIG", help="configuration, e.g. 3d_fullres")
    p.add_argument("-m", required=True, metavar="MODEL", help="model family, e.g. pix2pix")
    p.add_argument("-p", default=DEFAULT_PLANS_NAME, metavar="PLANS", help=f"plans name (default {DEFAULT_PLANS_NAME})")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds to export, e.g. 0 1 2 3 4 or all (default: every fold that holds the checkpoint(s))")
    p.add_argument("-chk", nargs="+", default=[DEFAULT_CHECKPOINT], metavar="CHECKPOINT",
                   help=f"checkpoint file name(s) (default {DEFAULT_CHECKPOINT})")
    p.add_argument("-o", required=True, metavar="ZIP", help="zip file to write, e.g. model.zip")
    p.add_argument("--full_checkpoints", action="store_true",
                   help="keep optimizer/scheduler/RNG state (larger; lets the receiver continue training with --c)")
    p.add_argument("--include_dependencies", action="store_true",
                   help="also export the model folders this model was built on (a latent model's autoencoder, a "
                        "ControlNet's prior); predicting never needs them, their weights are in the checkpoints")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        from autotrans.sharing import export_model

        export_model(a.d, a.c, a.m, a.o, plans_name=a.p, folds=a.f, checkpoints=a.chk,
                     full_checkpoints=a.full_checkpoints, include_dependencies=a.include_dependencies)

    return run(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
