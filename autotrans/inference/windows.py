"""Sliding-window prediction over a whole preprocessed volume: tiles, importance blending, fp32 accumulators.

A generator is trained on patches, so a volume is predicted patch by patch and the overlapping predictions
are blended. Design choices (and why):

- Tile starts are spread evenly between 0 and ``size - patch`` with ``ceil((size - patch) / (patch * step)) + 1``
  tiles per axis (nnU-Net's rule): the first and last tile touch the borders, so every voxel is covered, and
  the overlap is never smaller than ``step_size`` asks for. For the common case ``size = patch + k * patch *
  step`` the starts equal MONAI's fixed-stride starts, which the benchmark relies on.
- Gaussian importance with sigma = patch / 8, centred on the patch centre ``(p - 1) / 2`` and floored at
  ``1e-3`` (the peak is about 1): the network is least reliable at tile borders (zero padding, missing context), the
  floor keeps every covered voxel's weight positive so corners stay defined. ``mean`` blending weights 1.
- Accumulation is always fp32, whatever precision the network ran in (bf16 sums lose ~3 digits).
- Inputs smaller than the patch are padded with the normalized air value (never 0, which is mid-gray in a
  [-1, 1] space) and the padding is cut off again.
- Accumulators live on the compute device; on CUDA out-of-memory they move to the CPU and the failed batch is
  redone (with the random generator rewound, so stochastic predictions stay reproducible).
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

SIGMA_SCALE = 1.0 / 8.0
IMPORTANCE_FLOOR = 1e-3
BLEND_MODES = ("gaussian", "mean")

PatchFn = Callable[[torch.Tensor], torch.Tensor]


def compute_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Tile start offsets along one axis (``size >= patch``); first is 0, last is ``size - patch``."""
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch {patch}; pad first")
    n = int(math.ceil((size - patch) / (patch * step_size))) + 1
    if n == 1:
        return [0]
    spacing = (size - patch) / (n - 1)
    return [int(round(i * spacing)) for i in range(n)]


def tile_slices(shape: Sequence[int], patch: Sequence[int], step_size: float) -> list[tuple[slice, ...]]:
    """All tiles (spatial slices) covering ``shape``, in C order (deterministic: stochastic runs depend on it)."""
    starts = [compute_starts(s, p, step_size) for s, p in zip(shape, patch)]
    return [tuple(slice(a, a + p) for a, p in zip(corner, patch)) for corner in itertools.product(*starts)]


@functools.lru_cache(maxsize=8)
def _importance_cpu(patch: tuple[int, ...], blend: str) -> torch.Tensor:
    if blend == "mean":
        return torch.ones(patch, dtype=torch.float32)
    if blend != "gaussian":
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    weights = None
    for p in patch:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        g = torch.exp(-(x ** 2) / (2.0 * (p * SIGMA_SCALE) ** 2))
        weights = g if weights is None else weights[..., None] * g
    # no rescaling to a peak of 1: blending divides by the weight sum, and the floor then sits at the same
    # absolute value as MONAI's, which keeps the two bit-comparable
    return weights.to(torch.float32).clamp_(min=IMPORTANCE_FLOOR)


def importance_map(patch: Sequence[int], blend: str = "gaussian",
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The per-voxel weight of one tile (cached: the same patch size is reused for every case and fold)."""
    w = _importance_cpu(tuple(int(p) for p in patch), blend)
    return w if torch.device(device).type == "cpu" else w.to(device)


def _pad_amounts(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    out = []
    for s, p in zip(shape, patch):
        missing = max(p - s, 0)
        out.append((missing // 2, missing - missing // 2))
    return out


def pad_to_patch(volume: torch.Tensor, patch: Sequence[int], value: float) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``(C, D, H, W)`` with ``value`` to at least ``patch``; return it and the slices of the original."""
    amounts = _pad_amounts(volume.shape[1:], patch)
    if not any(a or b for a, b in amounts):
        return volume, tuple(slice(None) for _ in amounts)
    flat = [x for a, b in reversed(amounts) for x in (a, b)]  # F.pad wants the last axis first
    padded = torch.nn.functional.pad(volume, flat, mode="constant", value=float(value))
    return padded, tuple(slice(a, a + s) for (a, _), s in zip(amounts, volume.shape[1:]))


def _allocate(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Zeroed fp32 accumulator (a separate function so tests can simulate CUDA running out of memory)."""
    return torch.zeros(tuple(shape), dtype=torch.float32, device=device)


class _Accumulators:
    """Weighted prediction sum and weight sum; moves itself to the CPU when the device runs out of memory."""

    def __init__(self, channels: int, shape: Sequence[int], device: torch.device, weight: torch.Tensor) -> None:
        self.device = device
        try:
            self.values = _allocate((channels, *shape), device)
            self.weights = _allocate(tuple(shape), device)
        except torch.OutOfMemoryError:
            if device.type == "cpu":
                raise
            self._warn_fallback("allocating the accumulators")
            self.device = torch.device("cpu")
            self.values = _allocate((channels, *shape), self.device)
            self.weights = _allocate(tuple(shape), self.device)
        self.weight = weight.to(self.values.device)

    def _warn_fallback(self, during: str) -> None:
        logger.warning("out of %s memory while %s: accumulating on the CPU instead (slower)", self.device, during)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def fall_back(self) -> bool:
        """Move to the CPU after an OOM; False when already there (the error is then real and re-raised)."""
        if self.device.type == "cpu":
            return False
        self._warn_fallback("predicting tiles")
        self.values, self.weights, self.weight = self.values.cpu(), self.weights.cpu(), self.weight.cpu()
        self.device = torch.device("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    def add(self, pred: torch.Tensor, tiles: Sequence[tuple[slice, ...]]) -> None:
        """Add a batch of tile predictions; the only allocation (the transfer) happens before any sum changes."""
        pred = pred.to(self.values.device, torch.float32)
        for i, sl in enumerate(tiles):
            self.values[(slice(None), *sl)].addcmul_(pred[i], self.weight)
            self.weights[sl].add_(self.weight)

    def result(self) -> torch.Tensor:
        return self.values.div_(self.weights)


def _batches(tiles: list[tuple[slice, ...]], batch_size: int) -> list[list[tuple[slice, ...]]]:
    return [tiles[i:i + batch_size] for i in range(0, len(tiles), batch_size)]


def _predict_batch(volume: torch.Tensor, tiles: Sequence[tuple[slice, ...]], predict: PatchFn,
                   device: torch.device) -> torch.Tensor:
    x = torch.stack([volume[(slice(None), *sl)] for sl in tiles]).to(device, non_blocking=True)
    out = predict(x)
    if out.ndim != 5 or out.shape[0] != len(tiles) or tuple(out.shape[2:]) != tuple(x.shape[2:]):
        raise RuntimeError(f"patch prediction returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                           "expected (N, C_out, D, H, W) with the input's N and spatial size")
    return out


def sliding_window(volume: torch.Tensor, predict: PatchFn, patch_size: Sequence[int], step_size: float = 0.5,
                   blend: str = "gaussian", batch_size: int = 1, pad_value: float = -1.0,
                   device: torch.device | str | None = None, accumulate_device: torch.device | str | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Predict a whole ``(C, D, H, W)`` volume with ``predict`` on tiles; returns ``(C_out, D, H, W)`` fp32.

    Args:
        predict: maps ``(N, C, *patch_size)`` on ``device`` to ``(N, C_out, *patch_size)``.
        step_size: tile stride as a fraction of the patch (0.5 = half-patch overlap).
        pad_value: value for padding inputs smaller than the patch (the plan's normalized air).
        device: where tiles are predicted (default: the volume's device).
        accumulate_device: where the blended sums live (default: ``device``); CPU fallback on OOM.
        generator: the random generator ``predict`` draws from, rewound when an OOM forces a redo.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    patch = [int(p) for p in patch_size]
    if len(patch) != 3:
        raise ValueError(f"patch_size must have 3 entries, got {patch}")
    device = torch.device(device) if device is not None else volume.device
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else device
    padded, inner = pad_to_patch(volume.float(), patch, pad_value)
    weight = importance_map(patch, blend)
    tiles = tile_slices(padded.shape[1:], patch, step_size)
    acc: _Accumulators | None = None
    for batch in _batches(tiles, max(1, int(batch_size))):
        state = generator.get_state() if generator is not None else None
        while True:
            try:
                out = _predict_batch(padded, batch, predict, device)
                if acc is None:
                    acc = _Accumulators(out.shape[1], padded.shape[1:], acc_device, weight)
                acc.add(out, batch)
                break
            except torch.OutOfMemoryError:
                if acc is None or not acc.fall_back():
                    raise
                if state is not None:
                    generator.set_state(state)
    assert acc is not None  # at least one tile always exists
    return acc.result()[(slice(None), *inner)]
