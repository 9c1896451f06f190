"""Network builders: shapes on isotropic and anisotropic patches, parameter counts, PatchGAN receptive field."""
from __future__ import annotations

import itertools

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from autotrans.errors import ConfigurationError
from autotrans.networks import (
    PatchGAN3d,
    build_patchgan,
    build_planned_unet,
    build_srgan_generator,
    build_vgg_discriminator,
    receptive_field,
    resolve_import,
)
from autotrans.planning.families import (
    patchgan_receptive_field,
    plan_patchgan,
    plan_vgg_discriminator,
)


def architecture(strides: list[list[int]], features: list[int]) -> dict:
    n = len(features)
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * n, "strides": strides, "n_conv_per_stage": [1] * n,
                            "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resolve_import() -> None:
    assert resolve_import("torch.nn.LeakyReLU") is torch.nn.LeakyReLU
    assert resolve_import("torch.nn.modules.conv.Conv3d") is torch.nn.Conv3d
    assert resolve_import(None) is None
    with pytest.raises(ConfigurationError):
        resolve_import("torch.nn.NoSuchLayer")


@pytest.mark.parametrize("patch,strides", [((32, 32, 32), [[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
                                           ((8, 32, 24), [[1, 1, 1], [1, 2, 2], [2, 2, 2]])])
def test_planned_unet(patch, strides) -> None:
    torch.manual_seed(0)
    arch = architecture(strides, [4, 8, 16])
    gen = build_planned_unet(arch, in_channels=2, out_channels=1)
    y = gen(torch.randn(2, 2, *patch) * 3)
    assert y.shape == (2, 1, *patch)
    assert float(y.detach().abs().max()) < 1.0  # tanh range
    # same weights as the plain network except the deep-supervision heads it never uses
    ref = PlainConvUNet(2, 3, [4, 8, 16], torch.nn.Conv3d, 3, strides, 1, 1, 1, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU)
    unused = sum(n_params(h) for h in ref.decoder.seg_layers[:-1])
    assert unused > 0 and n_params(gen) == n_params(ref) - unused
    linear = build_planned_unet(arch, in_channels=1, out_channels=3, activation="none")
    assert linear(torch.randn(1, 1, *patch)).shape == (1, 3, *patch)
    with pytest.raises(ConfigurationError):
        build_planned_unet(arch, 1, 1, activation="sigmoid")


@pytest.mark.parametrize("patch", [(32, 32, 32), (8, 48, 40)])
def test_patchgan_shapes_and_parameters(patch) -> None:
    section = plan_patchgan(list(patch), in_channels=3, base_features=4, max_features=16)
    d = build_patchgan(section)
    x = torch.randn(2, 3, *patch)
    out = d(x)
    assert out.shape[:2] == (2, 1) and all(s >= 1 for s in out.shape[2:])
    f = section["features"]
    # convs (k^3 * cin * cout + bias) plus InstanceNorm affines on all but the first and last conv
    chans = [3] + f + [1]
    expected = sum(64 * a * b + b for a, b in itertools.pairwise(chans)) + sum(2 * c for c in f[1:])
    assert n_params(d) == expected
    assert n_params(build_patchgan(section, in_channels=1)) == expected - 2 * 64 * f[0]
    sn = build_patchgan(section, spectral_norm=True)
    assert sn(x).shape == out.shape


def _measured_receptive_field(net: torch.nn.Module, size: tuple[int, int, int]) -> list[int]:
    x = torch.randn(1, 1, *size, requires_grad=True)
    out = net(x)
    centre = tuple(s // 2 for s in out.shape[2:])
    out[(0, 0) + centre].backward()
    g = x.grad[0, 0].abs()
    extents = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(g.sum(dim=others) > 0).flatten()
        assert idx.min() > 0 and idx.max() < size[axis] - 1, "receptive field reaches the border: enlarge the input"
        extents.append(int(idx.max() - idx.min() + 1))
    return extents


@pytest.mark.parametrize("strides", [[[2, 2, 2], [2, 2, 2]], [[2, 2, 2], [1, 2, 2], [2, 1, 2]]])
def test_patchgan_receptive_field_numerically(strides) -> None:
    torch.manual_seed(0)
    net = PatchGAN3d(1, [2] * (len(strides) + 1), strides, norm="none")  # InstanceNorm would couple all voxels
    claimed = net.receptive_field
    measured = _measured_receptive_field(net, (64, 64, 80))
    assert measured == claimed
    assert receptive_field([[2, 2, 2]] * 3) == [70, 70, 70] == [patchgan_receptive_field(3)] * 3


@pytest.mark.parametrize("patch,block", [((32, 32, 32), "residual"), ((8, 32, 24), "rrdb")])
def test_srgan_networks(patch, block) -> None:
    gen = build_srgan_generator({"block": block, "n_blocks": 2, "features": 8}, in_channels=2)
    y = gen(torch.randn(1, 2, *patch))
    assert y.shape == (1, 1, *patch) and float(y.detach().abs().max()) < 1.0
    if block == "residual":  # head + 2 blocks (2 convs, 2 norms, PReLU) + fusion conv/norm + output conv
        conv = 27 * 8 * 8 + 8
        expected = (27 * 2 * 8 + 8 + 8) + 2 * (2 * conv + 2 * 16 + 8) + (conv + 16) + (27 * 8 + 1)
        assert n_params(gen) == expected
    else:
        assert n_params(gen) > 2 * 3 * 5 * 27 * 4 * 8
    section = plan_vgg_discriminator(list(patch), base_features=4, max_features=16)
    d = build_vgg_discriminator(section)
    logits, feats = d(torch.randn(2, 1, *patch), return_features=True)
    assert logits.shape == (2, 1) and len(feats) == section["n_stages"]
    assert [f.shape[1] for f in feats] == section["features"]
    # the strided conv of every stage follows the plan's per-axis strides
    size = list(patch)
    for f, s in zip(feats, section["strides"]):
        size = [(n - 1) // st + 1 for n, st in zip(size, s)]
        assert list(f.shape[2:]) == size
    with pytest.raises(ConfigurationError):
        build_srgan_generator({"block": "dense", "n_blocks": 1, "features": 4}, 1)
