"""Converters from public translation benchmarks (as distributed) to the autotrans raw format.

Each kind is a function ``plan_<kind>(source, direction, region) -> ConversionPlan`` that only lists
files; ``convert`` then checks and writes the plan with the shared writer in ``common``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np

from autotrans.dataset.converters.brats import plan_brats
from autotrans.dataset.converters.common import (
    FILE_MODES,
    CaseSource,
    ConversionPlan,
    body_mask_from_ct,
    resample_to_grid,
    write_raw_dataset,
)
from autotrans.dataset.converters.petct import plan_autopet, plan_hecktor
from autotrans.dataset.converters.synthrad import plan_synthrad
from autotrans.errors import ConfigurationError

PlanFn = Callable[[Path, "str | None", "str | None"], ConversionPlan]

KINDS: dict[str, PlanFn] = {
    "synthrad2023": functools.partial(plan_synthrad, "synthrad2023"),
    "synthrad2025": functools.partial(plan_synthrad, "synthrad2025"),
    "brats": plan_brats,
    "autopet": plan_autopet,
    "hecktor": plan_hecktor,
}

__all__ = [
    "FILE_MODES",
    "KINDS",
    "CaseSource",
    "ConversionPlan",
    "body_mask_from_ct",
    "convert",
    "hold_out",
    "resample_to_grid",
]


def hold_out(plan: ConversionPlan, fraction: float, seed: int = 0) -> None:
    """Move a reproducible random ``fraction`` of the training cases to the test split (``Ts``).

    Benchmarks that publish no test targets (SynthRAD, BraTS, autoPET) need a held-out set carved from
    training; the choice depends only on the sorted case ids and ``seed``, so reruns agree.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigurationError(f"--test-fraction {fraction}: must be in [0, 1)")
    tr = sorted(c.case_id for c in plan.cases if c.split == "Tr")
    n = int(round(fraction * len(tr)))
    if n == 0:
        return
    chosen = set(np.random.default_rng(seed).choice(tr, size=n, replace=False).tolist())
    for c in plan.cases:
        if c.case_id in chosen:
            c.split = "Ts"


def convert(
    kind: str,
    source: str | os.PathLike,
    dataset_id: int,
    name: str | None = None,
    direction: str | None = None,
    region: str | None = None,
    mode: str = "copy",
    resample: bool = True,
    overwrite: bool = False,
    skip_incomplete: bool = False,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> Path:
    """Convert the public dataset ``kind`` found under ``source`` into ``$autotrans_raw``; return the folder."""
    if kind not in KINDS:
        raise ConfigurationError(f"unknown dataset kind {kind!r} (valid: {', '.join(KINDS)})")
    src = Path(source).expanduser()
    if not src.is_dir():
        raise ConfigurationError(f"{src}: source folder not found")
    plan = KINDS[kind](src, direction, region)
    hold_out(plan, test_fraction, seed)
    return write_raw_dataset(
        plan, dataset_id, name, mode=mode, resample=resample, overwrite=overwrite, skip_incomplete=skip_incomplete
    )
