"""``autotrans_predict``: whole-volume prediction of new cases with a trained model (nnU-Net's command shape)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autotrans.cli.common import run, setup_logging
from autotrans.errors import ConfigurationError
from autotrans.utils.devices import add_device_argument, check_device, resolve_device

# torch and the inference code are imported when a prediction runs, not for --help or an argument error
#: ``autotrans.inference.models.DEFAULT_CHECKPOINT`` (kept here so the parser needs no torch; a test checks)
DEFAULT_CHECKPOINT = "checkpoint_final.pth"

logger = logging.getLogger("autotrans.predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_predict",
        description="Predict the target modality for every case in -i ({CASE}_0000{ending}, ...); writes "
                    "{CASE}{ending} to -o with the input's exact geometry, in physical units.")
    p.add_argument("-i", required=True, metavar="IN",
                   help="folder of input cases in the raw naming, or of DICOM: one series (one case) or one "
                        "subfolder of DICOM files per case (converted to NIfTI first)")
    p.add_argument("-o", required=True, metavar="OUT",
                   help="output folder (created if missing; must not be the input folder)")
    p.add_argument("-d", default=None, metavar="DATASET", help="dataset id or name (needed when several models exist)")
    p.add_argument("-c", default=None, metavar="CONFIG", help="configuration, e.g. 3d_fullres")
    p.add_argument("-m", default=None, metavar="MODEL", help="model family, e.g. pix2pix")
    p.add_argument("-p", default=None, metavar="PLANS", help="plans name (default: any)")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds to ensemble, e.g. 0 1 2 3 4, or 'all' (default: every trained fold)")
    p.add_argument("-chk", default=DEFAULT_CHECKPOINT, metavar="CHECKPOINT",
                   help=f"checkpoint file name (default {DEFAULT_CHECKPOINT})")
    p.add_argument("-step_size", type=float, default=0.5,
                   help="tile stride as a fraction of the patch, in (0, 1] (default 0.5)")
    p.add_argument("--blend", choices=("gaussian", "mean"), default="gaussian", help="tile blending (default gaussian)")
    p.add_argument("--disable_tta", action="store_true", help="no mirror test-time augmentation")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="sampler steps of stochastic models (default: the plan's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of stochastic models (default 0)")
    add_device_argument(p, None)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("-batch_size", type=int, default=1, metavar="N", help="tiles per network call (default 1)")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases whose output already exists")
    p.add_argument("-npp", type=int, default=2, metavar="N", help="preprocessing worker processes (default 2)")
    p.add_argument("-nps", type=int, default=2, metavar="N", help="export worker processes (default 2)")
    p.add_argument("--save_uncertainty", action="store_true",
                   help="also write {CASE}_std: per-voxel std across folds in physical units")
    p.add_argument("--dicom_out", default=None, metavar="DIR",
                   help="DICOM input and a CT model only: also write each prediction as a DICOM CT series in "
                        "DIR/{CASE}/, in its source series' study and Frame of Reference")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        from autotrans.inference.dicom_io import open_prediction_input
        from autotrans.inference.folder import check_output_target, predict_folder
        from autotrans.inference.models import load_model, select_model
        from autotrans.inference.predictor import Predictor, PredictorSettings

        a.device = resolve_device(a.device)
        check_device(a.device)  # the same names and messages as autotrans_train
        if a.steps is not None and a.steps < 1:
            raise ConfigurationError(f"--steps {a.steps}: must be >= 1")
        if not 0 < a.step_size <= 1:  # also NaN
            raise ConfigurationError(f"-step_size {a.step_size:g}: must be in (0, 1], the tile stride as a "
                                     f"fraction of the patch (0.5 = half-patch overlap)")
        check_output_target(Path(a.i), Path(a.o))  # -o a file, or -o == -i: refused before loading anything
        source = open_prediction_input(Path(a.i), a.dicom_out)  # DICOM -i? --dicom_out without it is refused
        settings = PredictorSettings(step_size=a.step_size, blend=a.blend, tta=not a.disable_tta, seed=a.seed,
                                     batch_size=a.batch_size, device=a.device, bf16=not a.fp32,
                                     save_uncertainty=a.save_uncertainty)
        spec = select_model(a.d, a.c, a.m, a.p)
        if not any(x is not None for x in (a.d, a.c, a.m, a.p)):
            logger.info("using the only trained model: %s/%s (%s)", spec.dataset, spec.folder.name, spec.flags())
        overrides = {"sampling_steps": a.steps} if a.steps is not None else None
        with source.prepared(Path(a.o), spec) as in_dir:  # DICOM cases converted to NIfTI in a temporary folder
            model = load_model(spec, a.f, a.chk, a.device, overrides)
            done = predict_folder(Predictor(model, settings), in_dir, a.o, a.continue_prediction, a.npp, a.nps)
        logger.info("done: %d predicted, %d skipped", len(done["predicted"]), len(done["skipped"]))
        if a.dicom_out is not None:
            dicom = source.write_dicom(Path(a.o), spec, done["predicted"] + done["skipped"], a.continue_prediction)
            logger.info("wrote %d DICOM series to %s", len(dicom), a.dicom_out)

    return run(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
