"""Small helpers shared by the samplers: broadcasting per-sample scalars and validating step counts."""
from __future__ import annotations

import numbers

import torch

from autotrans.errors import ConfigurationError


def expand_to(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape per-sample values ``(N,)`` to ``(N, 1, ..., 1)`` so they broadcast over a tensor of ``ndim`` dims.

    A 0-dim tensor is returned unchanged: it already broadcasts against anything. Keeping this in one place is
    why the samplers work for any spatial dimensionality (2D slices in tests, 3D latents in the families).
    """
    if values.ndim == 0:
        return values
    if values.ndim != 1:
        raise ConfigurationError(f"timesteps must be a scalar or a 1-D (N,) tensor, got shape {tuple(values.shape)}")
    return values.reshape(-1, *([1] * (ndim - 1)))


def check_steps(steps: int, maximum: int | None, what: str, minimum: int = 1) -> None:
    """Reject sampler step counts outside ``[minimum, maximum]`` with a message naming the value and the range."""
    integral = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
    if not integral or steps < minimum or (maximum is not None and steps > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ConfigurationError(f"{what}: steps must be an integer of at least {minimum}{upper}, got {steps!r}")
