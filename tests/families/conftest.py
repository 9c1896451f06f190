"""The demo T2->FLAIR dataset planned and preprocessed once per session (takes a few seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest

from autotrans.planning.plans import Plans
from tests.conftest import install_demo_copy


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Every test of this folder runs single-threaded (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def demo_planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plans, Path]:
    """(plans, preprocessed 3d_fullres data folder) of the brain demo as Dataset011."""
    from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess

    tmp = tmp_path_factory.mktemp("families_roots")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
            (tmp / var).mkdir()
            mp.setenv(var, str(tmp / var))
        install_demo_copy(tmp / "autotrans_raw", "Dataset901_DemoT2toFLAIR", 11)
        assert main_plan_and_preprocess(["-d", "11", "-np", "1"]) == 0
    pre = tmp / "autotrans_preprocessed" / "Dataset011_DemoT2toFLAIR"
    plans = Plans.load(pre / "autotransPlans.json")
    return plans, pre / plans.configuration("3d_fullres").data_identifier
