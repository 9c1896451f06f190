"""The regression family: its loss sees only mask voxels, a few steps lower it on a real pair, its optional
SSIM and perceptual terms, its plan section and its overrides. (The shared contract is in test_contract.py.)"""
from __future__ import annotations

import pytest
import torch

from autotrans.errors import ConfigurationError
from autotrans.families.losses import masked_ssim_loss
from autotrans.training.settings import validate_overrides
from tests.families.helpers import SMALL, make_family, real_batch


def test_loss_ignores_voxels_outside_the_mask(demo_planned) -> None:
    fam = make_family("regression", demo_planned[0])
    batch = real_batch(demo_planned[1], n=1, patch=SMALL)
    mask = batch["mask"].clone()
    mask[..., : SMALL[0] // 2, :, :] = 0  # the central patch lies inside the brain: half of it leaves the mask
    assert 0 < float(mask.mean()) < 1
    pred = fam.eval().predict_patch(batch["source"])
    loss, terms = fam.loss(pred, batch["target"], mask)
    changed = batch["target"].clone()
    changed[mask == 0] = torch.rand_like(changed[mask == 0]) * 2 - 1
    assert torch.equal(fam.loss(pred, changed, mask)[0], loss)
    inside = batch["target"].clone()
    inside[mask > 0] += 0.5
    assert not torch.equal(fam.loss(pred, inside, mask)[0], loss)
    assert set(terms) == {"loss_l1", "loss"}  # SSIM and perceptual terms are off by default


def test_a_few_steps_lower_the_masked_l1_on_a_real_pair(demo_planned) -> None:
    fam = make_family("regression", demo_planned[0], patch=(32, 32, 32), overrides={"num_epochs": 10})
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=(32, 32, 32))
    first = fam.validation_step(batch)["loss_l1"]
    for step in range(15):
        fam.train_step(batch, step)
    last = fam.validation_step(batch)["loss_l1"]
    assert last < 0.8 * first, (first, last)
    assert fam.eval().predict_patch(batch["source"]).abs().max() <= 1.0


def test_ssim_and_perceptual_terms(demo_planned, tmp_path) -> None:
    batch = real_batch(demo_planned[1], n=1, patch=SMALL)
    t, m = batch["target"], batch["mask"]
    assert float(masked_ssim_loss(t, t, m)) == pytest.approx(0.0, abs=1e-5)
    assert float(masked_ssim_loss(t + 0.3 * torch.randn_like(t), t, m)) > 0.1
    net = torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1))
    net.save(str(tmp_path / "features.pt"))
    fam = make_family("regression", demo_planned[0], overrides={"ssim_weight": 0.5,
                                                                "perceptual_weights": str(tmp_path / "features.pt")})
    fam.configure_optimizers()
    out = fam.train_step(batch, 0)
    assert {"loss_l1", "loss_ssim", "loss_perceptual", "loss"} <= set(out)
    expected = out["loss_l1"] + 0.5 * out["loss_ssim"] + 0.1 * out["loss_perceptual"]
    assert out["loss"] == pytest.approx(expected, rel=1e-4)


def test_overrides_and_plan_section(demo_planned) -> None:
    assert validate_overrides("regression", {"l1_weight": 1, "ssim_weight": 0.2}) == {"l1_weight": 1,
                                                                                         "ssim_weight": 0.2}
    with pytest.raises(ConfigurationError, match="not a hyperparameter of regression"):
        validate_overrides("regression", {"lambda_l1": 10})
    fam = make_family("regression", demo_planned[0], overrides={"l1_weight": 0.0})
    with pytest.raises(ConfigurationError, match="every loss term is off"):
        fam.configure_optimizers()
    # sized by the one rule: the U-Net's own step, so at least the batch the other U-Net families get
    fams = demo_planned[0].configuration("3d_fullres").data["families"]
    sec = fams["regression"]
    assert sec["generator"] == "planned_unet" and sec["parameters"] == {"generator": fams["budget"]["unet_parameters"]}
    assert sec["batch_size"] >= fams["pix2pix"]["batch_size"]
