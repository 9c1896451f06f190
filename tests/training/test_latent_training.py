"""The latent models through ``autotrans_train`` and ``autotrans_predict`` on the real demo brains (tiny plan).

One chain per test module keeps CI short: the first latent model trains the fold's autoencoder automatically,
the others reuse it; every model predicts whole real volumes, which must come back in the input's geometry.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.cli.predict import main as predict_main
from autotrans.cli.train import main
from tests.training.helpers import fold_dir, load, shrink

LATENT = ("ldm", "ldm_controlnet", "bbdm", "flow_matching")
ARGS = ["--epochs", "2", "--iterations", "2", "--val_iterations", "1", "-device", "cpu", "-num_workers", "0",
        "--seed", "0", "--disable_val_tta", "-o", "sampling_steps=2"]
AE_ARGS = ARGS[:-2]  # the autoencoder does not sample: -o sampling_steps is refused for it


pytestmark = pytest.mark.usefixtures("one_thread")


def test_latent_models_train_share_one_autoencoder_and_predict(tiny_brain: Path, roots: dict[str, Path],
                                                               tmp_path: Path) -> None:
    shrink(tiny_brain)
    results = roots["autotrans_results"]
    ae_final = fold_dir(results, model="autoencoder") / "checkpoint_final.pth"
    prior_final = fold_dir(results, model="ldm_prior") / "checkpoint_final.pth"
    raw_images = roots["autotrans_raw"] / "Dataset011_DemoT2toFLAIR" / "imagesTr"
    inputs = tmp_path / "in"
    inputs.mkdir()
    case = "MS-patient07_0000.nii.gz"
    shutil.copy(raw_images / case, inputs / case)
    for i, model in enumerate(LATENT):
        assert main(["11", "3d_fullres", model, "0", *ARGS]) == 0
        if i == 0:  # the first latent model trained the autoencoder (no whole-volume validation there)
            assert ae_final.is_file() and not (ae_final.parent / "validation").exists()
            ae_stamp = ae_final.stat().st_mtime_ns
            ae = load(ae_final)
            assert ae["family"] == "autoencoder" and set(ae["networks"]) == {"ae", "disc"}  # one for both domains
            assert float(ae["networks"]["ae"]["scale"]) != 1.0  # the latent scale was estimated
        assert ae_final.stat().st_mtime_ns == ae_stamp  # shared, never retrained
        if model == "ldm_controlnet":  # its frozen base, the fold's prior, was trained first, on the same autoencoder
            prior = load(prior_final)
            assert prior["family"] == "ldm_prior" and not (prior_final.parent / "validation").exists()
            assert all(np.array_equal(v.numpy(), ae["networks"]["ae"][k].numpy())
                       for k, v in prior["networks"]["ae"].items())
        fd = fold_dir(results, model=model)
        ckpt = load(fd / "checkpoint_final.pth")
        assert ckpt["family"] == model and ckpt["overrides"]["autoencoder_checkpoint"] == str(ae_final)
        # self-contained: the autoencoder (and the ControlNet's frozen prior) travel with the model
        assert all(np.array_equal(v.numpy(), ae["networks"]["ae"][k].numpy()) for k, v in ckpt["networks"]["ae"].items())
        if model == "ldm_controlnet":
            assert ckpt["overrides"]["prior_checkpoint"] == str(prior_final)
            assert all(np.array_equal(v.numpy(), prior["networks"]["ema_unet"][k].numpy())
                       for k, v in ckpt["networks"]["unet"].items())
        assert any(k.startswith("ema_") for k in ckpt["networks"])  # EMA weights, used for prediction
        history = ckpt["history"]
        assert any(k.startswith("val/") for k in history)
        summary = json.loads((fd / "validation" / "summary.json").read_text())
        assert summary["cases"] and all(np.isfinite(summary["mean"][k]) for k in ("mae", "psnr", "ssim"))
        # whole-volume prediction of a real case, in the input's exact geometry
        out = tmp_path / f"out_{model}"
        assert predict_main(["-i", str(inputs), "-o", str(out), "-d", "11", "-c", "3d_fullres", "-m", model,
                             "-f", "0", "-device", "cpu", "--steps", "2", "--seed", "1", "-step_size", "1",
                             "-npp", "0", "-nps", "0"]) == 0
        ref, pred = sitk.ReadImage(str(inputs / case)), sitk.ReadImage(str(out / "MS-patient07.nii.gz"))
        assert pred.GetSize() == ref.GetSize() and pred.GetSpacing() == ref.GetSpacing()
        assert pred.GetOrigin() == ref.GetOrigin() and pred.GetDirection() == ref.GetDirection()
        assert np.isfinite(sitk.GetArrayFromImage(pred)).all()
        timings = json.loads((out / "timings.json").read_text())
        assert "MS-patient07" in json.dumps(timings)


def test_autoencoder_trains_alone_and_resumes(tiny_brain: Path, roots: dict[str, Path]) -> None:
    shrink(tiny_brain)
    assert main(["11", "3d_fullres", "autoencoder", "0", *AE_ARGS]) == 0
    fd = fold_dir(roots["autotrans_results"], model="autoencoder")
    assert load(fd / "checkpoint_final.pth")["epoch"] == 2
    argv = ["11", "3d_fullres", "autoencoder", "0", *AE_ARGS]
    argv[argv.index("--epochs") + 1] = "3"
    assert main([*argv, "--c"]) == 0
    assert load(fd / "checkpoint_final.pth")["epoch"] == 3


def test_predicting_with_the_autoencoder_is_refused(tiny_brain: Path, roots: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    shrink(tiny_brain)
    assert main(["11", "3d_fullres", "autoencoder", "0", *AE_ARGS]) == 0
    raw_images = roots["autotrans_raw"] / "Dataset011_DemoT2toFLAIR" / "imagesTr"
    out = tmp_path / "out"
    code = predict_main(["-i", str(raw_images), "-o", str(out), "-d", "11", "-m", "autoencoder", "-device", "cpu",
                         "-npp", "0", "-nps", "0"])
    assert code != 0 and "does not translate" in capsys.readouterr().err
    assert not list(out.glob("*.nii.gz"))
