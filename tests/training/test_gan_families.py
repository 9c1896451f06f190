"""The registered GAN families (pix2pix, cyclegan, srgan) through the engine, via the command line.

Networks are shrunk with the family tests' ``shrink_plans`` (same building code, a few features) so a
2-epoch run takes seconds; what is checked is the engine's contract, not image quality.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import autotrans.families
from autotrans.cli.train import main
from tests.training.helpers import fold_dir, load, shrink

GAN_FAMILIES = ("pix2pix", "cyclegan", "srgan")


@pytest.mark.parametrize("model", GAN_FAMILIES)
def test_gan_family_trains_and_validates(model: str, tiny_brain: Path, roots: dict[str, Path]) -> None:
    if model not in autotrans.families.available_families():
        pytest.skip(f"family {model} is not registered in this checkout")
    shrink(tiny_brain)
    argv = ["11", "3d_fullres", model, "0", "--epochs", "2", "--iterations", "2", "--val_iterations", "1",
            "-device", "cpu", "-num_workers", "0", "--seed", "0", "--disable_val_tta"]
    assert main(argv) == 0
    fd = fold_dir(roots["autotrans_results"], model=model)
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "debug.json"):
        assert (fd / name).is_file(), name
    ckpt = load(fd / "checkpoint_final.pth")
    assert ckpt["family"] == model and ckpt["overrides"]["num_epochs"] == 2
    assert len(ckpt["train_state"]["optimizers"]) >= 2  # generator(s) and discriminator(s)
    losses = [k for k in ckpt["history"] if k.startswith("train/")]
    # every loss is finite in the last epoch (SRGAN's adversarial terms exist only after its pre-training epoch)
    assert losses and all(np.isfinite(ckpt["history"][k][-1]) for k in losses)
    assert np.isfinite(ckpt["history"]["train/loss_g"]).all()
    debug = json.loads((fd / "debug.json").read_text())
    assert debug["family_hparams"]  # the family's resolved_hparams()
    summary = json.loads((fd / "validation" / "summary.json").read_text())
    assert summary["cases"] and all(np.isfinite(summary["mean"][k]) for k in ("mae", "psnr", "ssim"))
    # resume one more epoch from the final checkpoint
    assert main(argv[:5] + ["3"] + argv[6:] + ["--c"]) == 0
    assert load(fd / "checkpoint_final.pth")["epoch"] == 3


@pytest.mark.parametrize("model", GAN_FAMILIES)
def test_gan_family_ct_to_pet(model: str, petct_demo: Path, roots: dict[str, Path]) -> None:
    """The issue's command on the real CT -> PET demo: checkpoints, log, progress.png, summary in SUV."""
    from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
    from tests.training.conftest import TINY_PLAN

    if model not in autotrans.families.available_families():
        pytest.skip(f"family {model} is not registered in this checkout")
    assert main_plan_and_preprocess(["-d", "12", *TINY_PLAN]) == 0
    shrink(roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET")
    argv = ["12", "3d_fullres", model, "0", "--epochs", "2", "--iterations", "5", "-device", "cpu",
            "-num_workers", "0", "--seed", "0", "--save_every", "1"]
    assert main(argv) == 0
    fd = roots["autotrans_results"] / "Dataset012_DemoCTtoPET" / f"{model}__autotransPlans__3d_fullres" / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "progress.png", "debug.json"):
        assert (fd / name).is_file(), name
    assert list(fd.glob("training_log_*.txt"))
    summary = json.loads((fd / "validation" / "summary.json").read_text())
    assert summary["unit"] == "SUV" and summary["cases"]
    assert all(0 <= c["metrics"]["mae"] < 100 for c in summary["cases"].values())


@pytest.mark.parametrize("model", GAN_FAMILIES)
def test_gan_family_resume_is_exact(model: str, tiny_brain: Path, roots: dict[str, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """4 epochs in one run == 2 epochs + --c 2 more, bit for bit (CycleGAN's image pools included)."""
    from tests.training.helpers import tensors_equal

    if model not in autotrans.families.available_families():
        pytest.skip(f"family {model} is not registered in this checkout")
    shrink(tiny_brain)
    argv = ["11", "3d_fullres", model, "0", "--iterations", "2", "--val_iterations", "1", "-device", "cpu",
            "-num_workers", "0", "--seed", "3", "--disable_val_tta"]
    if model == "srgan":  # its phases scale with the run's epochs: 0.3 gives one pre-training epoch for 2 and for 4
        argv += ["-o", "pretrain_fraction=0.3"]
    assert main(argv + ["--epochs", "4"]) == 0
    one = load(fold_dir(roots["autotrans_results"], model=model) / "checkpoint_final.pth")
    monkeypatch.setenv("autotrans_results", str(roots["autotrans_results"].parent / "resumed"))
    assert main(argv + ["--epochs", "2"]) == 0
    assert main(argv + ["--epochs", "4", "--c"]) == 0
    two = load(fold_dir(roots["autotrans_results"].parent / "resumed", model=model) / "checkpoint_final.pth")
    assert one["epoch"] == two["epoch"] == 4
    assert tensors_equal(one["networks"], two["networks"])
    assert tensors_equal(one["train_state"], two["train_state"])
