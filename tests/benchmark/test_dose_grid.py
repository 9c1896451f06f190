"""``autotrans_benchmark --dose`` end to end on a simulated CBCT→CT dataset (CBCT simulated from the real CT of the
FDG PET/CT case; not real CBCT): the two reference baselines (no training) are scored on dose as well, the
reference plans are optimised once per case and shared, and the report gains its dose section."""
from __future__ import annotations

import json
from pathlib import Path

from autotrans.cli.benchmark import main as benchmark_main
from tests.benchmark.conftest import TINY_PLAN


def test_benchmark_dose_section(cbct_roots: Path) -> None:
    out = cbct_roots / "bench"
    argv = ["-d", "31", "-m", "identity", "intensity_map", "-f", "0", "1", "-device", "cpu", *TINY_PLAN,
            "--dose", "protons", "--dose_grid", "6", "-o", str(out)]
    assert benchmark_main(argv) == 0
    task = out / "tasks" / "Dataset031_SimCBCTPelvis" / "identity__autotransPlans__3d_fullres" / "fold_0"
    result = json.loads((task / "result.json").read_text())
    assert result["dose"] == "dose.json"
    dose = json.loads((task / "dose.json").read_text())
    (case,) = dose["cases"]
    assert 0 < dose["cases"][case]["protons_gamma_2%2mm"] <= 100
    # one plan per case, optimised once and reused by the other model
    plans = list((out / "dose_plans" / "Dataset031_SimCBCTPelvis").glob("*/plan.json"))
    assert len(plans) == 2
    other = json.loads((task.parents[1] / "intensity_map__autotransPlans__3d_fullres" / "fold_0" / "dose.json")
                       .read_text())
    assert other["case_details"][case]["protons"]["plan"]["cached"] is True
    report = (out / "report.md").read_text()
    assert "Dose: plan on the real CT, recompute on the synthetic CT" in report
    assert "γ 2%/2mm (%) ↑" in report
    stats = json.loads((out / "statistics.json").read_text())
    assert "protons_gamma_2%2mm" in stats["Dataset031_SimCBCTPelvis"]["dose"]


def test_dose_needs_a_ct_target(roots, capsys) -> None:
    from tests.conftest import install_demo_copy

    install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 21)
    rc = benchmark_main(["-d", "21", "-m", "identity", "-f", "0", "-device", "cpu", "--dose", "photons"])
    err = capsys.readouterr().err
    assert rc != 0 and "--dose evaluates synthetic CT, but no dataset has a CT target" in err
