"""``autotrans_dicom2nifti SERIES_DIR OUT [--suv]``: one DICOM series to NIfTI/MHA, PET optionally in SUVbw."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autotrans.cli.common import run, setup_logging
from autotrans.dataset.dicom import convert_series, list_series
from autotrans.utils.files import ensure_writable_folder

logger = logging.getLogger("autotrans.dicom2nifti")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_dicom2nifti",
        description="Convert a DICOM series (the largest in SERIES_DIR unless --series) to NIfTI/MHA/NRRD with its "
        "geometry. With --suv a PET series in Bq/ml becomes SUVbw from its dose, weight and time tags.",
    )
    p.add_argument("series_dir", help="folder holding the DICOM files of the series")
    p.add_argument("out", nargs="?", help="output file: .nii.gz, .nii, .mha, .mhd or .nrrd")
    p.add_argument("--suv", action="store_true", help="convert PET activity concentration (BQML) to SUVbw")
    p.add_argument("--series", default=None, help="SeriesInstanceUID to convert instead of the largest series")
    p.add_argument("--list", action="store_true", help="only list the series found, largest first")
    p.add_argument("--allow_gaps", action="store_true",
                   help="accept missing slices / irregular slice steps: resample onto a uniform grid at the series' "
                        "step, filling the gap by linear interpolation (default: refuse such a series)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not args.list and not args.out:
        parser.error("OUT is required unless --list")

    def go() -> None:
        if args.list:
            for s in list_series(args.series_dir):
                print(s.summary())
            return
        ensure_writable_folder(Path(args.out).expanduser().resolve().parent)  # before reading the series
        result = convert_series(args.series_dir, args.out, suv=args.suv, series_uid=args.series,
                                allow_gaps=args.allow_gaps)
        g = result.geometry
        logger.info("wrote %s from series %s: size %s, spacing %s", args.out, result.series.uid, g.size,
                    tuple(round(v, 4) for v in g.spacing))

    return run(parser.prog, go)


if __name__ == "__main__":
    sys.exit(main())
