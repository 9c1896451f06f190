"""The Family contract, for the regression U-Net and every GAN family, on tiny networks and patches of the
preprocessed demo data."""
from __future__ import annotations

import math

import pytest
import torch

import autotrans.families  # noqa: F401  (registers the families)
from autotrans.families.base import Family
from tests.families.helpers import SMALL, make_family, real_batch, snapshot

FAMILIES = ["regression", "pix2pix", "cyclegan", "srgan"]
# SRGAN trains D only after its pre-training; the contract checks a full adversarial step
OVERRIDES = {"srgan": {"pretrain_fraction": 0}}
#: (generator learning-rate key, another key) per family: regression has one optimizer (nnU-Net's SGD)
HPARAM_KEYS = {"regression": ("lr", "weight_decay")}
#: validation losses beyond the masked L1 (regression has no adversary)
VALIDATION_KEYS = {"regression": set()}


def make(name: str, demo_planned, seed: int = 0, overrides: dict | None = None, patch=SMALL, **shrink) -> Family:
    return make_family(name, demo_planned[0], seed, {**OVERRIDES.get(name, {}), **(overrides or {})}, patch, **shrink)


@pytest.mark.parametrize("name", FAMILIES)
def test_train_step_updates_every_weight(name: str, demo_planned) -> None:
    fam = make(name, demo_planned, patch=(32, 32, 32))
    fam.configure_optimizers()
    assert set(fam.optimizers())
    before = snapshot(fam)
    losses = fam.train_step(real_batch(demo_planned[1], n=1), step=0)
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), losses
    after = snapshot(fam)
    # every weight matrix/kernel moves; 1-d tensors (norm affines, biases before InstanceNorm) may get zero grads
    unchanged = [k for k, p in before.items() if p.ndim > 1 and torch.equal(p, after[k])]
    assert not unchanged, unchanged
    assert all(torch.isfinite(p).all() for p in after.values())
    # every named network holds trainable weights
    assert all(any(True for _ in net.parameters()) for net in fam.networks().values())


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip_and_prediction(name: str, demo_planned) -> None:
    batch = real_batch(demo_planned[1], n=1, patch=SMALL)
    a = make(name, demo_planned, seed=0)
    a.configure_optimizers()
    a.train_step(batch, step=0)
    b = make(name, demo_planned, seed=1)
    x = batch["source"]
    a.eval(), b.eval()
    ya = a.predict_patch(x)
    assert ya.shape == (1, 1, *SMALL) and ya.dtype == torch.float32
    assert float(ya.abs().max()) <= 1.0
    assert not torch.allclose(ya, b.predict_patch(x))  # different seeds differ, so the round trip can fail
    b.load_state_dict(a.state_dict())
    assert torch.equal(ya, b.predict_patch(x))
    # same seed, same network, same output
    c, d = make(name, demo_planned, seed=3).eval(), make(name, demo_planned, seed=3).eval()
    assert torch.equal(c.predict_patch(x), d.predict_patch(x))


@pytest.mark.parametrize("name", FAMILIES)
def test_train_state_round_trip(name: str, demo_planned) -> None:
    a = make(name, demo_planned)
    a.configure_optimizers()
    a.train_step(real_batch(demo_planned[1], n=1, patch=SMALL), step=0)
    a.on_epoch_end(0, 10)
    state = a.train_state_dict()
    b = make(name, demo_planned)
    b.configure_optimizers()
    b.load_train_state_dict(state)
    for key, opt in a.optimizers().items():
        sa, sb = opt.state_dict(), b.optimizers()[key].state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys() and sa["state"]
        for i, st in sa["state"].items():
            assert all(torch.equal(v, sb["state"][i][k]) for k, v in st.items())
    for key, sch in a.schedulers().items():
        assert sch.state_dict()["last_epoch"] == b.schedulers()[key].state_dict()["last_epoch"] == 1
    assert b.train_state_dict().keys() == state.keys()


@pytest.mark.parametrize("name", FAMILIES)
def test_hparam_override_and_plan_section(name: str, demo_planned) -> None:
    lr, other = HPARAM_KEYS.get(name, ("lr_g", "lr_d"))
    fam = make(name, demo_planned, overrides={lr: 1e-3})
    fam.configure_optimizers()
    hp = fam.resolved_hparams()
    assert hp[lr] == 1e-3 and other in hp and ("betas" in hp or name == "regression")
    gen_opt = next(o for k, o in fam.optimizers().items() if k.startswith("generator"))
    assert gen_opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    # the plan's family section is the second source, below overrides
    fam.configuration.data["families"].setdefault(name, {})[other] = 5e-5
    assert fam.resolved_hparams()[other] == 5e-5
    fam.overrides[other] = 7e-5
    assert fam.resolved_hparams()[other] == 7e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_validation_step_changes_nothing(name: str, demo_planned) -> None:
    fam = make(name, demo_planned)
    fam.configure_optimizers()
    before = snapshot(fam)
    out = fam.validation_step(real_batch(demo_planned[1], n=1, patch=SMALL))
    assert {"loss_l1"} | VALIDATION_KEYS.get(name, {"loss_g_adv"}) <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    after = snapshot(fam)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(net.training for net in fam.networks().values())
    assert all(p.grad is None for net in fam.networks().values() for p in net.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_anisotropic_patch(name: str, demo_planned) -> None:
    patch = (16, 32, 32)
    fam = make(name, demo_planned, patch=patch, strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=patch)
    losses = fam.train_step(batch, step=0)
    assert all(math.isfinite(v) for v in losses.values())
    assert fam.eval().predict_patch(batch["source"]).shape == (1, 1, *patch)


@pytest.mark.parametrize("name", FAMILIES)
def test_mixed_precision_step(name: str, demo_planned) -> None:
    """bf16 autocast (what the engine enables on GPUs) runs on CPU too: losses finite, float32 predictions."""
    fam = make(name, demo_planned)
    fam.autocast_dtype = torch.bfloat16
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=2, patch=SMALL)
    losses = {**fam.train_step(batch, step=0), **fam.validation_step(batch)}
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert fam.eval().predict_patch(batch["source"]).dtype == torch.float32
