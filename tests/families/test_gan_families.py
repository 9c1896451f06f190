"""Family-specific behaviour: Pix2Pix LR schedule and loss composition, CycleGAN pools/identity/masks and
multi-channel sources, SRGAN warm-up, adversarial variants and a user-supplied perceptual network."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from autotrans.errors import ConfigurationError
from autotrans.families.losses import feature_l1
from tests.families.helpers import SMALL, changed, make_family, real_batch, snapshot


@pytest.fixture
def batch(demo_planned) -> dict[str, torch.Tensor]:
    return real_batch(demo_planned[1], n=1, patch=SMALL)


# --- pix2pix ------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Detected call of")  # epochs are stepped here without optimizer steps
def test_pix2pix_lr_schedule(demo_planned) -> None:
    fam = make_family("pix2pix", demo_planned[0], overrides={"num_epochs": 10})
    fam.configure_optimizers()
    lrs = []
    for epoch in range(10):
        lrs.append([o.param_groups[0]["lr"] for o in fam.optimizers().values()])
        fam.on_epoch_end(epoch, 10)
    assert lrs[0] == lrs[5] == [2e-4, 2e-4]
    assert lrs[9] == pytest.approx([2e-4 * 0.2] * 2)  # (N - e) / (N - N/2) at e = N - 1
    assert all(a[0] >= b[0] for a, b in itertools.pairwise(lrs))
    # resuming at epoch 10 with num_epochs raised to 40: the new run's schedule (still constant until 20)
    longer = make_family("pix2pix", demo_planned[0], overrides={"num_epochs": 40})
    longer.configure_optimizers()
    longer.load_train_state_dict(fam.train_state_dict())
    assert [s.last_epoch for s in longer.schedulers().values()] == [10, 10]
    assert [o.param_groups[0]["lr"] for o in longer.optimizers().values()] == [2e-4, 2e-4]
    for epoch in range(10, 30):
        longer.on_epoch_end(epoch, 40)
    assert longer.optimizers()["generator"].param_groups[0]["lr"] == pytest.approx(2e-4 * 10 / 20)


def test_pix2pix_losses(demo_planned, batch) -> None:
    fam = make_family("pix2pix", demo_planned[0])
    assert fam.discriminator.model[0].in_channels == 2  # conditional: source + image
    fam.configure_optimizers()
    out = fam.train_step(batch, 0)
    assert out["loss_g"] == pytest.approx(out["loss_g_adv"] + 100.0 * out["loss_l1"], rel=1e-5)
    fam = make_family("pix2pix", demo_planned[0], overrides={"lambda_l1": 0.0})
    fam.configure_optimizers()
    out = fam.train_step({**batch, "mask": torch.zeros_like(batch["mask"])}, 0)
    assert out["loss_l1"] == 0.0 and out["loss_g"] == pytest.approx(out["loss_g_adv"])


# --- cyclegan -----------------------------------------------------------------------------------
def test_cyclegan_step(demo_planned, batch) -> None:
    fam = make_family("cyclegan", demo_planned[0], overrides={"pool_size": 4})
    assert fam.paired_batches is False and fam.use_identity
    fam.configure_optimizers()
    out = fam.train_step(batch, 0)
    assert len(fam.pool_a) == len(fam.pool_b) == 1 and out["loss_identity"] > 0
    assert out["loss_g"] == pytest.approx(out["loss_g_adv"] + 10 * out["loss_cycle"] + 5 * out["loss_identity"], rel=1e-5)
    # each domain's own mask: nothing inside either mask -> no cycle/identity loss
    zeros = torch.zeros_like(batch["mask"])
    out = fam.train_step({**batch, "mask": zeros, "target_mask": zeros}, 1)
    assert out["loss_cycle"] == 0.0 and out["loss_identity"] == 0.0 and out["loss_g_adv"] > 0
    # the target-domain terms follow target_mask, not the source case's mask
    out = fam.train_step({**batch, "mask": zeros, "target_mask": batch["mask"]}, 2)
    assert out["loss_cycle"] > 0 and out["loss_identity"] > 0
    fam.eval()
    x = batch["source"]
    with torch.no_grad():
        assert torch.equal(fam.predict_patch(x), fam.g_ab(x).clamp(-1, 1))


def test_cyclegan_multichannel_source(demo_planned) -> None:
    fam = make_family("cyclegan", demo_planned[0], n_source_channels=2)
    assert not fam.use_identity
    b = real_batch(demo_planned[1], n=1, patch=SMALL, n_source_channels=2)
    with torch.no_grad():
        assert fam.g_ba(b["target"]).shape == (1, 2, *SMALL)
    fam.configure_optimizers()
    out = fam.train_step(b, 0)
    assert out["loss_identity"] == 0.0 and all(math.isfinite(v) for v in out.values())
    assert fam.eval().predict_patch(b["source"]).shape == (1, 1, *SMALL)


# --- srgan --------------------------------------------------------------------------------------
def test_srgan_pretraining(demo_planned, batch) -> None:
    fam = make_family("srgan", demo_planned[0], overrides={"num_epochs": 3})  # 5/6 of 3 epochs: 2 pre-training
    fam.configure_optimizers()
    d0, g0 = snapshot(fam, "discriminator"), snapshot(fam, "generator")
    out = fam.train_step(batch, 0)
    assert set(out) == {"loss_g", "loss_l1"} and out["loss_g"] == pytest.approx(out["loss_l1"])
    assert not changed(d0, snapshot(fam, "discriminator")) and changed(g0, snapshot(fam, "generator"))
    fam.on_epoch_end(0, 10)
    assert fam.warming_up
    fam.on_epoch_end(1, 10)
    assert not fam.warming_up and fam.train_state_dict()["epoch"] == 2
    out = fam.train_step(batch, 1)
    assert {"loss_g_adv", "loss_perceptual", "loss_d"} <= set(out)
    assert changed(d0, snapshot(fam, "discriminator"))
    resumed = make_family("srgan", demo_planned[0], overrides={"num_epochs": 3})
    resumed.configure_optimizers()
    resumed.load_train_state_dict(fam.train_state_dict())
    assert resumed.epoch == 2 and not resumed.warming_up


@pytest.mark.parametrize("epochs, pretrain, drop", [(12, 10, 11), (1000, 833, 917), (2, 1, 2), (1, 0, 1)])
def test_srgan_schedule_follows_the_paper(demo_planned, epochs: int, pretrain: int, drop: int) -> None:
    """Pre-training is 5/6 of the budget (the paper's 10^6 of 1.2 * 10^6 iterations), leaving a GAN epoch; the GAN
    phase's second half runs at a tenth of the learning rate (paper: 10^5 iterations at 1e-4, 10^5 at 1e-5)."""
    fam = make_family("srgan", demo_planned[0], overrides={"num_epochs": epochs})
    fam.configure_optimizers()
    assert fam.pretrain_epochs() == pretrain
    sched = fam.schedulers()["generator"]
    assert [sched.lr_lambdas[0](e) for e in (drop - 1, drop)] == [1.0, pytest.approx(0.1)]


class _Features(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.b = torch.nn.Conv3d(2, 2, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = torch.relu(self.a(x))
        return [h, self.b(h)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in favour of torch.export
@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_srgan_perceptual_network(demo_planned, batch, tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    net = _Features()
    if kind == "torchscript":
        path = tmp_path / "features.pt"
        torch.jit.save(torch.jit.script(net), str(path))
    else:
        path = tmp_path / "features.pt2"
        torch.export.save(torch.export.export(net, (batch["target"],)), str(path))
    fam = make_family("srgan", demo_planned[0], overrides={"pretrain_fraction": 0, "perceptual_weights": str(path)})
    fam.configure_optimizers()
    with torch.no_grad():
        expected = feature_l1(net(batch["target"]), net(fam.generator(batch["source"]))).item()
    out = fam.train_step(batch, 0)
    assert out["loss_perceptual"] == pytest.approx(expected, rel=1e-5)
    assert all(not p.requires_grad for p in fam.feature_net.parameters())
    for bad in (tmp_path / "weights.pt", tmp_path / "weights.pt2"):
        torch.save(_Features().state_dict(), bad)  # a state dict alone has no architecture
        fam = make_family("srgan", demo_planned[0], overrides={"perceptual_weights": str(bad)})
        with pytest.raises(ConfigurationError):
            fam.configure_optimizers()


def test_srgan_relativistic_and_rrdb(demo_planned, batch) -> None:
    fam = make_family("srgan", demo_planned[0], overrides={"pretrain_fraction": 0, "adversarial": "relativistic"},
                      srgan_block="rrdb")
    fam.configure_optimizers()
    out = fam.train_step(batch, 0)
    assert all(math.isfinite(v) for v in out.values()) and out["loss_g_adv"] > 0
    with pytest.raises(ConfigurationError):
        make_family("srgan", demo_planned[0], overrides={"adversarial": "wgan"})
