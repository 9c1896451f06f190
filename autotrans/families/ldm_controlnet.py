"""Latent diffusion + ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"), in 3D with MONAI's ControlNet, as in MONAI's generative ControlNet tutorial.

As in the paper, the ControlNet steers a trained diffusion model that stays frozen: the fold's ``ldm_prior``
(an unconditional target-latent LDM, trained once per fold with the same budget, automatically, like the
autoencoder; its EMA weights are the base model). The ControlNet starts as a copy of the prior's encoder, its
zero-initialised connections feed residuals into the frozen U-Net, and its conditioning embedding takes the
*source image* (not its latent) and downsamples it by the autoencoder's factor. It trains for the whole budget
(``|eps - eps_theta(z_t, t, c)|^2``); EMA of its weights for validation and prediction. Sampling: DDIM, eta 0,
50 steps by default. The prior's and the autoencoder's weights are copied into this model's checkpoints.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from autotrans.errors import ConfigurationError
from autotrans.families.base import register_family
from autotrans.families.latent import AUTOENCODER, COMMON_DEFAULTS, LatentFamily, load_trained, randn_like
from autotrans.families.ldm import diffusion_schedule
from autotrans.networks.latent import build_controlnet, build_diffusion_unet, denoiser_channels

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "eta": 0.0, "prediction_type": "epsilon", "conditioning_scale": 1.0,
                            "prior_checkpoint": None}
PRIOR = ("ldm_prior", "prior_checkpoint")


@register_family("ldm_controlnet")
class LDMControlNetFamily(LatentFamily):
    """A ControlNet on the source image steering the fold's frozen unconditional target LDM."""

    defaults = DEFAULTS
    needs_source_image = True  # sample_latent takes the source image tile too (inference passes it)
    dependencies = (AUTOENCODER, PRIOR)

    @classmethod
    def phases(cls, num_epochs: int, overrides: dict[str, Any] | None = None) -> dict[str, int]:
        """The ControlNet trains for the whole budget on the fold's ``ldm_prior``, itself trained first with the
        same number of epochs (``dependencies``): both are there from one epoch on."""
        return {"ldm_prior (frozen base, a shared stage)": int(num_epochs), "ControlNet": int(num_epochs)}

    def build_denoisers(self) -> None:
        lc = self.latent_channels
        section = self.section["diffusion_unet"]
        self.unet = build_diffusion_unet(section, *denoiser_channels("ldm_prior", lc, self.source_channels)
                                         ).to(self.device).requires_grad_(False)
        self.controlnet = build_controlnet(section, lc, self.source_channels, self.downsampling_factor).to(self.device)
        self.schedule = diffusion_schedule(self)

    def denoisers(self) -> dict[str, torch.nn.Module]:
        return {"controlnet": self.controlnet}

    def frozen_networks(self) -> dict[str, torch.nn.Module]:
        return {**super().frozen_networks(), "unet": self.unet}

    def load_dependencies(self) -> None:
        """The autoencoder, then the prior (its EMA U-Net, checked to share this autoencoder); the ControlNet
        starts as a copy of the prior's encoder (its zero convolutions stay zero)."""
        super().load_dependencies()
        path = self.hp("prior_checkpoint")
        if not path:
            raise ConfigurationError("ldm_controlnet: no trained ldm_prior given (autotrans_train trains it first)")
        nets = load_trained(path, "ldm_prior", self.plans.data, self.device)["networks"]
        if any(not torch.equal(v, nets["ae"][k].to(v.device)) for k, v in self.ae.state_dict().items()):
            raise ConfigurationError(f"{path}: the prior was trained on another autoencoder than this fold's "
                                     "(retrain ldm_prior after the autoencoder)")
        self.unet.load_state_dict(nets.get("ema_unet", nets["unet"]))
        self.controlnet.load_state_dict(self.unet.state_dict(), strict=False)

    def latents(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Target latents and the padded source image (the ControlNet conditions on the image, not a latent)."""
        zt = self.encode_images(self.pad(batch["target"]))
        return zt[:, :0], zt, self.pad(batch["source"])

    def encode_source(self, x: torch.Tensor) -> torch.Tensor:
        """Inference's latent window still tiles a source latent: one latent's worth of zeros (never used)."""
        f = self.downsampling_factor
        return x.new_zeros((x.shape[0], self.latent_channels, *(s // f for s in x.shape[2:])))

    def _eps(self, z_t: torch.Tensor, t: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        down, mid = self.controlnet(z_t, t, controlnet_cond=source, conditioning_scale=float(self.hp("conditioning_scale")))
        return self.unet(z_t, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        noise = randn_like(z_target, generator)
        t = self.schedule.sample_timesteps(z_target.shape[0], self.device, generator)
        z_t = self.schedule.add_noise(z_target, noise, t)
        return F.mse_loss(self._eps(z_t, t, source).float(), self.schedule.training_target(z_target, noise, t).float())

    def run_sampler(self, z_source: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None,
                    source_image: torch.Tensor | None = None) -> torch.Tensor:
        if source_image is None:
            raise ConfigurationError("ldm_controlnet samples from the source image: pass source_image")

        def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return self._eps(z_t, t, source_image).float()

        return self.schedule.ddim_sample(model, noise, self.sampling_steps, eta=float(self.hp("eta")),
                                         generator=generator)
