"""The regression family through the engine, via the command line: checkpoints, validation in physical units,
and an exact resume (same engine contract as the GAN families, on the shrunk real brain plan)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli.train import main
from tests.training.helpers import fold_dir, load, shrink, tensors_equal


def test_regression_trains_validates_and_resumes_exactly(tiny_brain: Path, roots: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shrink(tiny_brain)
    argv = ["11", "3d_fullres", "regression", "0", "--iterations", "2", "--val_iterations", "1", "-device", "cpu",
            "-num_workers", "0", "--seed", "3", "--disable_val_tta", "-o", "ssim_weight=0.1", "-o",
            "poly_exponent=0"]  # a constant LR: the poly schedule depends on --epochs (as nnU-Net's), the state not
    assert main(argv + ["--epochs", "4"]) == 0
    fd = fold_dir(roots["autotrans_results"], model="regression")
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "debug.json"):
        assert (fd / name).is_file(), name
    one = load(fd / "checkpoint_final.pth")
    assert one["family"] == "regression" and list(one["train_state"]["optimizers"]) == ["generator"]
    assert np.isfinite(one["history"]["train/loss_l1"]).all() and np.isfinite(one["history"]["train/loss_ssim"]).all()
    assert json.loads((fd / "debug.json").read_text())["family_hparams"]["ssim_weight"] == 0.1
    summary = json.loads((fd / "validation" / "summary.json").read_text())
    assert summary["cases"] and all(np.isfinite(summary["mean"][k]) for k in ("mae", "psnr", "ssim"))
    # 4 epochs in one run == 2 epochs + --c 2 more, bit for bit (SGD momentum buffers, RNG, data order)
    monkeypatch.setenv("autotrans_results", str(roots["autotrans_results"].parent / "resumed"))
    assert main(argv + ["--epochs", "2"]) == 0
    assert main(argv + ["--epochs", "4", "--c"]) == 0
    two = load(fold_dir(roots["autotrans_results"].parent / "resumed", model="regression") / "checkpoint_final.pth")
    assert one["epoch"] == two["epoch"] == 4
    assert tensors_equal(one["networks"], two["networks"])
    assert tensors_equal(one["train_state"], two["train_state"])
