"""Conditional latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"; concatenation conditioning as in their image-to-image models, Sec. 4.3).

The diffusion U-Net (MONAI's DiffusionModelUNet, planned sizes) sees the noisy target latent concatenated
with the source latent and predicts the noise: ``L = |eps - eps_theta([z_t, z_s], t)|^2`` with
``z_t = sqrt(abar_t) z_target + sqrt(1 - abar_t) eps`` (DDPM, Ho et al. 2020, Eq. 14), 1000 training steps.
Sampling: DDIM (Song et al. 2021) with eta 0, 50 steps by default (``--steps``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from autotrans.families.base import register_family
from autotrans.families.latent import COMMON_DEFAULTS, LatentFamily, randn_like
from autotrans.networks.latent import build_diffusion_unet
from autotrans.schedulers import DiffusionSchedule

DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "eta": 0.0, "prediction_type": "epsilon"}


def diffusion_schedule(family: LatentFamily) -> DiffusionSchedule:
    return DiffusionSchedule(num_train_timesteps=int(family.section.get("train_timesteps", 1000)),
                             prediction_type=str(family.hp("prediction_type")))


@register_family("ldm")
class LDMFamily(LatentFamily):
    """Noise-predicting diffusion U-Net on ``[noisy target latent, source latent]``."""

    defaults = DEFAULTS

    def build_denoisers(self) -> None:
        lc = self.latent_channels
        self.unet = build_diffusion_unet(self.section["diffusion_unet"], 2 * lc, lc).to(self.device)
        self.schedule = diffusion_schedule(self)

    def denoisers(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        noise = randn_like(z_target, generator)
        t = self.schedule.sample_timesteps(z_target.shape[0], self.device, generator)
        z_t = self.schedule.add_noise(z_target, noise, t)
        pred = self.unet(torch.cat([z_t, z_source], dim=1), t)
        return F.mse_loss(pred.float(), self.schedule.training_target(z_target, noise, t).float())

    def sample_latent(self, z_source: torch.Tensor, noise: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
        unet = self.denoiser("unet")

        def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return unet(torch.cat([z_t, z_source], dim=1), t).float()

        return self.schedule.ddim_sample(model, noise, self.sampling_steps, eta=float(self.hp("eta")),
                                         generator=generator)
