"""Brownian Bridge Diffusion Model (Li et al. 2023, "BBDM: Image-to-image Translation with Brownian Bridge
Diffusion Models"), in the shared autoencoder's latent space, as released (configs Template-LBBDM-f4.yaml).

The bridge runs between the target latent (t = 0) and the source latent y (t = T), both encoded by the same
autoencoder: ``x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps`` with ``m_t = t / T`` and
``delta_t = 2 s (m_t - m_t^2)``, ``s = max_var = 1``, T = 1000 (paper Eq. 3-4). The diffusion U-Net is
conditioned on the source as in the released configs: it sees ``[x_t, y]`` concatenated (``in_channels`` twice
the latent channels; with several source channels, every source channel's latent) and predicts BBDM's "grad"
objective ``m_t (y - x_0) + sqrt(delta_t) eps`` (paper Eq. 11, released code); loss L1 as released. EMA of the
weights (0.995, see ``autotrans.families.latent``) for validation and prediction. Sampling: BBDM's skip
sampling from y with 200 steps by default (released ``sample_step``) and eta 1 (the sampler's posterior,
Eq. 7-9); every random draw comes from the case's generator, so a fixed ``--seed`` fixes the volume. With
several source channels the bridge's end point y is source channel 0's latent.
"""
from __future__ import annotations

from typing import Any

import torch

from autotrans.families.base import register_family
from autotrans.families.latent import COMMON_DEFAULTS, LatentFamily, randn_like
from autotrans.networks.latent import build_diffusion_unet, denoiser_channels
from autotrans.schedulers import BrownianBridgeSchedule

DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "max_var": 1.0, "eta": 1.0, "loss": "l1"}


@register_family("bbdm")
class BBDMFamily(LatentFamily):
    """Brownian bridge from the source latent to the target latent, denoiser conditioned on the source."""

    defaults = DEFAULTS

    def build_denoisers(self) -> None:
        self.unet = build_diffusion_unet(self.section["diffusion_unet"],
                                         *denoiser_channels(self.name, self.latent_channels, self.source_channels)
                                         ).to(self.device)
        self.schedule = BrownianBridgeSchedule(num_train_timesteps=int(self.section.get("train_timesteps", 1000)),
                                               max_var=float(self.hp("max_var")))

    def denoisers(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        y = self.source_end(z_source)
        noise = randn_like(z_target, generator)
        t = self.schedule.sample_timesteps(z_target.shape[0], self.device, generator)
        x_t = self.schedule.q_sample(z_target, y, t, noise)
        err = (self.unet(torch.cat([x_t, z_source], dim=1), t).float()
               - self.schedule.training_target(z_target, y, t, noise).float())
        return err.abs().mean() if self.hp("loss") == "l1" else err.pow(2).mean()

    def run_sampler(self, z_source: torch.Tensor, noise: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        unet = self.denoiser("unet")

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return unet(torch.cat([x_t, z_source], dim=1), t).float()

        return self.schedule.sample(model, self.source_end(z_source), steps=self.sampling_steps,
                                    eta=float(self.hp("eta")), generator=generator)
