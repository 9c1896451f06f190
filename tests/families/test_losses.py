"""Shared GAN losses and helpers on hand-made tensors with known values."""
from __future__ import annotations

import math

import pytest
import torch

from autotrans.families.losses import (
    ImagePool,
    LinearDecay,
    bce_loss,
    evaluating,
    feature_l1,
    lsgan_loss,
    masked_l1,
    relativistic_d_loss,
    relativistic_g_loss,
)


def test_masked_l1() -> None:
    pred = torch.zeros(1, 2, 1, 2, 2)
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 2, 2).repeat(1, 2, 1, 1, 1)
    target[:, 1] *= 10
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 2, 2)
    # mean over the 2 mask voxels of both channels: (1 + 4 + 10 + 40) / 4
    assert masked_l1(pred, target, mask).item() == pytest.approx(55 / 4)
    assert masked_l1(pred, target).item() == pytest.approx((10 + 100) / 8)
    assert masked_l1(pred, target, torch.zeros_like(mask)).item() == 0.0
    assert masked_l1(pred, target, torch.ones_like(mask)).item() == pytest.approx(masked_l1(pred, target).item())


def test_lsgan_and_bce() -> None:
    d = torch.tensor([0.5, 1.5])
    assert lsgan_loss(d, True).item() == pytest.approx(0.25)
    assert lsgan_loss(d, False).item() == pytest.approx((0.25 + 2.25) / 2)
    assert bce_loss(torch.zeros(3), True).item() == pytest.approx(math.log(2))
    assert bce_loss(torch.tensor([20.0]), True).item() < 1e-6
    assert bce_loss(torch.tensor([20.0]), False).item() == pytest.approx(20.0, abs=1e-6)


def test_relativistic() -> None:
    real, fake = torch.tensor([5.0, 6.0]), torch.tensor([-5.0, -4.0])
    assert relativistic_d_loss(real, fake).item() < 1e-3  # D separates them: tiny D loss
    assert relativistic_g_loss(real, fake).item() > 5.0   # and the generator is far off
    assert relativistic_g_loss(real, fake).item() == pytest.approx(relativistic_d_loss(fake, real).item())
    same = torch.tensor([1.0, 1.0])
    assert relativistic_d_loss(same, same).item() == pytest.approx(math.log(2))


def test_feature_l1() -> None:
    a = [torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 1, 1, 1, 1)]
    b = [torch.ones(1, 2, 2, 2, 2), torch.full((1, 1, 1, 1, 1), 3.0)]
    assert feature_l1(a, b).item() == pytest.approx(2.0)
    assert feature_l1(a[0], b[0]).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        feature_l1(a, b[:1])


def test_image_pool() -> None:
    pool = ImagePool(size=3, seed=0)
    first = torch.arange(3.0).reshape(3, 1, 1, 1, 1).requires_grad_()
    out = pool.query(first)
    assert torch.equal(out, first.detach()) and not out.requires_grad and len(pool) == 3
    seen_old = seen_new = 0
    for i in range(20):
        new = torch.full((1, 1, 1, 1, 1), 100.0 + i)
        stored_before = {float(t) for t in pool.images}
        got = float(pool.query(new))
        stored_after = {float(t) for t in pool.images}
        assert len(pool) == 3
        if got == 100.0 + i:  # returned as is, pool unchanged
            seen_new += 1
            assert stored_after == stored_before
        else:  # an old image came back and the new one took its place
            seen_old += 1
            assert got in stored_before and got not in stored_after and 100.0 + i in stored_after
    assert seen_old > 0 and seen_new > 0
    # seeded: the same sequence of decisions again
    a, b = ImagePool(2, seed=5), ImagePool(2, seed=5)
    xs = [torch.full((1, 1, 1, 1, 1), float(i)) for i in range(10)]
    assert [float(a.query(x)) for x in xs] == [float(b.query(x)) for x in xs]
    off = ImagePool(0)
    assert torch.equal(off.query(first), first.detach()) and len(off) == 0


def test_linear_decay() -> None:
    rule = LinearDecay(10)
    assert [rule(e) for e in (0, 4, 5)] == [1.0, 1.0, 1.0]
    assert rule(9) == pytest.approx(0.2) and rule(10) == 0.0
    assert LinearDecay(10, decay_start=0)(5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        LinearDecay(0)


def test_evaluating_restores_modes() -> None:
    a, b = torch.nn.Dropout(), torch.nn.Dropout()
    b.eval()
    with evaluating([a, b]):
        assert not a.training and not b.training and not torch.is_grad_enabled()
    assert a.training and not b.training
