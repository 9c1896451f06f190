"""``autotrans_dose``: plan on the real CT, recompute on the synthetic CT, compare (gamma, DVH)."""
from __future__ import annotations

import argparse
import logging
import sys

from autotrans.cli.common import run, setup_logging

logger = logging.getLogger("autotrans.dose")

MODALITIES = ("photons", "protons")  # autotrans.dose.engine.MODALITIES (kept here so --help needs no numpy)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_dose",
        description="Dose evaluation of synthetic CTs (the SynthRAD protocol): for every case a treatment plan is "
        "optimised on the real CT and the same beams and weights are recomputed on the synthetic CT (pyRadPlan "
        "pencil beams; needs the optional extra: pip install 'autotrans[dose]'). Writes gamma pass rates, DVH "
        "differences and dose maps. See documentation/dose.md.")
    p.add_argument("-ref", "--ref", required=True, help="real CTs in HU: folder of {CASE}{ending} files or one file")
    p.add_argument("-pred", "--pred", required=True, help="synthetic CTs on the same grids: folder or file")
    p.add_argument("-mask", "--mask", default=None,
                   help="body masks (default: the real CT thresholded at -500 HU, largest component, holes filled)")
    p.add_argument("-target", "--target", default=None,
                   help="target masks (default: a sphere of --target_radius mm at the body's deepest point)")
    p.add_argument("--modality", nargs="+", choices=MODALITIES, default=["photons"],
                   help="beam types to plan, one or both (default photons)")
    p.add_argument("--gantry_angles", nargs="+", type=float, default=None, metavar="DEG",
                   help="beam angles in degrees (default: photons 0 72 144 216 288, protons 90 270)")
    p.add_argument("--dose_grid", type=float, default=3.0, metavar="MM", help="dose grid spacing in mm (3)")
    p.add_argument("--prescription", type=float, default=2.0, metavar="GY",
                   help="target mean dose of the reference plan in Gy (2, one fraction)")
    p.add_argument("--target_radius", type=float, default=20.0, metavar="MM",
                   help="radius of the automatic target sphere in mm (20)")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="write the reference and synthetic doses and their difference (Gy) as images here")
    p.add_argument("--plan_cache", default=None, metavar="DIR",
                   help="keep optimised reference plans here, reused when another model is evaluated on the same "
                        "cases with the same settings")
    p.add_argument("-o", "--output", required=True, help="output JSON file (a CSV is written beside it)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        from pathlib import Path

        from autotrans.cli.evaluate import _check_output
        from autotrans.dose.evaluate import evaluate_dose
        from autotrans.utils.files import ensure_writable_dir

        _check_output(a.output)
        for folder, flag in ((a.maps, "--maps"), (a.plan_cache, "--plan_cache")):
            if folder is not None:
                ensure_writable_dir(Path(folder), flag)
        settings = {"dose_grid_mm": a.dose_grid, "prescription_gy": a.prescription,
                    "target_radius_mm": a.target_radius}
        if a.gantry_angles:
            settings["gantry_angles"] = tuple(a.gantry_angles)
        res = evaluate_dose(a.ref, a.pred, a.output, list(dict.fromkeys(a.modality)), a.mask, a.target, settings,
                            a.maps, a.plan_cache)
        for name, agg in res["aggregate"].items():
            if "gamma" in name or "D95" in name:
                logger.info("%-32s mean %.4g  median %.4g  (n=%d)", name, agg["mean"], agg["median"], agg["n"])

    return run(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
