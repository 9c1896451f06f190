"""Brownian bridge (BBDM): schedule conventions, endpoints, posterior correctness, sampling, golden value."""
from __future__ import annotations

import pytest
import torch

from autotrans.errors import ConfigurationError
from autotrans.schedulers import BrownianBridgeSchedule
from tests.schedulers.conftest import SHAPE, linear_model, seeded

T = 1000


def test_m_and_variance_conventions() -> None:
    for max_var in (1.0, 2.0):
        s = BrownianBridgeSchedule(num_train_timesteps=T, max_var=max_var)
        t = torch.arange(T + 1)
        m, var = s.m(t), s.variance(t)
        assert m[0] == 0 and m[T] == 1 and var[0] == 0 and var[T] == 0
        torch.testing.assert_close(m, t / T)
        assert int(var.argmax()) == T // 2 and var[T // 2] == max_var / 2
        assert s.m(250) == 0.25  # plain ints work too


def test_q_sample_endpoints_are_exact() -> None:
    s = BrownianBridgeSchedule()
    x0, y, eps = seeded(1), seeded(2), seeded(3)
    assert torch.equal(s.q_sample(x0, y, T, eps), y)
    assert torch.equal(s.q_sample(x0, y, torch.full((SHAPE[0],), T), eps), y)
    assert torch.equal(s.q_sample(x0, y, 0, eps), x0)
    # per-sample timesteps broadcast over the non-batch dims
    mixed = s.q_sample(x0, y, torch.tensor([0, T]), eps)
    assert torch.equal(mixed[0], x0[0]) and torch.equal(mixed[1], y[1])


def test_q_sample_midpoint_and_target() -> None:
    s = BrownianBridgeSchedule()
    x0, y, eps = seeded(1), seeded(2), seeded(3)
    t = torch.tensor([500, 250])
    x_t = s.q_sample(x0, y, t, eps)
    torch.testing.assert_close(x_t[0], 0.5 * x0[0] + 0.5 * y[0] + 0.5 ** 0.5 * eps[0])
    torch.testing.assert_close(x_t[1], 0.75 * x0[1] + 0.25 * y[1] + (2 * 0.1875) ** 0.5 * eps[1])
    # BBDM's "grad" objective is exactly x_t - x0
    torch.testing.assert_close(s.training_target(x0, y, t, eps), x_t - x0)


def test_sample_timesteps_cover_1_to_T() -> None:
    s = BrownianBridgeSchedule(num_train_timesteps=5)
    a = s.sample_timesteps(400, "cpu", torch.Generator().manual_seed(0))
    assert a.dtype == torch.long and torch.equal(a, s.sample_timesteps(400, "cpu", torch.Generator().manual_seed(0)))
    assert sorted(a.unique().tolist()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("steps", [1, 2, 3, 50, 999, 1000])
def test_sampling_timesteps_linear_skip(steps: int) -> None:
    ts = BrownianBridgeSchedule().sampling_timesteps(steps)
    assert len(ts) == steps and int(ts[0]) == T and (steps == 1 or int(ts[-1]) == 1)
    assert bool((ts[1:] < ts[:-1]).all())


def test_step_matches_the_released_code_formula() -> None:
    """For t < T (where BBDM's own 0/0-prone form is finite) our simplified coefficients equal its p_sample."""
    s = BrownianBridgeSchedule(max_var=1.5)
    x_t, y, out, z = seeded(1), seeded(2), seeded(3), seeded(4)
    t, n = 700, 300
    m_t, m_n = s.m(t, torch.float64), s.m(n, torch.float64)
    v_t, v_n = s.variance(t, torch.float64), s.variance(n, torch.float64)
    sigma2 = (v_t - v_n * (1 - m_t) ** 2 / (1 - m_n) ** 2) * v_n / v_t
    x0 = x_t - out
    mean = (1 - m_n) * x0 + m_n * y + torch.sqrt((v_n - sigma2) / v_t) * (x_t - (1 - m_t) * x0 - m_t * y)
    expected = (mean + 0.7 * sigma2.sqrt() * z).float()
    got, x0_hat = s.step(out, t, x_t, y, n, eta=0.7, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x0_hat, x0)


@pytest.mark.parametrize(("t", "s_next"), [(T, 600), (700, 300), (40, 1)])
def test_posterior_step_preserves_the_bridge_marginal(t: int, s_next: int) -> None:
    """If x_t ~ q(x_t | x0, y) and x0_hat = x0, one eta=1 step must give x_s ~ q(x_s | x0, y) (Eq. 3)."""
    s = BrownianBridgeSchedule()
    g = torch.Generator().manual_seed(0)
    shape = (4, 50_000)
    x0, y = torch.full(shape, 0.3), torch.full(shape, -1.2)
    x_t = s.q_sample(x0, y, t, torch.randn(shape, generator=g))
    x_s, _ = s.step(x_t - x0, t, x_t, y, s_next, eta=1.0, generator=g)
    m, var = float(s.m(s_next)), float(s.variance(s_next))
    assert float(x_s.mean()) == pytest.approx((1 - m) * 0.3 + m * -1.2, abs=0.01)
    assert float(x_s.var()) == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_sample_with_oracle_recovers_x0(eta: float, steps: int) -> None:
    s = BrownianBridgeSchedule()
    x0, y = 2.0 * seeded(1), seeded(2)
    out = s.sample(lambda x_t, t: x_t - x0, y, steps=steps, eta=eta, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_sample_eta0_deterministic_and_eta1_reproducible() -> None:
    s, model, y = BrownianBridgeSchedule(), linear_model(0.5, 1e-4), seeded(2)
    a = s.sample(model, y, steps=6, eta=0.0)
    assert torch.equal(a, s.sample(model, y, steps=6, eta=0.0, generator=torch.Generator().manual_seed(5)))
    run = lambda seed: s.sample(model, y, steps=6, eta=1.0,  # noqa: E731
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    assert not torch.allclose(run(3), a)


def test_sample_starts_at_the_source_and_passes_batched_timesteps() -> None:
    s, y = BrownianBridgeSchedule(), seeded(2)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t)

    s.sample(recording, y, steps=4, eta=0.0)
    assert torch.equal(seen[0][0], y)
    assert [int(t[0]) for _, t in seen] == [1000, 667, 334, 1]
    assert all(t.dtype == torch.long and t.shape == (SHAPE[0],) for _, t in seen)


def test_validation() -> None:
    with pytest.raises(ConfigurationError, match="max_var"):
        BrownianBridgeSchedule(max_var=0.0)
    with pytest.raises(ConfigurationError, match="num_train_timesteps"):
        BrownianBridgeSchedule(num_train_timesteps=0)
    s = BrownianBridgeSchedule()
    for steps in (0, T + 1):
        with pytest.raises(ConfigurationError, match="steps"):
            s.sample(lambda x, t: x, seeded(1), steps=steps)
    with pytest.raises(ConfigurationError, match="t_next"):
        s.step(seeded(1), 10, seeded(1), seeded(2), 10)


def test_bridge_golden_values() -> None:
    """Pins the bridge sampler. Produced once (torch 2.13 CPU) by running exactly this setup and printing
    ``out.flatten()[:4]`` and ``out.sum()``: source ``y = seeded(1)`` of shape SHAPE, ``linear_model(0.5, 1e-4)``
    (seed 0), 10 steps, per-step noise from ``Generator().manual_seed(2)``."""
    s, model = BrownianBridgeSchedule(), linear_model(0.5, 1e-4)
    golden = {
        0.0: ([-0.06183108, -0.03773407, -0.02729527, -0.06964298], -1.69764638),
        1.0: ([-0.02955204, 0.03602148, -0.07462043, -0.02763814], -2.03438544),
    }
    for eta, (head, total) in golden.items():
        out = s.sample(model, seeded(1), steps=10, eta=eta, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(out.flatten()[:4], torch.tensor(head), rtol=1e-5, atol=1e-5)
        assert out.sum().item() == pytest.approx(total, abs=1e-4)
