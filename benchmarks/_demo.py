"""The benchmarks' demo data: the shipped T2 -> FLAIR brains, planned and preprocessed once under a folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

#: the tests' tiny plan (4 mm, small memory target): a CPU smoke run of a benchmark, figures meaningless
TINY_PLAN = ["-np", "1", "-gpu_memory_target", "0.05", "--overwrite_target_spacing", "4", "4", "4"]


def prepare_demo(base: Path, tiny: bool = False) -> str:
    """Plan and preprocess the demo brains under ``base`` (default plan, or the tiny one); returns the dataset id.

    Points the three ``autotrans_*`` roots at ``base``; a folder already planned is reused as it is."""
    for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
        (base / var).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(base / var)
    if not list((base / "autotrans_preprocessed").glob("Dataset901_*/autotransPlans.json")):
        from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
        from autotrans.dataset.demo import demo_data_dir

        raw = base / "autotrans_raw" / "Dataset901_DemoT2toFLAIR"
        if not raw.is_dir():
            shutil.copytree(demo_data_dir() / "Dataset901_DemoT2toFLAIR", raw)
        assert main_plan_and_preprocess(["-d", "901", *(TINY_PLAN if tiny else ["-np", "1"])]) == 0
    return "901"
