"""``autotrans_nifti2dicom VOLUME OUT_DIR [-ref SERIES_DIR]``: a CT volume in HU → a DICOM CT series joining the
reference series' patient, study and Frame of Reference (see ``autotrans.dataset.dicom_export`` for the tags)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autotrans.cli.common import run, setup_logging

# SimpleITK and pydicom are imported when a conversion runs, not for --help or an argument error
logger = logging.getLogger("autotrans.nifti2dicom")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_nifti2dicom",
        description="Write a CT volume in HU (NIfTI/MHA/NRRD), e.g. a synthetic CT, as a DICOM CT Image Storage "
        "series: one file per axial slice, int16 with rescale slope 1 / intercept 0 (values rounded to 1 HU), new "
        "series and instance UIDs, ImageType DERIVED\\SECONDARY. With -ref the series joins that DICOM series' "
        "patient, study and Frame of Reference; without, it gets an anonymous identity and new UIDs.")
    p.add_argument("volume", help="CT volume in HU: .nii.gz, .nii, .mha, .mhd or .nrrd")
    p.add_argument("out_dir", help="output folder for the series (replaced as a whole with --overwrite)")
    p.add_argument("-ref", "--reference", default=None, metavar="SERIES_DIR",
                   help="folder of the DICOM series the volume belongs to (identity and Frame of Reference)")
    p.add_argument("--series", default=None, metavar="UID",
                   help="SeriesInstanceUID of the reference series (default: the largest series in SERIES_DIR)")
    p.add_argument("--description", default=None, metavar="TEXT",
                   help="SeriesDescription (default: 'autotrans synthetic CT (MODEL)'; at most 64 characters)")
    p.add_argument("--model", default=None, metavar="NAME", help="model that made the volume, named in the "
                   "descriptions")
    p.add_argument("--series_number", type=int, default=None, metavar="N",
                   help="SeriesNumber (default: the reference's + 1000, or 1)")
    p.add_argument("--new_frame", action="store_true",
                   help="new Frame of Reference UID: the volume is NOT in the reference's patient coordinates")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.series is not None and args.reference is None:
        parser.error("--series needs -ref SERIES_DIR")

    def go() -> None:
        from autotrans.dataset.dicom_export import load_reference, write_ct_series
        from autotrans.io import read_image
        from autotrans.utils.files import ensure_replaceable, ensure_writable_folder

        out = Path(args.out_dir).expanduser()
        ensure_replaceable(out, args.overwrite)  # before reading anything
        ensure_writable_folder(out.resolve().parent)
        arr, geometry = read_image(args.volume, dtype=None)
        reference = load_reference(args.reference, args.series) if args.reference is not None else None
        result = write_ct_series(arr, out, geometry, reference=reference, model=args.model,
                                 description=args.description, series_number=args.series_number,
                                 new_frame=args.new_frame, overwrite=args.overwrite)
        logger.info("series %s (Frame of Reference %s, study %s): %d file(s) in %s", result.series_uid,
                    result.frame_of_reference_uid, result.study_uid, len(result.files), out)

    return run(parser.prog, go)


if __name__ == "__main__":
    sys.exit(main())
