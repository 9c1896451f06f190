"""Every declared console script exists and is importable."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from autotrans.paths import resolve_dataset
from autotrans.errors import ConfigurationError

SETUP = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
REQUIRED = ["autotrans_plan_and_preprocess", "autotrans_extract_fingerprint", "autotrans_plan_experiment",
            "autotrans_preprocess", "autotrans_train", "autotrans_predict", "autotrans_evaluate",
            "autotrans_benchmark", "autotrans_demo", "autotrans_turing"]


def test_all_required_console_scripts_declared_and_importable() -> None:
    import importlib

    declared = dict(re.findall(r'"(autotrans_\w+)=([\w.:]+)"', SETUP))
    assert set(REQUIRED) <= set(declared)
    for name, target in declared.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_resolve_dataset_by_id_name_and_full_name(roots) -> None:
    (roots["autotrans_raw"] / "Dataset003_BrainT2toFLAIR").mkdir()
    assert resolve_dataset(3) == resolve_dataset("BrainT2toFLAIR") == resolve_dataset("Dataset003_BrainT2toFLAIR")
    (roots["autotrans_preprocessed"] / "Dataset004_BrainT2toFLAIR").mkdir()
    with pytest.raises(ConfigurationError, match="ambiguous"):
        resolve_dataset("BrainT2toFLAIR")
