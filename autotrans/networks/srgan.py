"""SRGAN networks in 3D for same-resolution translation: a residual generator and a VGG-style discriminator,
sized by the plan's ``srgan`` section.

Generator (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN", Fig. 4): SRGAN's
residual blocks work on a low-resolution input and sub-pixel convolutions bring it to the output size. For
translation the low-resolution input is the source folded by space-to-depth (lossless), so the blocks see a
context comparable to a U-Net's (the whole 128^3 patch at 16 blocks and factor 4) at a cost a 3D GPU can
carry; the plan's ``factors`` per axis follow the U-Net's first two poolings (anisotropic axes fold less).
Head conv + PReLU, ``n_blocks`` blocks, fusion conv, global skip from the head, one sub-pixel stage per
halving, output conv. ``block="residual"`` is SRGAN's conv-norm-PReLU-conv-norm block; ``block="rrdb"`` is
ESRGAN's residual-in-residual dense block without normalization (Wang et al. 2018, Sec. 3.1), residual
scaling 0.2. Kernels are 3 everywhere (SRGAN's 9x9 head is 27x the cost in 3D for a receptive field the
blocks provide). Normalization is InstanceNorm: 3D batches are 1-2 patches, too few for BatchNorm statistics.

Discriminator (Ledig et al. 2017, Fig. 4): per stage a stride-1 and a strided 3x3x3 conv with LeakyReLU(0.2),
then global average pooling and a dense head to one logit. No per-sample normalization: InstanceNorm
right before global pooling would set every pooled channel to its affine bias and erase what the head
needs; spectral normalization is the optional stabilizer instead.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autotrans.errors import ConfigurationError
from autotrans.networks.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d
from autotrans.networks.unet import OutputActivation

BLOCKS = ("residual", "rrdb")


def _conv3(cin: int, cout: int, stride: Sequence[int] | int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=tuple(stride) if not isinstance(stride, int) else stride, padding=1)


class ResidualBlock(nn.Module):
    """conv-norm-PReLU-conv-norm plus identity skip (SRGAN)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv3(features, features), nn.InstanceNorm3d(features, affine=True),
                                  nn.PReLU(features), _conv3(features, features),
                                  nn.InstanceNorm3d(features, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DenseBlock(nn.Module):
    """Five densely connected convs (ESRGAN); the last maps back to ``features`` and is scaled by ``beta``."""

    def __init__(self, features: int, growth: int, beta: float = 0.2) -> None:
        super().__init__()
        self.beta = beta
        self.convs = nn.ModuleList(_conv3(features + i * growth, growth if i < 4 else features) for i in range(5))
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(feats, dim=1))
            if i < 4:
                feats.append(self.act(out))
        return x + self.beta * out


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and an outer residual scaled by ``beta``."""

    def __init__(self, features: int, beta: float = 0.2) -> None:
        super().__init__()
        self.beta = beta
        self.blocks = nn.Sequential(*(DenseBlock(features, max(features // 2, 1), beta) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.beta * self.blocks(x)


class ResidualGenerator(nn.Module):
    """SRGAN's generator for same-resolution translation ``(N, in, D, H, W) -> (N, out, D, H, W)``.

    1. space-to-depth by ``factors`` (lossless: the residual blocks then work at low resolution, as SRGAN's do
       on its low-resolution input, and see a context comparable to a U-Net's);
    2. head conv + PReLU, ``n_blocks`` blocks, fusion conv (+ norm), global skip from the head;
    3. one sub-pixel upsampling stage (conv, 3D pixel shuffle by 2, PReLU; Shi et al. 2016, SRGAN Fig. 4) per
       halving, the width halved at each stage (full-resolution 3D feature maps are 8x a 2D image's);
    4. output conv and activation.
    Inputs whose size ``factors`` does not divide are padded (replicate) and cropped back.
    """

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, features: int,
                 block: str = "residual", activation: str = "tanh", factors: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigurationError(f"unknown SRGAN block {block!r} (valid: {', '.join(BLOCKS)})")
        self.factors = [int(f) for f in factors]
        if len(self.factors) != 3 or any(f < 1 or f & (f - 1) for f in self.factors):
            raise ConfigurationError(f"SRGAN factors must be three powers of 2, got {list(factors)}")
        self.head = nn.Sequential(_conv3(in_channels * math.prod(self.factors), features), nn.PReLU(features))
        make = ResidualBlock if block == "residual" else RRDB
        self.blocks = nn.Sequential(*(make(features) for _ in range(n_blocks)))
        fusion: list[nn.Module] = [_conv3(features, features)]
        if block == "residual":
            fusion.append(nn.InstanceNorm3d(features, affine=True))
        self.fusion = nn.Sequential(*fusion)
        self.up_factors = upsampling_stages(self.factors)
        ups, width = [], features
        for stage in self.up_factors:
            out = max(width // 2, 16)
            ups.append(SubPixelUp(width, out, stage))
            width = out
        self.up = nn.Sequential(*ups)
        self.out = _conv3(width, out_channels)
        self.activation = OutputActivation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pad = [(-s) % f for s, f in zip(size, self.factors)]
        if any(pad):
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode="replicate")
        h = self.head(pixel_unshuffle_3d(x, self.factors))
        y = self.activation(self.out(self.up(h + self.fusion(self.blocks(h)))))
        return y[(slice(None), slice(None), *(slice(0, s) for s in size))]


class SubPixelUp(nn.Module):
    """conv to ``out * prod(factors)`` channels, 3D pixel shuffle by ``factors``, PReLU."""

    def __init__(self, cin: int, cout: int, factors: Sequence[int]) -> None:
        super().__init__()
        self.factors = [int(f) for f in factors]
        self.conv = _conv3(cin, cout * math.prod(self.factors))
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(pixel_shuffle_3d(self.conv(x), self.factors))


def upsampling_stages(factors: Sequence[int]) -> list[list[int]]:
    """Per-stage factors (2 or 1 per axis) that multiply to ``factors``: (4, 4, 2) -> [[2, 2, 2], [2, 2, 1]]."""
    remaining = [int(f) for f in factors]
    stages = []
    while any(f > 1 for f in remaining):
        stage = [2 if f > 1 else 1 for f in remaining]
        remaining = [f // s for f, s in zip(remaining, stage)]
        stages.append(stage)
    return stages


def generator_receptive_field(n_blocks: int, factors: Sequence[int], block: str = "residual") -> list[int]:
    """Per-axis receptive field (voxels) of ``ResidualGenerator``: space-to-depth, head, blocks (2 convs each;
    an RRDB's dense blocks chain 3 x 5 convs), fusion, the upsampling convs and the output conv, all 3-kernels."""
    convs_low = 1 + n_blocks * (2 if block == "residual" else 15) + 1
    out = []
    for f in factors:
        rf, jump = int(f), int(f)  # space-to-depth: each low-resolution voxel sees f voxels
        rf += 2 * jump * convs_low
        remaining = int(f)
        while remaining > 1:
            rf += 2 * jump  # the stage's conv at the current resolution, then the shuffle halves the jump
            jump //= 2
            remaining //= 2
        rf += 2 * jump  # output conv at full resolution
        out.append(rf)
    return out


class VGGDiscriminator(nn.Module):
    """VGG-style discriminator; ``forward(x, return_features=True)`` also returns each stage's output."""

    def __init__(self, in_channels: int, features: Sequence[int], strides: Sequence[Sequence[int]],
                 spectral_norm: bool = False, dense_features: int | None = None) -> None:
        super().__init__()
        if len(features) < 1 or len(features) != len(strides):
            raise ConfigurationError(f"VGG discriminator needs one stride per stage, got {len(features)} "
                                     f"features and {len(strides)} strides")
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        stages = []
        cin = in_channels
        for f, s in zip(features, strides):
            stages.append(nn.Sequential(wrap(_conv3(cin, f)), nn.LeakyReLU(0.2, inplace=True),
                                        wrap(_conv3(f, f, s)), nn.LeakyReLU(0.2, inplace=True)))
            cin = f
        self.stages = nn.ModuleList(stages)
        hidden = dense_features or min(4 * cin, 1024)
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), wrap(nn.Linear(cin, hidden)),
                                  nn.LeakyReLU(0.2, inplace=True), wrap(nn.Linear(hidden, 1)))

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.head(x)
        return (logits, feats) if return_features else logits


def build_srgan_generator(section: dict[str, Any], in_channels: int, out_channels: int = 1,
                          activation: str = "tanh") -> ResidualGenerator:
    """The generator from the plan's ``srgan.generator`` section (``block``, ``n_blocks``, ``features``,
    ``factors``: the space-to-depth factor per axis, 1 = full resolution)."""
    return ResidualGenerator(in_channels, out_channels, int(section["n_blocks"]), int(section["features"]),
                             block=section.get("block", "residual"), activation=activation,
                             factors=section.get("factors", (1, 1, 1)))


def build_vgg_discriminator(section: dict[str, Any], in_channels: int = 1, spectral_norm: bool = False) -> VGGDiscriminator:
    """The discriminator from the plan's ``srgan.discriminator`` section (``features``, ``strides``)."""
    return VGGDiscriminator(in_channels, [int(f) for f in section["features"]], section["strides"],
                            spectral_norm=spectral_norm)
