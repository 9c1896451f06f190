"""``autotrans_convert KIND SOURCE_DIR -d ID``: public benchmark download → autotrans raw dataset."""
from __future__ import annotations

import argparse
import logging
import sys

from autotrans.cli.common import run, setup_logging
from autotrans.dataset.converters import FILE_MODES, KINDS, convert

logger = logging.getLogger("autotrans.convert")

EPILOG = """directions (SOURCE[,SOURCE]:TARGET):
  synthrad2023/2025  mr:ct (Task 1, default) | cbct:ct (Task 2); --region brain,pelvis | HN,TH,AB | all
  brats              any of t1n,t1c,t2w,t2f, e.g. t2w:t2f (default), t1n,t2w:t2f
  autopet, hecktor   ct:pet (default) | pet:ct
see documentation/datasets.md for what to download."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_convert",
        description="Convert a public translation benchmark, as distributed, into $autotrans_raw/DatasetID_NAME. "
        "The source folder is only read.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=sorted(KINDS), help="which public dataset SOURCE_DIR holds")
    p.add_argument("source_dir", help="the unpacked download (wrapping folders are searched a few levels down)")
    p.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id 0..999")
    p.add_argument("-n", "--name", default=None, help="dataset name (default depends on kind and direction)")
    p.add_argument("--direction", default=None, help="SOURCE:TARGET modalities (see below)")
    p.add_argument("--region", default=None, help="SynthRAD anatomical region(s), comma separated, or all")
    p.add_argument("--files", choices=FILE_MODES, default="copy",
                   help="how unchanged NIfTI files enter the dataset (default copy; hardlink falls back to copy)")
    p.add_argument("--no-resample", action="store_true",
                   help="report grids that differ instead of resampling them onto the reference grid")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="hold out this fraction of training cases as imagesTs/targetsTs (reproducible)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out choice")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="convert the complete cases and warn about the others instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> None:
        out = convert(
            args.kind,
            args.source_dir,
            args.dataset_id,
            name=args.name,
            direction=args.direction,
            region=args.region,
            mode=args.files,
            resample=not args.no_resample,
            overwrite=args.overwrite,
            skip_incomplete=args.skip_incomplete,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
        logger.info("done: %s", out)

    return run(parser.prog, go)


if __name__ == "__main__":
    sys.exit(main())
