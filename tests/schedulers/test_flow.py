"""Flow matching / rectified flow: path endpoints, velocity target, Euler with the oracle, golden value."""
from __future__ import annotations

import pytest
import torch

from autotrans.errors import ConfigurationError
from autotrans.schedulers import FlowMatchingSchedule
from tests.schedulers.conftest import SHAPE, linear_model, seeded


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_interpolate_endpoints(sigma_min: float) -> None:
    s = FlowMatchingSchedule(sigma_min=sigma_min)
    a, b = seeded(1), seeded(2)
    assert torch.equal(s.interpolate(a, b, 0.0), a)
    assert torch.equal(s.interpolate(a, b, torch.zeros(SHAPE[0])), a)
    end = s.interpolate(a, b, 1.0)
    if sigma_min == 0:
        assert torch.equal(end, b)
    else:  # Lipman's OT path ends at x_end + sigma_min * x_start
        torch.testing.assert_close(end, b + sigma_min * a)
    mixed = s.interpolate(a, b, torch.tensor([0.0, 0.25]))  # per-sample times broadcast
    assert torch.equal(mixed[0], a[0])
    torch.testing.assert_close(mixed[1], (1 - (1 - sigma_min) * 0.25) * a[1] + 0.25 * b[1])


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_training_target_is_the_path_velocity(sigma_min: float) -> None:
    s = FlowMatchingSchedule(sigma_min=sigma_min)
    a, b = seeded(1).double(), seeded(2).double()
    h = 1e-3
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    finite_difference = (s.interpolate(a, b, t + h) - s.interpolate(a, b, t - h)) / (2 * h)
    torch.testing.assert_close(s.training_target(a, b), finite_difference)
    if sigma_min == 0:
        assert torch.equal(s.training_target(a, b), b - a)


def test_sample_times_and_model_timesteps() -> None:
    s = FlowMatchingSchedule()
    t = s.sample_times(1000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (1000,) and 0 <= float(t.min()) and float(t.max()) < 1
    assert torch.equal(t, s.sample_times(1000, "cpu", torch.Generator().manual_seed(0)))
    torch.testing.assert_close(s.model_timesteps(torch.tensor([0.0, 0.5])), torch.tensor([0.0, 500.0]))
    assert s.model_timesteps(torch.tensor([1])).is_floating_point()


@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_euler_with_oracle_velocity_reaches_the_end(steps: int) -> None:
    s = FlowMatchingSchedule()
    a, b = seeded(1), 3.0 * seeded(2)
    out = s.euler_sample(lambda x, t: s.training_target(a, b), a, steps=steps)
    torch.testing.assert_close(out, b, rtol=0, atol=1e-5)


def test_zero_steps_returns_the_start_without_calling_the_model() -> None:
    def never(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("model called with steps=0")

    a = seeded(1)
    out = FlowMatchingSchedule().euler_sample(never, a, steps=0)
    assert torch.equal(out, a) and out is not a


def test_euler_time_grid_and_timestep_scaling() -> None:
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return torch.zeros_like(x)

    FlowMatchingSchedule(time_scale=1000.0).euler_sample(recording, seeded(1), steps=5)
    assert all(t.dtype == torch.float32 and t.shape == (SHAPE[0],) for t in seen)
    torch.testing.assert_close(torch.stack([t[0] for t in seen]), torch.tensor([0.0, 200.0, 400.0, 600.0, 800.0]))


def test_validation() -> None:
    with pytest.raises(ConfigurationError, match="sigma_min"):
        FlowMatchingSchedule(sigma_min=1.0)
    with pytest.raises(ConfigurationError, match="time_scale"):
        FlowMatchingSchedule(time_scale=0.0)
    with pytest.raises(ConfigurationError, match="steps"):
        FlowMatchingSchedule().euler_sample(lambda x, t: x, seeded(1), steps=-1)


def test_flow_golden_values() -> None:
    """Pins the Euler sampler. Produced once (torch 2.13 CPU) by running exactly this setup and printing
    ``out.flatten()[:4]`` and ``out.sum()``: start ``seeded(1)`` of shape SHAPE, ``linear_model(-0.5, 1e-4)``
    (seed 0) as the velocity, 5 steps."""
    out = FlowMatchingSchedule().euler_sample(linear_model(-0.5, 1e-4), seeded(1), steps=5)
    head = [-1.04677999, -0.49284074, -0.43948126, -1.09594667]
    torch.testing.assert_close(out.flatten()[:4], torch.tensor(head), rtol=1e-5, atol=1e-5)
    assert out.sum().item() == pytest.approx(2.35758972, abs=1e-4)
