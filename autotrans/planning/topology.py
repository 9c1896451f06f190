"""U-Net topology rules (pooling per axis, kernel sizes, divisibility) as nnU-Net v2 derives them.

Reimplemented rather than imported so that autotrans does not depend on nnunetv2 at run time; the planner
parity test checks that the result equals nnU-Net v2's ``get_pool_and_conv_props`` plans.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Topology:
    num_pool_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]  # first stage stride 1, then one entry per pooling
    kernel_sizes: tuple[tuple[int, ...], ...]  # one per stage, bottleneck last
    patch_size: tuple[int, ...]  # padded to be divisible by 2**num_pool_per_axis
    divisible_by: tuple[int, ...]


def pad_to_divisible(shape: tuple[int, ...] | list[int], divisor: tuple[int, ...]) -> tuple[int, ...]:
    """Round each axis up to the next multiple of ``divisor`` (unchanged when already a multiple)."""
    return tuple(int(math.ceil(float(s) / int(d)) * int(d)) for s, d in zip(shape, divisor))


def pool_and_conv_props(spacing: list[float] | tuple[float, ...], patch_size: list[int] | tuple[int, ...],
                        min_edge: int = 4, max_numpool: int = 999999) -> Topology:
    """Pool along axes whose spacing is within 2x of the finest while feature maps stay >= ``2*min_edge``.

    Anisotropic axes join the pooling once downsampling of the finer axes has caught up with their spacing;
    kernels are 1 along an axis until its spacing is within 2x of the finest, then 3. A lone axis is only
    pooled while it is at least ``3*min_edge`` long. The bottleneck always gets a 3-kernel.
    """
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [tuple([1] * dim)]
    kernels: list[tuple[int, ...]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while True:
        poolable = [a for a in range(dim) if cur_size[a] >= 2 * min_edge]
        if not poolable:
            break
        finest = min(cur_spacing[a] for a in poolable)
        poolable = [a for a in poolable if cur_spacing[a] / finest < 2 and num_pool[a] < max_numpool]
        if not poolable or (len(poolable) == 1 and cur_size[poolable[0]] < 3 * min_edge):
            break
        overall_finest = min(cur_spacing)
        kernel = [3 if (k == 3 or cur_spacing[d] / overall_finest < 2) else 1 for d, k in enumerate(kernel)]
        stride = [1] * dim
        for a in poolable:
            stride[a] = 2
            num_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = float(np.ceil(cur_size[a] / 2))
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    divisor = tuple(int(2 ** n) for n in num_pool)
    # nnU-Net pads to the *next* multiple even when already divisible, then undoes it; net effect: ceil
    padded = pad_to_divisible(patch_size, divisor)
    kernels.append(tuple([3] * dim))
    return Topology(tuple(num_pool), tuple(strides), tuple(kernels), padded, divisor)
