"""3D PatchGAN discriminator (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
Networks", Sec. 3.2.2), sized by the plan's ``discriminator`` section.

Layout (the 70x70 PatchGAN of the paper, in 3D): ``n_layers`` convolutions of kernel 4 with the plan's
per-axis strides (the first without normalization), one stride-1 convolution, and a stride-1 output
convolution to one logit per patch. InstanceNorm (batch sizes are 1-2) and LeakyReLU(0.2) throughout;
spectral normalization (Miyato et al. 2018) of every convolution is optional. Axes the planner kept at
stride 1 (anisotropic patches) grow their receptive field by ``kernel - 1`` per layer instead of doubling.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autotrans.errors import ConfigurationError


def receptive_field(strides: Sequence[Sequence[int]], kernel_size: int = 4, n_final: int = 2) -> list[int]:
    """Per-axis receptive field of ``len(strides)`` strided convs followed by ``n_final`` stride-1 convs."""
    layers = [list(s) for s in strides] + [[1, 1, 1]] * n_final
    rf = [1, 1, 1]
    for stride in reversed(layers):
        rf = [(r - 1) * s + kernel_size for r, s in zip(rf, stride)]
    return rf


def _conv(cin: int, cout: int, kernel: int, stride: Sequence[int], spectral: bool) -> nn.Module:
    conv = nn.Conv3d(cin, cout, kernel, stride=tuple(stride), padding=1)
    return nn.utils.parametrizations.spectral_norm(conv) if spectral else conv


class PatchGAN3d(nn.Module):
    """Maps ``(N, in_channels, D, H, W)`` to a map of per-patch logits ``(N, 1, d, h, w)``."""

    def __init__(self, in_channels: int, features: Sequence[int], strides: Sequence[Sequence[int]],
                 kernel_size: int = 4, norm: str = "instance", spectral_norm: bool = False) -> None:
        super().__init__()
        n_layers = len(strides)
        if n_layers < 1 or len(features) != n_layers + 1:
            raise ConfigurationError(f"PatchGAN needs n_layers >= 1 strides and n_layers + 1 features, "
                                     f"got {n_layers} strides and {len(features)} features")
        if norm not in ("instance", "none"):
            raise ConfigurationError(f"PatchGAN norm must be 'instance' or 'none', got {norm!r}")
        self.kernel_size = kernel_size
        self.strides = [list(s) for s in strides]
        layers: list[nn.Module] = []
        cin = in_channels
        plan = list(zip(features[:n_layers], self.strides)) + [(features[n_layers], [1, 1, 1])]
        for i, (cout, stride) in enumerate(plan):
            layers.append(_conv(cin, cout, kernel_size, stride, spectral_norm))
            if i > 0 and norm == "instance":  # no normalization on the first layer (paper, Sec. 6.1.2)
                layers.append(nn.InstanceNorm3d(cout, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(_conv(cin, 1, kernel_size, [1, 1, 1], spectral_norm))
        self.model = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> list[int]:
        return receptive_field(self.strides, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_patchgan(section: dict[str, Any], in_channels: int | None = None, norm: str = "instance",
                   spectral_norm: bool = False) -> PatchGAN3d:
    """A PatchGAN from a plan ``discriminator`` section; ``in_channels`` overrides the planned count (CycleGAN's D_A)."""
    return PatchGAN3d(in_channels=int(section["in_channels"] if in_channels is None else in_channels),
                      features=[int(f) for f in section["features"]], strides=section["strides"],
                      kernel_size=int(section.get("kernel_size", 4)), norm=norm, spectral_norm=spectral_norm)
