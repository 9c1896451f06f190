"""Latent-family networks built from the plan's ``latent`` section with MONAI's generative models.

MONAI's AutoencoderKL, DiffusionModelUNet, ControlNet and PatchDiscriminator are well tested; what this
module adds is the mapping from planned sizes to their arguments and a thin autoencoder wrapper that carries
the latent scaling factor (Rombach et al. 2022, Sec. 4.3.2) as a checkpointed buffer, so every consumer
encodes into the same unit-variance latent space.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet, PatchDiscriminator
from torch import nn


def _groups(channels: Sequence[int], preferred: int = 32) -> int:
    """The largest group count <= ``preferred`` dividing every level's channels (GroupNorm needs that)."""
    g = math.gcd(*[int(c) for c in channels])
    return max(d for d in range(1, min(preferred, g) + 1) if g % d == 0)


class KLAutoencoder(nn.Module):
    """AutoencoderKL plus the scaling factor that maps its latents to unit variance.

    The factor is estimated from the posterior means seen during the autoencoder's last training epoch
    (running sums in buffers, so an exact resume keeps them) and frozen into ``scale`` at each epoch's end.
    """

    def __init__(self, in_channels: int, section: dict[str, Any]) -> None:
        super().__init__()
        channels = [int(c) for c in section["channels"]]
        self.net = AutoencoderKL(
            spatial_dims=3, in_channels=in_channels, out_channels=in_channels, channels=channels,
            num_res_blocks=int(section.get("num_res_blocks", 1)), attention_levels=[False] * len(channels),
            latent_channels=int(section["latent_channels"]), norm_num_groups=_groups(channels),
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("moments", torch.zeros(3, dtype=torch.float64))  # count, sum, sum of squares

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, posterior mean, posterior std), with a reparameterized sample."""
        mu, sigma = self.net.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.net.decode(mu + sigma * eps), mu, sigma

    @torch.no_grad()
    def record(self, mu: torch.Tensor) -> None:
        m = mu.detach().double()
        self.moments += torch.stack([m.new_tensor(float(m.numel())), m.sum(), (m * m).sum()])

    @torch.no_grad()
    def update_scale(self) -> float:
        """Freeze ``1 / std`` of the recorded latents into ``scale`` and restart the sums."""
        n, s, ss = self.moments.tolist()
        if n > 1:
            var = max(ss / n - (s / n) ** 2, 1e-12)
            self.scale.fill_(1.0 / math.sqrt(var))
        self.moments.zero_()
        return float(self.scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic scaled latent (posterior mean): what every latent family trains and samples in."""
        mu, _ = self.net.encode(x)
        return mu * self.scale.to(mu.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z / self.scale.to(z.dtype))


def build_autoencoder(section: dict[str, Any], in_channels: int) -> KLAutoencoder:
    return KLAutoencoder(in_channels, section)


def build_latent_discriminator(section: dict[str, Any], in_channels: int) -> PatchDiscriminator:
    """MONAI's 3D PatchGAN for the autoencoder's adversarial term (depth planned for the autoencoder patch)."""
    disc = section.get("discriminator") or {"n_layers": 3, "features": 32}
    return PatchDiscriminator(spatial_dims=3, channels=int(disc["features"]), in_channels=in_channels,
                              num_layers_d=int(disc["n_layers"]), norm="INSTANCE")


def _unet_kwargs(section: dict[str, Any]) -> dict[str, Any]:
    channels = [int(c) for c in section["channels"]]
    heads = int(section.get("num_head_channels", 32))
    return dict(spatial_dims=3, channels=channels, attention_levels=[bool(a) for a in section["attention_levels"]],
                num_res_blocks=int(section.get("num_res_blocks", 2)), norm_num_groups=_groups(channels),
                num_head_channels=[max(d for d in range(1, min(heads, c) + 1) if c % d == 0) for c in channels],
                use_flash_attention=True)


def build_diffusion_unet(section: dict[str, Any], in_channels: int, out_channels: int) -> DiffusionModelUNet:
    """MONAI's diffusion U-Net with the planned sizes; attention runs through PyTorch's fused SDPA kernels
    (``use_flash_attention``), whose memory grows with the token count, not its square."""
    return DiffusionModelUNet(in_channels=in_channels, out_channels=out_channels, **_unet_kwargs(section))


#: what each latent model's denoiser sees, in latent channels per modality: its own state x_t plus the latents
#: of the source channels it is conditioned on (0: unconditional; the ControlNet conditions on the image)
CONDITIONED_ON_SOURCE_LATENTS = {"ldm": True, "bbdm": True, "flow_matching": True, "ldm_prior": False,
                                 "ldm_controlnet": False}


def denoiser_channels(model: str, latent_channels: int, source_channels: int) -> tuple[int, int]:
    """(in, out) channels of a latent model's diffusion U-Net: ``[x_t, z_source_0, ..., z_source_C-1]`` for the
    source-conditioned models (one latent per source channel, all from the shared autoencoder), ``x_t`` alone
    for the unconditional prior the ControlNet steers."""
    cond = source_channels if CONDITIONED_ON_SOURCE_LATENTS[model] else 0
    return (1 + cond) * latent_channels, latent_channels


def build_controlnet(section: dict[str, Any], latent_channels: int, condition_channels: int,
                     downsampling_factor: int) -> ControlNet:
    """ControlNet mirroring the diffusion U-Net's encoder; its conditioning embedding takes the *image*-resolution
    source and downsamples it by the autoencoder's factor (one stride-2 block per halving)."""
    n_down = int(round(math.log2(downsampling_factor)))
    embed = [16 * 2 ** i for i in range(n_down + 1)]
    return ControlNet(in_channels=latent_channels, conditioning_embedding_in_channels=condition_channels,
                      conditioning_embedding_num_channels=embed, **_unet_kwargs(section))


def latent_divisor(section: dict[str, Any]) -> int:
    """Image-space size every spatial axis must be a multiple of: autoencoder factor x U-Net downsampling."""
    levels = len(section["diffusion_unet"]["channels"])
    return int(section["autoencoder"]["downsampling_factor"]) * 2 ** (levels - 1)
