"""Denoising diffusion (DDPM training, DDIM sampling) as a thin, stateless wrapper over MONAI's schedulers.

Why a wrapper at all: MONAI's schedulers are ``nn.Module`` objects that carry mutable state
(``set_timesteps`` rewrites ``timesteps``; ``add_noise`` moves its tables between devices). A family that keeps
one around can leak a previous call's step count into the next prediction. :class:`DiffusionSchedule` is an
immutable configuration that builds a fresh MONAI scheduler for every call, so the only inputs of a sampling
run are its arguments (model, initial noise, steps, eta, generator).

Equations: forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, Eq. 4); DDIM
update (Song et al. 2021, Eq. 12) with sigma_t(eta) of Eq. 16; v-prediction v = sqrt(abar_t) eps - sqrt(1 -
abar_t) x_0 (Salimans & Ho 2022, Sec. 4). All three are computed by MONAI; nothing is reimplemented here.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules

from autotrans.errors import ConfigurationError
from autotrans.schedulers._common import check_steps
from autotrans.utils.progress import progress as progress_bar

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DiffusionSchedule:
    """Immutable DDPM/DDIM configuration; defaults are the latent-diffusion ones used by MONAI's 3D LDM tutorials.

    Attributes:
        num_train_timesteps: T, the number of forward-process steps the network is trained on.
        schedule: a MONAI ``NoiseSchedules`` name (``"linear_beta"``, ``"scaled_linear_beta"``, ...).
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        prediction_type: what the network predicts: ``"epsilon"`` (the noise, Ho et al. Eq. 14),
            ``"v_prediction"`` (Salimans & Ho 2022) or ``"sample"`` (x_0 directly).
    """

    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int) \
                or self.num_train_timesteps < 1:
            raise ConfigurationError(
                f"DiffusionSchedule: num_train_timesteps must be a positive integer, got {self.num_train_timesteps!r}")
        if self.schedule not in NoiseSchedules.names:
            raise ConfigurationError(
                f"DiffusionSchedule: unknown schedule {self.schedule!r}; valid: {sorted(NoiseSchedules.names)}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigurationError(
                f"DiffusionSchedule: need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start!r}, "
                f"beta_end={self.beta_end!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigurationError(
                f"DiffusionSchedule: unknown prediction_type {self.prediction_type!r}; valid: {list(PREDICTION_TYPES)}")

    # -- fresh MONAI objects: built per call so no state survives between calls ------------------------------
    def _schedule_args(self) -> dict:
        args = {"num_train_timesteps": self.num_train_timesteps, "schedule": self.schedule}
        # Only schedules that take betas get them (MONAI's "cosine" takes ``s`` instead and would reject them).
        accepted = inspect.signature(NoiseSchedules[self.schedule]).parameters
        args.update({k: v for k, v in (("beta_start", self.beta_start), ("beta_end", self.beta_end)) if k in accepted})
        return args

    def _ddpm(self) -> DDPMScheduler:
        return DDPMScheduler(prediction_type=self.prediction_type, **self._schedule_args())

    def _ddim(self) -> DDIMScheduler:
        # clip_sample=False: MONAI clamps the predicted x_0 to [-1, 1] by default, which is right for images
        # scaled to [-1, 1] but wrong for (scale-factor normalised) latents whose values routinely exceed 1.
        # set_alpha_to_one=True, steps_offset=0: MONAI/diffusers defaults, the final step lands on abar = 1.
        return DDIMScheduler(prediction_type=self.prediction_type, clip_sample=False, set_alpha_to_one=True,
                             steps_offset=0, **self._schedule_args())

    def alphas_cumprod(self) -> torch.Tensor:
        """Return abar_t for t = 0..T-1 (float32, CPU), e.g. for SNR loss weighting or for tests."""
        return self._ddpm().alphas_cumprod.clone()

    def sample_timesteps(self, n: int, device: torch.device | str | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw training timesteps uniformly from {0, ..., T-1} (Ho et al. 2020, Algorithm 1).

        Args:
            n: batch size.
            device: device of the result; a given ``generator`` must live on the same device.
            generator: source of randomness; ``None`` uses torch's global generator.

        Returns:
            LongTensor of shape ``(n,)``.
        """
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device, dtype=torch.long)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4).

        Args:
            x0: clean sample, shape ``(N, ...)``.
            noise: eps ~ N(0, I), same shape as ``x0``.
            t: LongTensor ``(N,)`` of timesteps in [0, T).
        """
        return self._ddpm().add_noise(x0, noise, t)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the regression target for the configured ``prediction_type``.

        ``"epsilon"``: eps (Ho et al. 2020, Eq. 14); ``"v_prediction"``: sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
        (Salimans & Ho 2022, via MONAI ``get_velocity``); ``"sample"``: x_0.
        """
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self._ddpm().get_velocity(x0, noise, t)
        return x0

    @torch.no_grad()
    def ddim_sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                    steps: int, eta: float = 0.0, generator: torch.Generator | None = None,
                    progress: bool = False) -> torch.Tensor:
        """Run DDIM (Song et al. 2021, Eq. 12; sigma_t(eta) of Eq. 16) from ``noise`` = x_T down to x_0.

        A fresh MONAI ``DDIMScheduler`` is built for each call, ``set_timesteps(steps)`` picks ``steps`` evenly
        spaced timesteps from T-1 to 0, and each step is ``model`` + ``DDIMScheduler.step``. Gradients are off:
        sampling through tens of network calls with autograd would only cost memory.

        Args:
            model: ``model(x_t, t)`` with ``t`` a ``(N,)`` LongTensor of timesteps; returns the prediction named by
                ``prediction_type``. Conditioning (source latent, ControlNet) is closed over by the caller.
            noise: the initial x_T, typically ``torch.randn(shape, generator=g)``; it fixes the sample when eta=0.
            steps: number of network evaluations, 1..T.
            eta: 0 gives deterministic DDIM; 1 gives DDPM-like ancestral noise.
            generator: source of the per-step noise when ``eta > 0`` (on ``noise``'s device).
            progress: show a progress bar (nested: only on a terminal).

        Returns:
            The final sample x_0, same shape as ``noise``.
        """
        check_steps(steps, self.num_train_timesteps, "DiffusionSchedule.ddim_sample")
        if eta < 0:
            raise ConfigurationError(f"DiffusionSchedule.ddim_sample: eta must be >= 0, got {eta!r}")
        scheduler = self._ddim()
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise
        n = noise.shape[0]
        for t in progress_bar(scheduler.timesteps, desc="ddim", unit="step", disable=not progress, leave=False):
            t_batch = torch.full((n,), int(t), device=noise.device, dtype=torch.long)
            x, _ = scheduler.step(model(x, t_batch), int(t), x, eta=eta, generator=generator)
        return x
