"""Brownian Bridge Diffusion (BBDM; Li, Xue, Liu & Wang, CVPR 2023), implemented here because MONAI has none.

A Brownian bridge pins both ends of the diffusion: the target latent x_0 at t = 0 and the source latent y at
t = T, so translation starts from the source itself instead of from pure noise (paper Sec. 3.1).

Conventions (integer time, t in {0, 1, ..., T}):

* ``m(t) = t / T`` (the paper's linear m_t, Sec. 3.1): ``m(0) = 0``, ``m(T) = 1``.
* ``variance(t) = 2 * max_var * (m_t - m_t**2)`` (paper Eq. 4 with the released code's ``max_var`` scale):
  ``variance(0) = variance(T) = 0`` and the peak is ``max_var / 2`` at ``t = T / 2``.
* Forward marginal ``q(x_t | x_0, y) = N((1 - m_t) x_0 + m_t y, delta_t I)`` (paper Eq. 3), so
  ``q_sample(x0, y, T) == y`` and ``q_sample(x0, y, 0) == x0`` exactly.
* Training timesteps are uniform in {1, ..., T}; sampling evaluates the network at ``steps`` timesteps from T
  down to 1 and returns the last predicted x_0.

Relation to the released code (github.com/xuekt98/BBDM, ``BrownianBridgeModel.py``): it tabulates
``m_t = linspace(0.001, 0.999, T)`` over array indices k in {0..T-1} and trains on ``randint(0, T)``. Its index
k has m = 0.001 + 0.998 k / (T - 1), which equals our m(k + 1) = (k + 1) / T up to O(1/T). We keep the paper's
exact endpoints instead (index shifted by one: our t = their k + 1) so that the first sampling step sees exactly
y (m = 1, no noise) and the time the network saw in training covers the time it is asked about in sampling.
The skipped posterior below is algebraically the released code's ``p_sample`` (see :meth:`step`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from autotrans.errors import ConfigurationError
from autotrans.schedulers._common import check_steps, expand_to
from autotrans.utils.progress import progress as progress_bar


@dataclass(frozen=True)
class BrownianBridgeSchedule:
    """Immutable BBDM schedule with the paper's linear m_t and BBDM's "grad" objective.

    Attributes:
        num_train_timesteps: T, number of bridge steps (BBDM: 1000).
        max_var: the released code's variance scale s; delta_t = 2 s (m_t - m_t^2), peak s / 2 (BBDM: 1.0).
    """

    num_train_timesteps: int = 1000
    max_var: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int) \
                or self.num_train_timesteps < 1:
            raise ConfigurationError(
                f"BrownianBridgeSchedule: num_train_timesteps must be a positive integer, "
                f"got {self.num_train_timesteps!r}")
        if not self.max_var > 0:
            raise ConfigurationError(f"BrownianBridgeSchedule: max_var must be > 0, got {self.max_var!r}")

    # -- schedule ------------------------------------------------------------------------------------------
    def m(self, t: torch.Tensor | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return m_t = t / T for integer t in 0..T (tensor or int); m(0) = 0, m(T) = 1 exactly."""
        t = torch.as_tensor(t)
        return (t.to(torch.float64) / self.num_train_timesteps).to(dtype)

    def variance(self, t: torch.Tensor | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return delta_t = 2 max_var (m_t - m_t^2) (paper Eq. 4, released code's scale); zero at t = 0 and T."""
        m = self.m(t, torch.float64)
        return (2.0 * self.max_var * (m - m * m)).to(dtype)

    def _coefficients(self, t: torch.Tensor | int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, device=x.device)
        m = expand_to(self.m(t, x.dtype), x.ndim)
        std = expand_to(self.variance(t, x.dtype).sqrt(), x.ndim)
        return m, std

    # -- training ------------------------------------------------------------------------------------------
    def sample_timesteps(self, n: int, device: torch.device | str | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw training timesteps uniformly from {1, ..., T}.

        This is the released code's ``torch.randint(0, T)`` shifted by one (module docstring): t = 0 is the
        clean target (a zero target, nothing to learn) and t = T is the source itself, where sampling starts.

        Args:
            n: batch size.
            device: device of the result; a given ``generator`` must live on the same device.
            generator: source of randomness; ``None`` uses torch's global generator.

        Returns:
            LongTensor ``(n,)``.
        """
        return torch.randint(1, self.num_train_timesteps + 1, (n,), generator=generator, device=device,
                             dtype=torch.long)

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int,
                 noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps (paper Eq. 3-4).

        Args:
            x0: target latent (t = 0 end), shape ``(N, ...)``.
            y: source latent (t = T end), same shape.
            t: integer timesteps in 0..T, an int or a ``(N,)`` LongTensor.
            noise: eps ~ N(0, I), same shape as ``x0``.
        """
        m, std = self._coefficients(t, x0)
        return (1.0 - m) * x0 + m * y + std * noise

    def training_target(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | int,
                        noise: torch.Tensor) -> torch.Tensor:
        """Return BBDM's objective m_t (y - x_0) + sqrt(delta_t) eps (paper Algorithm 1; code ``objective='grad'``).

        It is exactly x_t - x_0, so a network output o gives the prediction x_0_hat = x_t - o.
        """
        m, std = self._coefficients(t, x0)
        return m * (y - x0) + std * noise

    # -- sampling ------------------------------------------------------------------------------------------
    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """Return the ``steps`` timesteps the sampler evaluates the network at: linear skip from T down to 1.

        ``round(linspace(T, 1, steps))``, strictly decreasing for 1 <= steps <= T. The released code's "linear"
        skip also spaces its evaluations evenly from the source end to the clean end (it spends the last two on
        array indices 1 and 0); here every evaluation is evenly spaced.
        """
        check_steps(steps, self.num_train_timesteps, "BrownianBridgeSchedule.sample")
        ts = torch.linspace(self.num_train_timesteps, 1, steps, dtype=torch.float64).round().long()
        if steps > 1 and not bool((ts[1:] < ts[:-1]).all()):  # cannot happen for steps <= T; guard the invariant
            raise AssertionError(f"bridge sampling timesteps are not strictly decreasing: {ts.tolist()}")
        return ts

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, y: torch.Tensor, t_next: int,
             eta: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Move from x_t to x_s (s = ``t_next`` < t) with the bridge posterior q(x_s | x_t, x_0_hat, y).

        Paper Eq. 7-9 give the one-step posterior; skipping from t to any s < t uses the same derivation with
        the marginals at s and t (released code ``p_sample``):

            delta_ts = delta_t - delta_s (1 - m_t)^2 / (1 - m_s)^2
            sigma^2  = delta_ts delta_s / delta_t
            k        = sqrt((delta_s - sigma^2) / delta_t)
            mean     = (1 - m_s) x0_hat + m_s y + k (x_t - (1 - m_t) x0_hat - m_t y)
            x_s      = mean + eta sigma z

        With delta = 2 s_max m (1 - m) these simplify to k = m_s / m_t and
        sigma^2 = delta_s (1 - m_s (1 - m_t) / (m_t (1 - m_s))), which we use because they stay finite at t = T
        (delta_T = 0; the code's form is 0/0 there, which the released code avoids with m_max = 0.999).
        ``eta`` scales only the noise, as in the released code (not DDIM's variance-preserving eta).
        ``t_next = 0`` returns x0_hat itself (m_0 = delta_0 = 0).

        Args:
            model_output: network output for (x_t, t), the "grad" objective; x0_hat = x_t - model_output.
            t: current timestep, 1..T.
            x_t: current sample.
            y: source latent (bridge end at t = T).
            t_next: next timestep s, 0 <= s < t.
            eta: noise scale; 0 is deterministic.
            generator: source of z when eta > 0 (on ``x_t``'s device).

        Returns:
            ``(x_s, x0_hat)``.
        """
        t, t_next = int(t), int(t_next)
        if not 0 <= t_next < t <= self.num_train_timesteps:
            raise ConfigurationError(
                f"BrownianBridgeSchedule.step: need 0 <= t_next < t <= {self.num_train_timesteps}, "
                f"got t={t}, t_next={t_next}")
        x0_hat = x_t - model_output
        if t_next == 0:
            return x0_hat, x0_hat
        m_t, m_s = float(self.m(t, torch.float64)), float(self.m(t_next, torch.float64))
        var_s = float(self.variance(t_next, torch.float64))
        k = m_s / m_t
        sigma2 = max(var_s * (1.0 - m_s * (1.0 - m_t) / (m_t * (1.0 - m_s))), 0.0)
        mean = (1.0 - m_s) * x0_hat + m_s * y + k * (x_t - (1.0 - m_t) * x0_hat - m_t * y)
        if eta == 0 or sigma2 == 0:
            return mean, x0_hat
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + (eta * sigma2 ** 0.5) * z, x0_hat

    @torch.no_grad()
    def sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor,
               steps: int = 50, eta: float = 1.0, generator: torch.Generator | None = None,
               progress: bool = False) -> torch.Tensor:
        """Translate source latent ``y`` to a target latent by skip-sampling the bridge from t = T to 0.

        Starts at x_T = y (exact: delta_T = 0), evaluates ``model`` at :meth:`sampling_timesteps` (``steps``
        evaluations, T down to 1), moves with :meth:`step` between them and returns the last x0_hat (the
        released code's ``p_sample_loop`` / ``p_sample``). Gradients are off.

        Args:
            model: ``model(x_t, t)`` with ``t`` a ``(N,)`` LongTensor in 1..T; returns the "grad" objective.
                Conditioning on y (if the network takes it) is closed over by the caller.
            y: source latent ``(N, ...)``.
            steps: network evaluations, 1..T (BBDM: 200 in the paper, 50 here by default).
            eta: noise scale of each posterior step; 0 is deterministic.
            generator: source of the per-step noise when eta > 0 (on ``y``'s device).
            progress: show a progress bar (nested: only on a terminal).

        Returns:
            The predicted target latent, same shape as ``y``.
        """
        if eta < 0:
            raise ConfigurationError(f"BrownianBridgeSchedule.sample: eta must be >= 0, got {eta!r}")
        ts = self.sampling_timesteps(steps).tolist()
        n = y.shape[0]
        x = y
        x0_hat = y
        for i, t in enumerate(progress_bar(ts, desc="bridge", unit="step", disable=not progress, leave=False)):
            t_batch = torch.full((n,), t, device=y.device, dtype=torch.long)
            t_next = ts[i + 1] if i + 1 < len(ts) else 0
            x, x0_hat = self.step(model(x, t_batch), t, x, y, t_next, eta=eta, generator=generator)
        return x0_hat
