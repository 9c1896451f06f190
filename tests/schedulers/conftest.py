"""Shared helpers for the sampler tests: single-threaded torch and a fixed, seeded linear stand-in network."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

SHAPE = (2, 2, 2, 3, 3)  # (N, C, D, H, W): tiny 3D latents


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Every test of this folder runs single-threaded (``one_thread`` in tests/conftest.py)."""


def seeded(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """A standard-normal tensor from its own CPU generator (float32)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def linear_model(gain: float, time_weight: float, seed: int = 0,
                 channels: int = SHAPE[1]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A fixed random 'network': per-voxel channel mixing (gain * I + 0.1 * W) x + time_weight * t.

    W ~ N(0, 1) from ``torch.Generator().manual_seed(seed)``; the timestep term makes the output depend on t so
    golden values also pin the timesteps a sampler hands to the model.
    """
    w = torch.randn(channels, channels, generator=torch.Generator().manual_seed(seed))
    mix = gain * torch.eye(channels) + 0.1 * w

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        out = torch.einsum("oc,nc...->no...", mix, x)
        return out + time_weight * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    return model
