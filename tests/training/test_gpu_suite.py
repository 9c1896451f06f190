"""benchmarks/gpu_suite.py's CPU fallback (issue 17.4): the whole path runs end to end on the tiny plan."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_cpu_fallback_runs_end_to_end(tiny_brain: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)  # type: ignore[union-attr]
    md = tmp_path / "suite.md"
    report = suite.main(["-d", "11", "-device", "cpu", "--tiny", "--families", "regression", "ldm", "--md", str(md)])
    assert report["tiny"] and [r["family"] for r in report["train"]] == ["regression", "ldm"]
    for row in report["train"]:
        assert row["step_ms"] > 0 and 0 <= row["data_wait"] <= 1 and row["peak_gb"] is None  # no CUDA: unmeasured
    assert [r["family"] for r in report["window"]] == ["regression"] and report["window"][0]["seconds"] > 0
    assert report["latent"][0]["family"] == "ldm" and report["latent"][0]["steps"] == 2
    text = md.read_text()
    assert "| regression |" in text and "| ldm | 2 |" in text and "n/a" in text
