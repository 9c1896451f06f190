"""Conditional latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"; concatenation conditioning as in their image-to-image models, Sec. 4.3), and its unconditional
variant, the target prior the ControlNet steers.

``ldm``: the diffusion U-Net (MONAI's DiffusionModelUNet, planned sizes) sees the noisy target latent
concatenated with the source channels' latents and predicts the noise:
``L = |eps - eps_theta([z_t, z_s], t)|^2`` with ``z_t = sqrt(abar_t) z_target + sqrt(1 - abar_t) eps`` (DDPM,
Ho et al. 2020, Eq. 14), 1000 training steps. ``ldm_prior``: the same without conditioning,
``|eps - eps_theta(z_t, t)|^2`` on target latents — ControlNet's frozen base model (Zhang et al. 2023 steer a
pretrained model; here it is trained once per fold, with the same budget, like the autoencoder).
Sampling: DDIM (Song et al. 2021) with eta 0, 50 steps by default (``--steps``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from autotrans.families.base import register_family
from autotrans.families.latent import COMMON_DEFAULTS, LatentFamily, randn_like
from autotrans.networks.latent import build_diffusion_unet, denoiser_channels
from autotrans.schedulers import DiffusionSchedule

DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "eta": 0.0, "prediction_type": "epsilon"}


def diffusion_schedule(family: LatentFamily) -> DiffusionSchedule:
    return DiffusionSchedule(num_train_timesteps=int(family.section.get("train_timesteps", 1000)),
                             prediction_type=str(family.hp("prediction_type")))


@register_family("ldm")
class LDMFamily(LatentFamily):
    """Noise-predicting diffusion U-Net on ``[noisy target latent, source latents]``."""

    defaults = DEFAULTS

    def build_denoisers(self) -> None:
        self.unet = build_diffusion_unet(self.section["diffusion_unet"],
                                         *denoiser_channels(self.name, self.latent_channels, self.source_channels)
                                         ).to(self.device)
        self.schedule = diffusion_schedule(self)

    def denoisers(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def model_input(self, z_t: torch.Tensor, z_source: torch.Tensor) -> torch.Tensor:
        return torch.cat([z_t, z_source], dim=1)

    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        noise = randn_like(z_target, generator)
        t = self.schedule.sample_timesteps(z_target.shape[0], self.device, generator)
        z_t = self.schedule.add_noise(z_target, noise, t)
        pred = self.unet(self.model_input(z_t, z_source), t)
        return F.mse_loss(pred.float(), self.schedule.training_target(z_target, noise, t).float())

    def run_sampler(self, z_source: torch.Tensor, noise: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        unet = self.denoiser("unet")

        def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return unet(self.model_input(z_t, z_source), t).float()

        return self.schedule.ddim_sample(model, noise, self.sampling_steps, eta=float(self.hp("eta")),
                                         generator=generator)


@register_family("ldm_prior")
class LDMPriorFamily(LDMFamily):
    """Unconditional target-latent diffusion: the base model ``ldm_controlnet`` steers (does not translate)."""

    translates = False

    def model_input(self, z_t: torch.Tensor, z_source: torch.Tensor) -> torch.Tensor:
        return z_t

    def validation_prediction_limit(self) -> int | None:
        return 0  # unconditional samples cannot match a validation target: its validation is the loss alone

    def latents(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Target latents only (the prior never sees the source)."""
        zt = self.encode_images(self.pad(batch["target"]))
        return zt[:, :0], zt, zt[:, :0]

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from autotrans.errors import ConfigurationError

        raise ConfigurationError("ldm_prior samples target images unconditionally, it does not translate: predict "
                                 "with ldm_controlnet, which is trained on it")
