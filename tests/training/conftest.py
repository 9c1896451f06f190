"""Tiny planned datasets for the engine tests, planned once per session and copied into each test's roots.

The real demo brains (T2 -> FLAIR, 4 cases, lesion maps for 2) are planned at 4 mm with a tiny GPU memory
target: volumes of about 34 x 42 x 34 voxels and a 24 x 28 x 24 patch, so an epoch takes well under a second.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tests.training.families  # noqa: F401  (registers test_residual / test_moments)
from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
from tests.conftest import install_demo_copy

TINY_PLAN = ["-np", "1", "-gpu_memory_target", "0.05", "--overwrite_target_spacing", "4", "4", "4"]
NAME = "Dataset011_DemoT2toFLAIR"


def _plan(base: Path, unpaired: bool) -> Path:
    roots = {v: base / v for v in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results")}
    for p in roots.values():
        p.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        for var, p in roots.items():
            mp.setenv(var, str(p))
        raw = install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 11)
        if unpaired:  # CycleGAN data: two source-only and two target-only cases
            for case in ("MS-patient07", "MS-patient19"):
                (raw / "targetsTr" / f"{case}.nii.gz").unlink()
            for case in ("TCGA-DU-7294", "TCGA-FG-6692"):
                (raw / "imagesTr" / f"{case}_0000.nii.gz").unlink()
            dj = json.loads((raw / "dataset.json").read_text())
            dj["paired"] = False
            (raw / "dataset.json").write_text(json.dumps(dj))
        assert main_plan_and_preprocess(["-d", "11", *TINY_PLAN]) == 0
    return base


@pytest.fixture(scope="session")
def _tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _plan(tmp_path_factory.mktemp("tiny_brain"), unpaired=False)


@pytest.fixture(scope="session")
def _tiny_unpaired_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _plan(tmp_path_factory.mktemp("tiny_brain_unpaired"), unpaired=True)


def _install(cache: Path, roots: dict[str, Path]) -> Path:
    for var in ("autotrans_raw", "autotrans_preprocessed"):
        shutil.copytree(cache / var / NAME, roots[var] / NAME)
    return roots["autotrans_preprocessed"] / NAME


@pytest.fixture
def tiny_brain(_tiny_cache: Path, roots: dict[str, Path]) -> Path:
    """Preprocessed folder of the tiny paired brain dataset (id 11) inside this test's roots."""
    return _install(_tiny_cache, roots)


@pytest.fixture
def tiny_unpaired(_tiny_unpaired_cache: Path, roots: dict[str, Path]) -> Path:
    return _install(_tiny_unpaired_cache, roots)


def add_configuration(pre: Path, name: str, **values) -> None:
    """A user configuration in plans.json (nnU-Net style), e.g. a smaller patch inheriting 3d_fullres."""
    path = pre / "autotransPlans.json"
    plans = json.loads(path.read_text())
    plans["configurations"][name] = {"inherits_from": "3d_fullres", **values}
    path.write_text(json.dumps(plans, indent=1))
