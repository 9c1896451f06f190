"""The planned U-Net as an image-to-image generator.

The plan stores the generator nnU-Net style: ``network_class_name`` (PlainConvUNet, or ResidualEncoderUNet
for the ResEnc planner presets) and ``arch_kwargs`` whose entries listed in ``_kw_requires_import`` are dotted
import names. We build that network with one output channel and no
deep supervision (translation is supervised at full resolution only).

Output range: every target normalization maps to [-1, 1] and clips the target (CT window, PET SUV ceiling,
MR p0.5/p99.5 with ``clip`` for targets), so a final ``tanh`` (as in Pix2Pix/CycleGAN) puts the generator's
range exactly on the target's. Sources are not clipped (MR tails exceed +-1), so a generator that outputs a
*source* (CycleGAN's reverse generator) uses ``activation="none"``; its predictions are then clamped only
where a bounded range is required (``predict_patch`` of the families).
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
from torch import nn

from autotrans.errors import ConfigurationError

logger = logging.getLogger(__name__)

OUTPUT_ACTIVATIONS = ("tanh", "none")


def resolve_import(name: str | None) -> Any:
    """The object behind a dotted name (``torch.nn.LeakyReLU``, ``torch.nn.modules.conv.Conv3d``); None stays None.

    Tries the longest importable module prefix, then walks attributes, so both module-level classes and
    re-exports resolve.
    """
    if name is None:
        return None
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigurationError(f"cannot import {name!r} named in the plan's architecture")


class OutputActivation(nn.Module):
    """``tanh`` or identity after a network; kept as a module so ``repr`` shows what the generator ends with."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in OUTPUT_ACTIVATIONS:
            raise ConfigurationError(f"unknown output activation {kind!r} (valid: {', '.join(OUTPUT_ACTIVATIONS)})")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) if self.kind == "tanh" else x

    def extra_repr(self) -> str:
        return self.kind


def _drop_unused_heads(net: nn.Module) -> None:
    """Replace the deep-supervision heads that ``deep_supervision=False`` never calls by parameter-free stubs.

    dynamic-network-architectures builds one output conv per decoder stage but uses only the last one without
    deep supervision. Unused parameters would make DDP fail (or need ``find_unused_parameters``) and bloat
    checkpoints, so only the used head keeps weights; ``seg_layers[-1]`` still indexes it.
    """
    decoder = getattr(net, "decoder", None)
    heads = getattr(decoder, "seg_layers", None)
    if isinstance(heads, nn.ModuleList) and len(heads) > 1:
        decoder.seg_layers = nn.ModuleList([nn.Identity() for _ in range(len(heads) - 1)] + [heads[-1]])


class PlannedGenerator(nn.Module):
    """The plan's network (``backbone``) followed by the output activation."""

    def __init__(self, backbone: nn.Module, activation: str = "tanh") -> None:
        super().__init__()
        self.backbone = backbone
        self.activation = OutputActivation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.backbone(x))


def build_planned_unet(architecture: dict[str, Any], in_channels: int, out_channels: int = 1,
                       activation: str = "tanh") -> PlannedGenerator:
    """Instantiate ``architecture`` (a configuration's ``architecture`` entry) as a generator.

    ``num_classes`` of dynamic-network-architectures is our number of output channels; deep supervision is
    always off because the families compare full-resolution images only.
    """
    if "network_class_name" not in architecture or "arch_kwargs" not in architecture:
        raise ConfigurationError("architecture needs 'network_class_name' and 'arch_kwargs'")
    cls = resolve_import(architecture["network_class_name"])
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        if key in kwargs:
            kwargs[key] = resolve_import(kwargs[key])
    kwargs.pop("deep_supervision", None)
    net = cls(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **kwargs)
    _drop_unused_heads(net)
    logger.debug("built %s (%d -> %d channels, %s output)", cls.__name__, in_channels, out_channels, activation)
    return PlannedGenerator(net, activation)


def encoder_convs_per_stage(arch_kwargs: dict[str, Any]) -> list[int]:
    """Convs along the longest path of each encoder stage: a PlainConvUNet's ``n_conv_per_stage``; a
    ResidualEncoderUNet's two per residual block (the first one strided), plus its stem conv in stage 0."""
    if "n_blocks_per_stage" in arch_kwargs:
        blocks = list(arch_kwargs["n_blocks_per_stage"])
        return [2 * b + (1 if i == 0 else 0) for i, b in enumerate(blocks)]
    return list(arch_kwargs["n_conv_per_stage"])


def unet_receptive_field(arch_kwargs: dict[str, Any]) -> list[int]:
    """Per-axis receptive field (voxels) of a planned U-Net output voxel (PlainConvUNet or ResidualEncoderUNet):
    down the encoder (each conv adds ``(k - 1) * jump``, a strided conv multiplies the jump), back up the
    decoder (a transposed conv with kernel = stride adds nothing and divides the jump, then the stage's convs
    add theirs). A residual block's skip path (pooling, 1x1 conv) sees less than its convs, so it adds nothing."""
    kernels = [list(k) for k in arch_kwargs["kernel_sizes"]]
    strides = [list(s) for s in arch_kwargs["strides"]]
    n_conv = encoder_convs_per_stage(arch_kwargs)
    n_dec = list(arch_kwargs["n_conv_per_stage_decoder"])
    rf, jump = [1, 1, 1], [1, 1, 1]
    for k, s, n in zip(kernels, strides, n_conv):
        for i in range(n):
            rf = [r + (kk - 1) * j for r, kk, j in zip(rf, k, jump)]
            if i == 0:
                jump = [j * ss for j, ss in zip(jump, s)]
    for stage in range(len(kernels) - 2, -1, -1):
        jump = [j // ss for j, ss in zip(jump, strides[stage + 1])]
        for _ in range(n_dec[stage]):
            rf = [r + (kk - 1) * j for r, kk, j in zip(rf, kernels[stage], jump)]
    return rf
