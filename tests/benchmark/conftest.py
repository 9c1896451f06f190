"""A tiny benchmark grid, run once per session: the real demo brains planned at 4 mm (the training tests'
tiny plan), pix2pix and regression on folds 0 and 1 for 2 iterations, and the two reference baselines (identity,
intensity_map; no training). Tests copy the finished output into their own roots.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autotrans.cli.benchmark import main as benchmark_main
from tests.conftest import install_demo_copy

TINY_PLAN = ["-gpu_memory_target", "0.05", "--overwrite_target_spacing", "4", "4", "4", "-np", "1"]
BUDGET = ["-device", "cpu", "--epochs", "1", "--iterations", "2", "--val_iterations", "1", "-num_workers", "0",
          "--seed", "0", "--disable_tta"]
ROOTS = ("autotrans_raw", "autotrans_preprocessed", "autotrans_results")
NAME = "Dataset021_DemoT2toFLAIR"


GRID_MODELS = ("pix2pix", "regression", "identity", "intensity_map")


def grid_args(folds: tuple[str, ...] = ("0", "1"), models: tuple[str, ...] = GRID_MODELS) -> list[str]:
    return ["-d", "21", "-m", *models, "-f", *folds, *BUDGET, *TINY_PLAN]


@pytest.fixture(scope="session")
def _grid_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("bench_grid")
    with pytest.MonkeyPatch.context() as mp:
        for var in ROOTS:
            (base / var).mkdir()
            mp.setenv(var, str(base / var))
        install_demo_copy(base / "autotrans_raw", "Dataset901_DemoT2toFLAIR", 21)
        assert benchmark_main(grid_args()) == 0
    return base


@pytest.fixture
def grid_roots(_grid_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """This test's own copy of the finished grid (raw, preprocessed, results incl. benchmark/)."""
    out = {}
    for var in ROOTS:
        shutil.copytree(_grid_cache / var, tmp_path / var, symlinks=True)
        monkeypatch.setenv(var, str(tmp_path / var))
        out[var] = tmp_path / var
    return out
