"""Conditional flow matching / rectified flow (Lipman et al. 2023, "Flow Matching for Generative Modeling";
Liu et al. 2023, "Flow Straight and Fast") between latents.

Path ``x_t = (1 - t) x_start + t z_target``, t ~ U[0, 1), velocity target ``z_target - x_start`` (the
straight-line conditional flow, Lipman Eq. 20-23 with sigma_min = 0). ``x_start`` is the source latent or
Gaussian noise — the plan's ``flow_matching_source`` decides (default ``source_latent``; recorded in the
resolved hyperparameters). The source latent comes from the same autoencoder as the target latent (one latent
space, so the straight path between them is meaningful); with several source channels the start is channel
0's latent. In both cases the velocity U-Net also sees every source channel's latent (concatenated), so the
noise variant is conditional too. EMA weights for validation and prediction. Sampling: Euler from t = 0 to 1,
25 steps by default.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from autotrans.errors import ConfigurationError
from autotrans.families.base import register_family
from autotrans.families.latent import COMMON_DEFAULTS, LatentFamily, randn_like
from autotrans.networks.latent import build_diffusion_unet, denoiser_channels
from autotrans.schedulers import FlowMatchingSchedule

DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "flow_source": None}
SOURCES = ("source_latent", "noise")


@register_family("flow_matching")
class FlowMatchingFamily(LatentFamily):
    """Velocity U-Net on ``[x_t, source latent]``; Euler sampling."""

    defaults = DEFAULTS

    def build_denoisers(self) -> None:
        self.unet = build_diffusion_unet(self.section["diffusion_unet"],
                                         *denoiser_channels(self.name, self.latent_channels, self.source_channels)
                                         ).to(self.device)
        self.schedule = FlowMatchingSchedule()
        if self.flow_source not in SOURCES:
            raise ConfigurationError(f"flow_matching: flow_source {self.flow_source!r}: use one of {', '.join(SOURCES)}")

    @property
    def flow_source(self) -> str:
        """``-o flow_source=...``, else the plan's ``flow_matching_source``."""
        return str(self.hp("flow_source") or self.section.get("flow_matching_source", "source_latent"))

    def resolved_hparams(self) -> dict[str, Any]:
        return {**super().resolved_hparams(), "flow_source": self.flow_source}

    def denoisers(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def start(self, z_source: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.source_end(z_source) if self.flow_source == "source_latent" else noise

    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        x0 = self.start(z_source, randn_like(z_target, generator))  # noise drawn in both modes: same RNG stream
        t = self.schedule.sample_times(z_target.shape[0], self.device, generator)
        x_t = self.schedule.interpolate(x0, z_target, t)
        v = self.unet(torch.cat([x_t, z_source], dim=1), self.schedule.model_timesteps(t))
        return F.mse_loss(v.float(), self.schedule.training_target(x0, z_target).float())

    def run_sampler(self, z_source: torch.Tensor, noise: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        unet = self.denoiser("unet")

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return unet(torch.cat([x_t, z_source], dim=1), t).float()

        return self.schedule.euler_sample(model, self.start(z_source, noise), steps=self.sampling_steps)
