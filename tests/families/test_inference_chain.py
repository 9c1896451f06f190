"""A trained GAN family through the checkpoint file and the real inference chain (load, sliding window, export)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autotrans.dataset.demo import demo_data_dir
from autotrans.inference import load_predictor
from autotrans.planning.planner import plans_hash
from autotrans.results import model_folder_name, save_checkpoint
from autotrans.utils.files import save_json
from tests.families.helpers import CONFIG, make_family, real_batch


@pytest.mark.parametrize("name", ["regression", "pix2pix", "cyclegan", "srgan"])
def test_trained_family_predicts_through_the_chain(name: str, demo_planned, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fam = make_family(name, demo_planned[0], patch=(32, 32, 32), overrides={"pretrain_fraction": 0})
    fam.configure_optimizers()
    fam.train_step(real_batch(demo_planned[1], n=1), step=0)
    plans = fam.plans
    pre = demo_planned[1].parent
    folder = tmp_path / "results" / pre.name / model_folder_name(name, plans.name, CONFIG)
    folder.mkdir(parents=True)
    save_json(plans.data, folder / "plans.json")
    for f in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(pre / f, folder / f)
    save_checkpoint({"family": name, "configuration": CONFIG, "plans_sha1": plans_hash(plans.data),
                     "overrides": dict(fam.overrides), "networks": fam.state_dict()},
                    folder / "fold_0" / "checkpoint_final.pth")
    monkeypatch.setenv("autotrans_results", str(tmp_path / "results"))

    predictor = load_predictor(device="cpu", tta=False, step_size=1.0)  # few tiles: seconds on a CPU
    loaded = predictor.model.folds[0].family
    x = real_batch(demo_planned[1], n=1)["source"]
    assert torch.equal(loaded.predict_patch(x), fam.eval().predict_patch(x))

    src = next((demo_data_dir() / "Dataset901_DemoT2toFLAIR" / "imagesTr").glob("*_0000.nii.gz"))
    out = predictor.predict_image(str(src))
    ref = sitk.ReadImage(str(src))
    assert out.GetSize() == ref.GetSize() and out.GetSpacing() == pytest.approx(ref.GetSpacing())
    arr = sitk.GetArrayFromImage(out)
    assert np.isfinite(arr).all() and arr.std() > 0
