"""DDPM/DDIM wrapper: closed forms, determinism, the oracle sanity check and a golden value."""
from __future__ import annotations

import pytest
import torch

from autotrans.errors import ConfigurationError
from autotrans.schedulers import DiffusionSchedule
from tests.schedulers.conftest import SHAPE, linear_model, seeded


def _abar(schedule: DiffusionSchedule, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return schedule.alphas_cumprod()[t].reshape(-1, *([1] * (ndim - 1)))


def oracle(schedule: DiffusionSchedule, x0: torch.Tensor):
    """A 'network' that returns the exact prediction for a known x0, whatever x_t it is given."""
    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = _abar(schedule, t, x_t.ndim)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return schedule.training_target(x0, eps, t)
    return model


def test_validation_names_the_options() -> None:
    with pytest.raises(ConfigurationError, match="scaled_linear_beta"):
        DiffusionSchedule(schedule="nope")
    with pytest.raises(ConfigurationError, match="v_prediction"):
        DiffusionSchedule(prediction_type="x")
    with pytest.raises(ConfigurationError, match="beta_start"):
        DiffusionSchedule(beta_start=0.1, beta_end=0.01)
    # MONAI's cosine schedule takes no betas; they must not be forwarded.
    assert DiffusionSchedule(schedule="cosine").alphas_cumprod().shape == (1000,)


def test_sample_timesteps_seeded_and_in_range() -> None:
    s = DiffusionSchedule(num_train_timesteps=10)
    a = s.sample_timesteps(500, "cpu", torch.Generator().manual_seed(0))
    b = s.sample_timesteps(500, "cpu", torch.Generator().manual_seed(0))
    assert a.dtype == torch.long and a.shape == (500,) and torch.equal(a, b)
    assert a.min() == 0 and a.max() == 9


def test_add_noise_matches_closed_form() -> None:
    s = DiffusionSchedule()
    x0, eps = seeded(1), seeded(2)
    t = torch.tensor([0, 999])
    a = _abar(s, t, x0.ndim)
    torch.testing.assert_close(s.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps)


def test_training_targets() -> None:
    x0, eps, t = seeded(1), seeded(2), torch.tensor([3, 700])
    assert torch.equal(DiffusionSchedule().training_target(x0, eps, t), eps)
    v = DiffusionSchedule(prediction_type="v_prediction")
    a = _abar(v, t, x0.ndim)
    torch.testing.assert_close(v.training_target(x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert torch.equal(DiffusionSchedule(prediction_type="sample").training_target(x0, eps, t), x0)


def test_ddim_eta0_is_deterministic_for_a_fixed_seed() -> None:
    s, model = DiffusionSchedule(), linear_model(0.9, 1e-4)
    a = s.ddim_sample(model, seeded(7), steps=8)
    b = s.ddim_sample(model, seeded(7), steps=8, generator=torch.Generator().manual_seed(99))  # unused at eta 0
    c = s.ddim_sample(model, seeded(8), steps=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddim_eta1_reproducible_from_the_generator() -> None:
    s, model = DiffusionSchedule(), linear_model(0.9, 1e-4)
    run = lambda seed: s.ddim_sample(model, seeded(7), steps=8, eta=1.0,  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_with_oracle_recovers_x0(prediction_type: str, steps: int) -> None:
    s = DiffusionSchedule(prediction_type=prediction_type)
    x0 = 2.5 * seeded(1)  # beyond [-1, 1]: latents must not be clipped
    out = s.ddim_sample(oracle(s, x0), seeded(2), steps=steps)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_ddim_builds_a_fresh_scheduler_and_passes_batched_long_timesteps() -> None:
    s, model = DiffusionSchedule(), linear_model(0.9, 1e-4)
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return model(x, t)

    first = s.ddim_sample(recording, seeded(7), steps=5)
    assert [int(t[0]) for t in seen] == [999, 749, 500, 250, 0]
    assert all(t.dtype == torch.long and t.shape == (SHAPE[0],) and (t == t[0]).all() for t in seen)
    s.ddim_sample(model, seeded(7), steps=3)  # a different step count must leave no trace
    assert torch.equal(s.ddim_sample(model, seeded(7), steps=5), first)


@pytest.mark.parametrize("steps", [0, 1001])
def test_ddim_rejects_bad_steps(steps: int) -> None:
    with pytest.raises(ConfigurationError, match="steps"):
        DiffusionSchedule().ddim_sample(linear_model(0.9, 0.0), seeded(1), steps=steps)


def test_ddim_golden_values() -> None:
    """Pins MONAI's DDIM as wrapped here. Produced once (torch 2.13 CPU, MONAI 1.6.1) by running exactly this
    setup and printing ``out.flatten()[:4]`` and ``out.sum()``: initial noise ``seeded(1)`` of shape SHAPE,
    ``linear_model(0.9, 1e-4)`` (seed 0), 10 steps, per-step noise from ``Generator().manual_seed(2)``."""
    s, model = DiffusionSchedule(), linear_model(0.9, 1e-4)
    golden = {
        0.0: ([-0.78959757, -0.51692235, -0.41106349, -0.86942387], -27.18639946),
        1.0: ([0.20705579, 0.33005077, -0.09080860, 0.36089632], -7.74946165),
    }
    for eta, (head, total) in golden.items():
        out = s.ddim_sample(model, seeded(1), steps=10, eta=eta, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(out.flatten()[:4], torch.tensor(head), rtol=1e-5, atol=1e-5)
        assert out.sum().item() == pytest.approx(total, abs=1e-3)
