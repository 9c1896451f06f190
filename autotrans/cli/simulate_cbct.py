"""``autotrans_simulate_cbct``: simulated CBCT from real CT, one volume (-o) or a CBCT→CT raw dataset (-d)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from autotrans.cli.common import run, setup_logging
from autotrans.dataset.cbct import (CBCTSimulationParams, build_simulated_cbct_dataset, case_rng, check_ct,
                                    simulate_cbct)
from autotrans.errors import ConfigurationError
from autotrans.io import SUPPORTED_ENDINGS, file_ending, read_image, write_image
from autotrans.utils.files import ensure_writable_folder

logger = logging.getLogger("autotrans.simulate_cbct")


def _param_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autotrans_simulate_cbct",
        description="Simulate CBCT from CT in HU (sparse-view FBP, noise, scatter, shading, HU gain/offset; "
        "see documentation/cbct_simulation.md). With -o: one CT to one CBCT file. With -d: a raw CBCT→CT "
        "dataset (imagesTr simulated CBCT, targetsTr real CT, masksTr body mask) marked simulated.",
    )
    p.add_argument("inputs", nargs="+", help="CT volumes in HU, or folders of them")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", help="output file for a single input CT")
    out.add_argument("-d", "--dataset-id", type=int, help="build $autotrans_raw/DatasetID_NAME")
    p.add_argument("-n", "--name", default="SimulatedCBCTtoCT", help="dataset name (with -d)")
    p.add_argument("--mask-dir", default=None,
                   help="folder of body masks named like the CTs (default: computed from the CT)")
    p.add_argument("--seed", type=int, default=0, help="random seed (per case combined with the case id)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    g = p.add_argument_group("simulation parameters (defaults in parentheses)")
    for f in dataclasses.fields(CBCTSimulationParams):
        kind = str if f.name == "filter_name" else float if f.type != "int" else int
        g.add_argument(_param_flag(f.name), dest=f.name, type=kind, default=None, help=f"({f.default})")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _collect(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(SUPPORTED_ENDINGS))
            if not found:
                raise ConfigurationError(f"{path}: no image files ({', '.join(SUPPORTED_ENDINGS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigurationError(f"{path}: not found")
    return files


def _case_id(path: Path) -> str:
    return path.name[: -len(file_ending(path))]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> None:
        overrides = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(CBCTSimulationParams)
            if getattr(args, f.name) is not None
        }
        params = CBCTSimulationParams(**overrides)
        files = _collect(args.inputs)
        if args.output:
            if len(files) != 1:
                raise ConfigurationError(f"-o takes exactly one input CT, got {len(files)}; use -d for several")
            ensure_writable_folder(Path(args.output).expanduser().resolve().parent)  # before the simulation
            ct, geo = read_image(files[0])
            check_ct(ct, _case_id(files[0]), files[0])
            cbct = simulate_cbct(ct, geo.spacing_zyx, case_rng(args.seed, _case_id(files[0])), params, progress=True)
            write_image(cbct, geo, args.output)
            logger.info("wrote %s", args.output)
            return
        cases = []
        for f in files:
            mask = None
            if args.mask_dir:
                mask = Path(args.mask_dir) / f.name
                if not mask.is_file():
                    raise ConfigurationError(f"{_case_id(f)}: mask {mask} not found (--mask-dir needs one per CT)")
            cases.append((_case_id(f), f, mask))
        build_simulated_cbct_dataset(cases, args.dataset_id, args.name, params, seed=args.seed,
                                     source_description=f"Source CTs: {', '.join(f.name for f in files[:5])}"
                                     + (" ..." if len(files) > 5 else ""),
                                     overwrite=args.overwrite)

    return run(parser.prog, go)


if __name__ == "__main__":
    sys.exit(main())
