"""SRGAN networks in 3D at one resolution (translation, not super-resolution): a residual generator and a
VGG-style discriminator, sized by the plan's ``srgan`` section.

Generator (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN", Fig. 4, without
the upsampling blocks): head conv + PReLU, ``n_blocks`` blocks, fusion conv, global skip from the head,
output conv. ``block="residual"`` is SRGAN's conv-norm-PReLU-conv-norm block; ``block="rrdb"`` is ESRGAN's
residual-in-residual dense block without normalization (Wang et al. 2018, Sec. 3.1), residual scaling 0.2.
Kernels are 3 everywhere (SRGAN's 9x9 head is 27x the cost in 3D for a receptive field the blocks provide).
Normalization is InstanceNorm: 3D batches are 1-2 patches, too few for BatchNorm statistics.

Discriminator (Ledig et al. 2017, Fig. 4): per stage a stride-1 and a strided 3x3x3 conv with LeakyReLU(0.2),
then global average pooling and a dense head to one logit. No per-sample normalization: InstanceNorm
right before global pooling would set every pooled channel to its affine bias and erase what the head
needs; spectral normalization is the optional stabilizer instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autotrans.errors import ConfigurationError
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
    """Same-resolution residual generator ``(N, in, D, H, W) -> (N, out, D, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, features: int,
                 block: str = "residual", activation: str = "tanh") -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigurationError(f"unknown SRGAN block {block!r} (valid: {', '.join(BLOCKS)})")
        self.head = nn.Sequential(_conv3(in_channels, features), nn.PReLU(features))
        make = ResidualBlock if block == "residual" else RRDB
        self.blocks = nn.Sequential(*(make(features) for _ in range(n_blocks)))
        fusion: list[nn.Module] = [_conv3(features, features)]
        if block == "residual":
            fusion.append(nn.InstanceNorm3d(features, affine=True))
        self.fusion = nn.Sequential(*fusion)
        self.out = _conv3(features, out_channels)
        self.activation = OutputActivation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.activation(self.out(h + self.fusion(self.blocks(h))))


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
    """The generator from the plan's ``srgan.generator`` section (``block``, ``n_blocks``, ``features``)."""
    return ResidualGenerator(in_channels, out_channels, int(section["n_blocks"]), int(section["features"]),
                             block=section.get("block", "residual"), activation=activation)


def build_vgg_discriminator(section: dict[str, Any], in_channels: int = 1, spectral_norm: bool = False) -> VGGDiscriminator:
    """The discriminator from the plan's ``srgan.discriminator`` section (``features``, ``strides``)."""
    return VGGDiscriminator(in_channels, [int(f) for f in section["features"]], section["strides"],
                            spectral_norm=spectral_norm)
