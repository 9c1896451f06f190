"""``autotrans_check_pairs``: are the training pairs aligned? Optionally write a rigidly registered copy.

Heavy libraries (SimpleITK, scipy, the planner) are imported after the arguments are parsed, so ``--help`` is
instant.
"""
from __future__ import annotations

import argparse
import sys

from autotrans.cli.common import run, setup_logging
from autotrans.errors import ConfigurationError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_check_pairs",
        description="Check that every training source lies on its target: a rigid Mattes-MI registration "
        "(SimpleITK) of source channel 0 onto the target inside the mask, per case. Prints the shift (mm), "
        "rotation (deg) and how far the mask's tissue moves (mm, voxels); flags cases moved by more than 2 "
        "voxels or clearly more than the others (a warning, not an error). Writes "
        "$autotrans_preprocessed/DatasetXXX/pair_alignment.json. The raw data are only read. "
        "See documentation/dataset_format.md, 'Pair alignment check'.",
    )
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset id or name, e.g. 3 or Dataset003_X")
    p.add_argument("-np", type=int, default=2, metavar="N", help="worker processes (default 2)")
    p.add_argument("--register", choices=("rigid",), default=None,
                   help="write a new dataset (-o) whose sources are resampled onto their targets with the estimated "
                        "transform. Only rigid is offered: the check estimates a rigid offset, and deformable "
                        "registration could change anatomy the model should learn to translate")
    p.add_argument("-o", type=int, default=None, metavar="NEW_ID",
                   help="id of the new raw dataset (with --register); an id in use is refused")
    p.add_argument("-n", "--name", default=None,
                   help="name of the new dataset (default: the original's name + 'Registered')")
    p.add_argument("--only_flagged", action="store_true",
                   help="with --register: resample only the flagged cases' sources, copy the others unchanged")
    p.add_argument("-json", dest="json_out", default=None, metavar="PATH",
                   help="also write the results to PATH")
    p.add_argument("--clean", action="store_true", help="register every case again (ignore earlier results)")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        if a.np < 1:
            raise ConfigurationError(f"-np {a.np}: needs at least 1 worker process")
        if (a.register is None) != (a.o is None):
            raise ConfigurationError("--register rigid and -o NEW_ID go together")
        if a.only_flagged and a.register is None:
            raise ConfigurationError("--only_flagged needs --register rigid -o NEW_ID")
        from autotrans.dataset import alignment
        from autotrans.utils.files import save_json

        if a.register:
            dest, section = alignment.register_step(a.d, a.o, a.name, a.np, a.only_flagged, a.clean)
        else:
            section, _ = alignment.check_dataset(a.d, a.np, a.clean)
        print(alignment.format_table(section))
        if a.register:
            print(f"registered dataset written to {dest}")
        if a.json_out:
            save_json(section, a.json_out)

    return run(parser.prog, go)


if __name__ == "__main__":
    sys.exit(main())
