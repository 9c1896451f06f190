"""Conditional flow matching / rectified flow (Lipman et al., ICLR 2023; Liu et al., ICLR 2023).

Convention: time runs forward from t = 0 at ``x_start`` (the source latent, or Gaussian noise when the family
conditions on the source instead) to t = 1 at ``x_end`` (the target latent). The network regresses the velocity
of a straight path between paired samples and sampling integrates that velocity with Euler steps.

With ``sigma_min = 0`` (default) the path is rectified flow's straight line x_t = (1 - t) x_start + t x_end with
velocity x_end - x_start (Liu et al., Eq. 1). With ``sigma_min > 0`` it is Lipman et al.'s optimal-transport
conditional path psi_t = (1 - (1 - sigma_min) t) x_start + t x_end (Eq. 22) with velocity
x_end - (1 - sigma_min) x_start (Eq. 23), which ends at x_end + sigma_min x_start: only meaningful when
x_start is standard noise.

MONAI's ``RFlowScheduler`` is not used: it runs time from noise at t = T to data at t = 0, samples timesteps
with its own resolution-dependent shift and has no source-to-target (noise-free) start.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from autotrans.errors import ConfigurationError
from autotrans.schedulers._common import check_steps, expand_to
from autotrans.utils.progress import progress as progress_bar


@dataclass(frozen=True)
class FlowMatchingSchedule:
    """Immutable flow-matching configuration.

    Attributes:
        sigma_min: Lipman et al.'s sigma_min of the OT path (Eq. 22); 0 gives rectified flow. Must be in [0, 1).
        time_scale: the network sees ``t * time_scale`` as its timestep so that embeddings designed for integer
            diffusion timesteps (0..1000, e.g. MONAI's DiffusionModelUNet) get a comparable range.
    """

    sigma_min: float = 0.0
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma_min < 1.0:
            raise ConfigurationError(f"FlowMatchingSchedule: sigma_min must be in [0, 1), got {self.sigma_min!r}")
        if not self.time_scale > 0:
            raise ConfigurationError(f"FlowMatchingSchedule: time_scale must be > 0, got {self.time_scale!r}")

    def sample_times(self, n: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw training times uniformly from [0, 1) (Lipman et al., Eq. 9: t ~ U[0, 1]).

        Args:
            n: batch size.
            device: device of the result; a given ``generator`` must live on the same device.
            generator: source of randomness; ``None`` uses torch's global generator.

        Returns:
            float32 tensor ``(n,)``.
        """
        return torch.rand(n, generator=generator, device=device, dtype=torch.float32)

    def interpolate(self, x_start: torch.Tensor, x_end: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Return the point x_t of the conditional path at time t (Liu et al. Eq. 1; Lipman et al. Eq. 22).

        Args:
            x_start: path start (t = 0), ``(N, ...)``.
            x_end: path end (t = 1), same shape.
            t: a float or a ``(N,)`` tensor of times in [0, 1], broadcast over the non-batch dims.
        """
        t = expand_to(torch.as_tensor(t, device=x_start.device, dtype=x_start.dtype), x_start.ndim)
        return (1.0 - (1.0 - self.sigma_min) * t) * x_start + t * x_end

    def training_target(self, x_start: torch.Tensor, x_end: torch.Tensor) -> torch.Tensor:
        """Return the path's velocity d x_t / dt = x_end - (1 - sigma_min) x_start (Lipman et al. Eq. 23).

        With the default ``sigma_min = 0`` this is x_end - x_start (Liu et al., Eq. 1), constant along the path.
        """
        if self.sigma_min == 0:
            return x_end - x_start
        return x_end - (1.0 - self.sigma_min) * x_start

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Return the timestep the network sees for time t: ``t * time_scale`` as a float tensor."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        return t * self.time_scale

    @torch.no_grad()
    def euler_sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_start: torch.Tensor,
                     steps: int = 25, progress: bool = False) -> torch.Tensor:
        """Integrate dx/dt = v(x_t, t) from t = 0 (``x_start``) to t = 1 with ``steps`` explicit Euler steps.

        Times are the uniform grid t_k = k / steps; the update is x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k)
        (Liu et al., Sec. 2.1). Deterministic: no randomness beyond what produced ``x_start``. Gradients are off.

        Args:
            model: ``model(x_t, model_timesteps(t))`` with a ``(N,)`` float tensor; returns the velocity.
                Conditioning on the source (when ``x_start`` is noise) is closed over by the caller.
            x_start: the start point, the source latent or seeded noise, ``(N, ...)``.
            steps: number of Euler steps (network evaluations), >= 0; 0 returns (a copy of) ``x_start``.
            progress: show a progress bar (nested: only on a terminal).

        Returns:
            The sample at t = 1, same shape as ``x_start``.
        """
        check_steps(steps, None, "FlowMatchingSchedule.euler_sample", minimum=0)
        grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        n = x_start.shape[0]
        x = x_start.clone()
        for k in progress_bar(range(steps), desc="flow", unit="step", disable=not progress, leave=False):
            t_batch = torch.full((n,), grid[k], device=x_start.device, dtype=torch.float32)
            velocity = model(x, self.model_timesteps(t_batch))
            x = x + (grid[k + 1] - grid[k]) * velocity
        return x
