"""The families under DistributedDataParallel (one CPU process, gloo): DDP raises on the second step when a
wrapped network has parameters without gradients or a reduction is left pending, so two steps check that the
networks hold no unused weights and that frozen discriminators are called outside DDP."""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.families.helpers import SMALL, make_family, real_batch


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialized in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["regression", "pix2pix", "cyclegan", "srgan"])
def test_train_steps_under_ddp(name: str, demo_planned, process_group) -> None:
    fam = make_family(name, demo_planned[0], overrides={"num_epochs": 10, "pretrain_fraction": 0.1})
    fam.wrap_networks(DistributedDataParallel)
    assert all(isinstance(n, DistributedDataParallel) for n in fam.networks().values())
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=SMALL)
    for step in range(3):  # SRGAN: one warm-up step (D unused), then adversarial steps
        losses = fam.train_step(batch, step)
        assert all(math.isfinite(v) for v in losses.values())
        assert math.isfinite(fam.validation_step(batch)["loss_l1"])  # no_grad forwards between DDP steps
        fam.on_epoch_end(step, 10)
    assert "loss_g_adv" in losses or name == "regression"
    state = fam.state_dict()  # unwrapped: loads into a plain family
    plain = make_family(name, demo_planned[0], seed=1)
    plain.load_state_dict(state)
    x = batch["source"]
    assert torch.equal(plain.eval().predict_patch(x), fam.eval().predict_patch(x))


@pytest.mark.parametrize("name", ["autoencoder", "ldm", "ldm_prior", "ldm_controlnet", "bbdm", "flow_matching"])
def test_latent_family_under_ddp(name: str, demo_planned, process_group) -> None:
    """Only trainable networks are wrapped (the frozen autoencoder, the ControlNet's frozen prior and the EMA copies
    stay plain); EMA updates, the autoencoder's adversarial steps and the state round trip work through DDP."""
    overrides = {"num_epochs": 2, "sampling_steps": 2, "adversarial_start": 0, "ema_every": 1}
    fam = make_family(name, demo_planned[0], overrides=overrides)
    fam.wrap_networks(DistributedDataParallel)
    wrapped = {k for k, n in fam.networks().items() if isinstance(n, DistributedDataParallel)}
    assert wrapped == ({"ae", "disc"} if name == "autoencoder" else set(fam.denoisers()))
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=SMALL)
    for step in range(2):
        losses = {**fam.train_step(batch, step), **fam.validation_step(batch)}
        assert all(math.isfinite(v) for v in losses.values()), losses
        fam.on_epoch_end(step, 2)
    assert getattr(fam, "ema_updates", 2) == 2  # the EMA follows the wrapped networks' weights
    plain = make_family(name, demo_planned[0], seed=1, overrides=overrides)
    plain.load_state_dict(fam.state_dict())
    if fam.translates:
        x = batch["source"]
        ya = fam.eval().predict_patch(x, torch.Generator().manual_seed(0))
        assert torch.equal(plain.eval().predict_patch(x, torch.Generator().manual_seed(0)), ya)
