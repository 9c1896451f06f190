"""``autotrans_plan_and_preprocess`` and its three steps (nnU-Net's command shapes)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from autotrans.cli.common import run, setup_logging
from autotrans.errors import ConfigurationError
from autotrans.planning.presets import DEFAULT_PRESET, PRESETS
from autotrans.preprocessing.normalization import PET_CEILING_HEADROOM, NormalizationDefaults

if TYPE_CHECKING:
    from autotrans.planning.planner import PlannerOptions


def _add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", nargs="+", required=True, metavar="DATASET", help="dataset id(s) or name(s), e.g. 3 or Dataset003_X")
    p.add_argument("--verbose", action="store_true")


def _add_np(p: argparse.ArgumentParser) -> None:
    p.add_argument("-np", type=int, default=2, metavar="N", help="worker processes (default 2)")


def _add_planner(p: argparse.ArgumentParser) -> None:
    p.add_argument("-pl", default=DEFAULT_PRESET, metavar="PRESET",
                   help=f"planner preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET}; nnU-Net's class names "
                        "work too); "
                        "a ResEnc preset plans nnU-Net's ResidualEncoderUNet into its own plans file, e.g. "
                        "autotransResEncUNetLPlans")
    p.add_argument("-gpu_memory_target", type=float, default=None, metavar="GB",
                   help="GPU memory target in GB (default: the preset's, 8 for default and ResEncM, 24 for ResEncL, "
                        "40 for ResEncXL; another value renames a ResEnc preset's plans to <name>_<GB>G)")
    p.add_argument("--overwrite_target_spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="custom 3d_fullres target spacing in mm, array order (z y x)")
    p.add_argument("-overwrite_plans_name", "-plans_name", dest="plans_name", default=None,
                   help="plans name (default: the preset's, autotransPlans for the default preset)")
    p.add_argument("--ct_window", type=float, nargs=2, metavar=("LO", "HI"), default=(-1024.0, 3071.0), help="HU window for CT/CBCT")
    p.add_argument("--pet_transform", choices=("linear", "log1p"), default=NormalizationDefaults.pet_transform,
                   help=f"SUV -> [-1, 1] mapping (default {NormalizationDefaults.pet_transform})")
    p.add_argument("--pet_ceiling", type=float, default=None,
                   help=f"SUV mapped to +1; a target is clipped above it (default: {PET_CEILING_HEADROOM:g} x the "
                        "largest SUV of the training cases, from the fingerprint)")


#: ``autotrans.planning.planner.DEFAULT_PLANS_NAME``, without importing the planner (torch, MONAI: seconds) for
#: ``--help``; the planner and ``api`` are imported inside the commands
DEFAULT_PLANS_NAME = PRESETS[DEFAULT_PRESET].plans_name


def _check_np(n: int) -> int:
    if n < 1:
        raise ConfigurationError(f"-np {n}: needs at least 1 worker process")
    return n


def _options(a: argparse.Namespace) -> PlannerOptions:
    """The planner options from the flags, every numeric one checked up front (one line naming the flag)."""
    from autotrans.planning.planner import PlannerOptions, validate_options

    opts = PlannerOptions(
        gpu_memory_target_gb=a.gpu_memory_target,
        overwrite_target_spacing=tuple(a.overwrite_target_spacing) if a.overwrite_target_spacing else None,
        plans_name=a.plans_name,
        preset=a.pl,
        normalization=NormalizationDefaults(ct_window=tuple(a.ct_window), pet_transform=a.pet_transform,
                                            pet_ceiling=a.pet_ceiling),
    )
    validate_options(opts)
    return opts


def main_plan_and_preprocess(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autotrans_plan_and_preprocess",
                                description="Integrity check, fingerprint, plan and preprocess raw datasets.")
    _add_dataset(p)
    _add_np(p)
    _add_planner(p)
    p.add_argument("-c", nargs="+", default=None, metavar="CONFIG", help="configurations to preprocess (default: 3d_fullres and 3d_lowres when planned)")
    p.add_argument("--no_pp", action="store_true", help="stop after planning")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint even when files are unchanged")
    p.add_argument("--no_pair_check", action="store_true",
                   help="skip the pair-alignment check (a rigid registration per changed case; see autotrans_check_pairs)")
    a = p.parse_args(argv)
    setup_logging(a.verbose)

    def go() -> None:
        from autotrans.planning import api

        options, n = _options(a), _check_np(a.np)
        for d in a.d:
            api.plan_and_preprocess(d, a.c, n, options, no_pp=a.no_pp, clean=a.clean, pair_check=not a.no_pair_check)

    return run(p.prog, go)


def main_extract_fingerprint(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autotrans_extract_fingerprint", description="Integrity check and dataset fingerprint.")
    _add_dataset(p)
    _add_np(p)
    p.add_argument("--clean", action="store_true")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    from autotrans.planning import api  # after parsing: --help and argument errors never import the planner

    return run(p.prog, lambda: [api.extract_fingerprint_step(d, _check_np(a.np), a.clean) for d in a.d] and None)


def main_plan_experiment(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autotrans_plan_experiment", description="Plan from an existing fingerprint.")
    _add_dataset(p)
    _add_planner(p)
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    from autotrans.planning import api

    return run(p.prog, lambda: [api.plan_step(d, _options(a)) for d in a.d] and None)


def main_preprocess(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autotrans_preprocess", description="Preprocess with existing plans.")
    _add_dataset(p)
    _add_np(p)
    p.add_argument("-c", nargs="+", default=None, metavar="CONFIG")
    p.add_argument("-plans_name", default=DEFAULT_PLANS_NAME)
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    from autotrans.planning import api

    return run(p.prog, lambda: [api.preprocess_step(d, a.c, _check_np(a.np), a.plans_name) for d in a.d] and None)


if __name__ == "__main__":
    sys.exit(main_plan_and_preprocess())
