"""Latent diffusion + ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"), in 3D with MONAI's ControlNet, as in MONAI's generative ControlNet tutorial.

Two phases in one run (the switch is at ``controlnet_start`` of the epochs, checkpointed):
1. a target-modality LDM: an unconditional noise-predicting diffusion U-Net on target latents;
2. a ControlNet initialised from that U-Net's encoder, its zero-initialised connections feeding residuals
   into the frozen U-Net; its conditioning embedding takes the *source image* (not its latent) and
   downsamples it by the autoencoder's factor. Loss in both phases: ``|eps - eps_theta(z_t, t[, c])|^2``.
Sampling: DDIM, eta 0, 50 steps by default. Before the switch the ControlNet adds exactly zero, so early
validation numbers are those of an unconditional model (expected, not a bug).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from autotrans.errors import ConfigurationError
from autotrans.families.base import register_family
from autotrans.families.latent import COMMON_DEFAULTS, LatentFamily, randn_like
from autotrans.families.ldm import diffusion_schedule
from autotrans.networks.latent import build_controlnet, build_diffusion_unet

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "eta": 0.0, "prediction_type": "epsilon", "controlnet_start": 0.5,
                            "conditioning_scale": 1.0}


@register_family("ldm_controlnet")
class LDMControlNetFamily(LatentFamily):
    """Unconditional target LDM, then a ControlNet on the source image with the LDM frozen."""

    defaults = DEFAULTS
    needs_source_image = True  # sample_latent takes the source image tile too (inference passes it)

    def build_denoisers(self) -> None:
        lc = self.latent_channels
        section = self.section["diffusion_unet"]
        self.unet = build_diffusion_unet(section, lc, lc).to(self.device)
        self.controlnet = build_controlnet(section, lc, self.source_channels, self.downsampling_factor).to(self.device)
        self.schedule = diffusion_schedule(self)

    def denoisers(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet, "controlnet": self.controlnet}

    def switch_epoch(self) -> int:
        """First epoch of the ControlNet phase (at least one epoch for each phase when there are two)."""
        n = int(self.hp("num_epochs"))
        if n < 2:
            return n
        return min(max(round(float(self.hp("controlnet_start")) * n), 1), n - 1)

    @property
    def controlnet_phase(self) -> bool:
        return self.epoch >= self.switch_epoch()

    def configure_optimizers(self) -> None:
        lr, wd = float(self.hp("lr")), float(self.hp("weight_decay"))
        self._optimizers = {name: torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
                            for name, net in self.denoisers().items()}
        if self.switch_epoch() >= int(self.hp("num_epochs")):
            logger.warning("ldm_controlnet: %s epoch(s) leave no ControlNet phase; train at least 2 epochs",
                           self.hp("num_epochs"))

    def _freeze_unet(self) -> None:
        self.denoiser("unet").requires_grad_(not self.controlnet_phase)

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_end(epoch, num_epochs)
        if self.epoch == self.switch_epoch() and self.epoch < int(self.hp("num_epochs")):
            # ControlNet starts as a copy of the trained U-Net's encoder (its zero convolutions stay zero)
            self.denoiser("controlnet").load_state_dict(self.denoiser("unet").state_dict(), strict=False)
            logger.info("ldm_controlnet: target LDM trained for %d epoch(s); training the ControlNet now", self.epoch)
        self._freeze_unet()

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        super().load_train_state_dict(state)
        self._freeze_unet()

    def _eps(self, z_t: torch.Tensor, t: torch.Tensor, source: torch.Tensor | None, train_controlnet: bool
             ) -> torch.Tensor:
        if source is None:
            return self.unet(z_t, t)
        controlnet = self.controlnet if train_controlnet else self.denoiser("controlnet")
        down, mid = controlnet(z_t, t, controlnet_cond=source, conditioning_scale=float(self.hp("conditioning_scale")))
        return self.denoiser("unet")(z_t, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def latent_loss(self, z_source: torch.Tensor, z_target: torch.Tensor, source: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
        noise = randn_like(z_target, generator)
        t = self.schedule.sample_timesteps(z_target.shape[0], self.device, generator)
        z_t = self.schedule.add_noise(z_target, noise, t)
        cond = source if self.controlnet_phase else None
        pred = self._eps(z_t, t, cond, train_controlnet=True)
        return F.mse_loss(pred.float(), self.schedule.training_target(z_target, noise, t).float())

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        zs, zt, src = self.latents(batch)
        name = "controlnet" if self.controlnet_phase else "unet"
        with self.autocast():
            loss = self.latent_loss(zs, zt, src, None)
        self.optimize(loss, self._optimizers[name], getattr(self, name).parameters())
        return {f"loss_{name}": loss.item()}

    def sample_latent(self, z_source: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None,
                      source_image: torch.Tensor | None = None) -> torch.Tensor:
        if source_image is None:
            raise ConfigurationError("ldm_controlnet samples from the source image: pass source_image")

        def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return self._eps(z_t, t, source_image, train_controlnet=False).float()

        return self.schedule.ddim_sample(model, noise, self.sampling_steps, eta=float(self.hp("eta")),
                                         generator=generator)
