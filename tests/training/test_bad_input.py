"""Bad input: one clear line on stderr, a non-zero exit, and nothing already written is touched."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from autotrans.cli.train import main
from tests.training.helpers import fold_dir

FAST = ["--epochs", "1", "--iterations", "2", "--val_iterations", "0", "-device", "cpu", "-num_workers", "0",
        "--seed", "0", "--disable_val_tta"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(argv: list[str], capsys: pytest.CaptureFixture, expected: str) -> None:
    capsys.readouterr()
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autotrans_train")]
    assert len(err) == 1 and "error" in err[0], err
    assert expected in err[0], err[0]


@pytest.mark.parametrize("argv, expected", [
    (["11", "3d_fullres", "pix3pix", "0"], "unknown model"),
    (["11", "3d_halfres", "test_residual", "0"], "unknown configuration"),
    (["11", "3d_fullres", "test_residual", "9"], "outside the split"),
    (["11", "3d_fullres", "test_residual", "one"], "fold 'one'"),
    (["11", "3d_fullres", "test_residual", "0", "-o", "lambda"], "key=value"),
    (["11", "3d_fullres", "test_residual", "0", "--epochs", "0"], "--epochs 0"),
    (["11", "3d_fullres", "test_residual", "0", "--val"], "checkpoint not found"),
    (["99", "3d_fullres", "test_residual", "0"], "not found"),
])
def test_rejected_arguments(argv: list[str], expected: str, tiny_brain: Path, roots: dict[str, Path],
                            capsys: pytest.CaptureFixture) -> None:
    fails(argv + ["-device", "cpu", "-num_workers", "0"], capsys, expected)
    assert not any(roots["autotrans_results"].iterdir())  # nothing written


def test_not_preprocessed(brain_demo: Path, roots: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    fails(["11", "3d_fullres", "test_residual", "0", *FAST], capsys, "not preprocessed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none(tiny_brain: Path, capsys: pytest.CaptureFixture) -> None:
    fails(["11", "3d_fullres", "test_residual", "0", "-device", "cuda"], capsys, "no CUDA device")


def test_corrupt_or_foreign_checkpoint_with_continue(tiny_brain: Path, roots: dict[str, Path],
                                                     capsys: pytest.CaptureFixture) -> None:
    argv = ["11", "3d_fullres", "test_residual", "0", *FAST]
    assert main(argv) == 0
    fd = fold_dir(roots["autotrans_results"])
    model_dir = fd.parent
    final = fd / "checkpoint_final.pth"
    good = final.read_bytes()
    final.write_bytes(good[: len(good) // 3])  # truncated (a crash of a non-atomic writer, a bad copy)
    before = snapshot(model_dir)
    fails(argv + ["--c"], capsys, "corrupt or unreadable checkpoint")
    assert snapshot(model_dir) == before
    # a checkpoint of other plans (the plan was edited since) is refused the same way
    final.write_bytes(good)
    plans_file = tiny_brain / "autotransPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["batch_size"] = 3
    plans_file.write_text(json.dumps(plans))
    before = snapshot(model_dir)
    fails(argv + ["--c"], capsys, "different plans")
    assert snapshot(model_dir) == before
    # another model's checkpoint in this fold folder
    foreign = fold_dir(roots["autotrans_results"], model="test_moments")
    foreign.mkdir(parents=True)
    (foreign / "checkpoint_final.pth").write_bytes(good)
    plans["configurations"]["3d_fullres"]["batch_size"] = 2
    plans_file.write_text(json.dumps(plans))
    fails(["11", "3d_fullres", "test_moments", "0", *FAST, "--c"], capsys, "checkpoint of model 'test_residual'")


def test_command_line_process(tiny_brain: Path, roots: dict[str, Path]) -> None:
    """The real process: argv parsing, logging setup, the error boundary (no traceback), exit status."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "autotrans.cli.train", "11", "3d_fullres", "pix2pix", "7",
                           "-device", "cpu"], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("autotrans_train: error:")]
    assert len(errors) == 1 and "fold '7' outside the split file" in errors[0]
