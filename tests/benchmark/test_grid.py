"""The grid runner: skip/resume logic, SLURM emission, and bad input (one line, exit 1, nothing written)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from autotrans.cli.benchmark import main as benchmark_main
from tests.benchmark.conftest import BUDGET, NAME, TINY_PLAN, grid_args
from tests.conftest import install_demo_copy

TASKS = Path("benchmark") / "tasks" / NAME / "pix2pix__autotransPlans__3d_fullres"


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _refuse(*names: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{names} must not run again")
    return fail


def test_second_run_redoes_nothing(grid_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    res = grid_roots["autotrans_results"]
    for fold in ("0", "1"):
        task = res / TASKS / f"fold_{fold}"
        for name in ("result.json", "evaluation.json", "inference.json", "training.json", "predictions/timings.json"):
            assert (task / name).is_file(), name
    before = _snapshot(res / NAME) | _snapshot(res / TASKS)
    import autotrans.evaluation.folders
    import autotrans.inference
    import autotrans.training.run

    monkeypatch.setattr(autotrans.training.run, "run_training", _refuse("training"))
    monkeypatch.setattr(autotrans.inference, "predict_folder", _refuse("prediction"))
    monkeypatch.setattr(autotrans.evaluation.folders, "evaluate_folders", _refuse("evaluation"))
    assert benchmark_main(grid_args()) == 0
    assert _snapshot(res / NAME) | _snapshot(res / TASKS) == before  # checkpoints and task files untouched
    assert (res / "benchmark" / "report.html").is_file()


def test_interrupted_task_resumes_at_its_stage(grid_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold 1 lost its final checkpoint (training interrupted) and everything after: training resumes with
    --c, prediction and evaluation are redone; fold 0 is left alone."""
    res = grid_roots["autotrans_results"]
    fold_dir = res / NAME / "pix2pix__autotransPlans__3d_fullres" / "fold_1"
    final = fold_dir / "checkpoint_final.pth"
    shutil.copyfile(final, fold_dir / "checkpoint_latest.pth")
    kept = final.read_bytes()
    final.unlink()
    task1 = res / TASKS / "fold_1"
    for name in ("result.json", "evaluation.json", "inference.json"):
        (task1 / name).unlink()
    fold0 = _snapshot(res / TASKS / "fold_0")
    calls = []

    def fake_training(settings):  # the resumed run "finishes": the final checkpoint comes back
        calls.append(settings)
        final.write_bytes(kept)

    import autotrans.training.run

    monkeypatch.setattr(autotrans.training.run, "run_training", fake_training)
    assert benchmark_main(grid_args()) == 0
    assert [(s.fold, s.continue_training, s.num_epochs, s.iterations) for s in calls] == [("1", True, 1, 2)]
    assert (task1 / "result.json").is_file() and (task1 / "evaluation.json").is_file()
    assert _snapshot(res / TASKS / "fold_0") == fold0


def test_emit_slurm_writes_jobs_and_runs_nothing(roots: dict[str, Path], tmp_path: Path) -> None:
    from autotrans.families.base import available_families

    install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 21)
    models = ["pix2pix", "cyclegan", "intensity_map"]
    models += ["ldm", "ldm_controlnet"] if "ldm" in available_families() else []
    out = tmp_path / "slurm"
    assert benchmark_main(["-d", "21", "-m", *models, "-f", "0", "2", *BUDGET, *TINY_PLAN, "--emit_slurm", str(out)]) == 0
    tasks = (out / "tasks.txt").read_text().splitlines()
    assert len(tasks) == len(models) * 2
    for line, (m, f) in zip(tasks, [(m, f) for m in models for f in ("0", "2")]):
        assert line.startswith(f"autotrans_benchmark -d {NAME} -m {m} -f {f} -c 3d_fullres -p autotransPlans")
        assert "--epochs 1 --iterations 2 --val_iterations 1" in line and "-device cpu" in line
        assert "-gpu_memory_target 0.05" in line and line.endswith("--no_report")
        assert f"-o {roots['autotrans_results'] / 'benchmark'}" in line
    ae = (out / "autoencoder_tasks.txt").read_text().splitlines()
    if "ldm" in models:
        assert len(ae) == 2 and all(a.startswith('test -f "$autotrans_results/') for a in ae)
        assert "autotrans_train Dataset021_DemoT2toFLAIR 3d_fullres autoencoder 0 -p autotransPlans --c" in ae[0]
        prior = (out / "ldm_prior_tasks.txt").read_text().splitlines()  # ldm_controlnet's stage, after the autoencoder
        assert len(prior) == 2 and "3d_fullres ldm_prior 2 -p autotransPlans --c" in prior[1]
    else:
        assert ae == []
    array = (out / "array.sbatch").read_text()
    assert array.startswith("#!/bin/bash") and "#SBATCH" in array and "SLURM_ARRAY_TASK_ID" in array
    assert "--gres" not in array  # -device cpu
    assert "--prepare_only" in (out / "prepare.sbatch").read_text()
    assert "--report_only" in (out / "report.sbatch").read_text()
    submit = (out / "submit.sh").read_text()
    assert "dep=$prep" in submit and "--dependency=afterok:$dep" in submit and "--dependency=afterany:$main" in submit
    if "ldm" in models:
        assert "for stage in autoencoder ldm_prior; do" in submit  # chained in dependency order
    assert os.access(out / "submit.sh", os.X_OK)
    stage_files = ["ldm_prior_tasks.txt"] if "ldm" in models else []
    assert sorted(p.name for p in out.iterdir()) == sorted(["array.sbatch", "autoencoder_tasks.txt", "prepare.sbatch",
                                                            "report.sbatch", "submit.sh", "tasks.txt", *stage_files])
    assert not any(roots["autotrans_preprocessed"].iterdir()) and not any(roots["autotrans_results"].iterdir())


@pytest.mark.parametrize("args, message", [
    (["-d", "21", "-m", "pix2pixx", "-f", "0"], "unknown model 'pix2pixx' (did you mean 'pix2pix'?)"),
    (["-d", "21", "-m", "identiy", "-f", "0"], "unknown model 'identiy' (did you mean 'identity'?)"),
    (["-d", "77", "-m", "pix2pix", "-f", "0"], "dataset '77' not found"),
    (["-d", "21", "-m", "pix2pix", "-f", "0", "4"], "fold 4 is out of range for Dataset021_DemoT2toFLAIR: it has 4 folds"),
    (["-d", "21", "-m", "pix2pix", "-f", "all"], "fold 'all' has no held-out cases"),
    (["-d", "21", "-m", "pix2pix", "-f", "0", "--epochs", "0"], "--epochs 0: must be >= 1"),
])
def test_bad_input_one_line_nothing_written(roots: dict[str, Path], tmp_path: Path, capsys, args: list[str],
                                            message: str) -> None:
    install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 21)
    before = {p for p in tmp_path.rglob("*")}
    rc = benchmark_main([*args, "-device", "cpu", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("autotrans_benchmark: error: ") and message in err[0], err
    assert {p for p in tmp_path.rglob("*")} == before


def test_failing_task_does_not_stop_the_grid(grid_roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                             capsys) -> None:
    """A task that fails is reported at the end (exit 1); the finished ones still make the report."""
    res = grid_roots["autotrans_results"]
    (res / NAME / "pix2pix__autotransPlans__3d_fullres" / "fold_1" / "checkpoint_final.pth").unlink()
    (res / TASKS / "fold_1" / "result.json").unlink()
    (res / "benchmark" / "report.md").unlink()

    def broken(settings):
        raise RuntimeError("out of memory (simulated)")

    import autotrans.training.run

    monkeypatch.setattr(autotrans.training.run, "run_training", broken)
    assert benchmark_main(grid_args()) == 1
    err = capsys.readouterr().err
    assert "1 task(s) failed" in err and f"{NAME}/pix2pix__autotransPlans__3d_fullres/fold_1: RuntimeError: out of " \
        "memory (simulated)" in err
    md = (res / "benchmark" / "report.md").read_text()
    assert "| pix2pix | 1 |" in md  # fold 0's case only


def test_baseline_that_does_not_apply_is_skipped_with_a_note(grid_roots: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """identity on a cross-modality dataset (simulated here: the brains' plan says MR -> MR) finishes as skipped:
    result.json holds the reason, the report says it in the opening paragraph and shows no row."""
    from autotrans.baselines.identity import IdentityBaseline
    from autotrans.utils.files import load_json

    res = grid_roots["autotrans_results"]
    shutil.rmtree(res / "benchmark" / "tasks" / NAME / "identity__autotransPlans__3d_fullres")
    reason = "source channel 0 (MR) and target (CT) are different modalities; identity is skipped"
    monkeypatch.setattr(IdentityBaseline, "not_applicable", lambda self: reason)
    assert benchmark_main(grid_args()) == 0
    result = load_json(res / "benchmark" / "tasks" / NAME / "identity__autotransPlans__3d_fullres" / "fold_0" /
                       "result.json")
    assert result["baseline"] and result["skipped"] == f"identity: {reason}"
    md = (res / "benchmark" / "report.md").read_text()
    opening = md.split("\n\n")[2]
    assert opening.startswith(f"{NAME}: best model") and f"Baseline identity skipped: {reason}." in opening
    assert "best baseline intensity_map" in opening and "| *identity (baseline)* |" not in md
