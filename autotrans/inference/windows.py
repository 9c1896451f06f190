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
- ``scale`` (latent models): the output tile is the input tile times ``scale`` per axis (``1/f`` for an encoder
  that downsamples by ``f``, ``f`` for a decoder), and so is the output volume. Tile starts then lie on the
  grid where both the input and the output offsets are whole voxels (multiples of ``f`` for an encoder), the
  importance map is built at the *output* tile size, and a patch or volume whose scaled size is not whole is a
  ``ValueError``. ``scale=1`` is exactly the unscaled code path (bit-identical results).
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from fractions import Fraction
from typing import Callable, Sequence, Union

import torch

from autotrans.utils.progress import progress

logger = logging.getLogger(__name__)

SIGMA_SCALE = 1.0 / 8.0
IMPORTANCE_FLOOR = 1e-3
BLEND_MODES = ("gaussian", "mean")
#: a window still running after this many seconds logs its progress and the time left, then every
#: ``PROGRESS_EVERY_S`` (a huge volume or a tiny step size must not sit at 0 % without a word)
PROGRESS_FIRST_S = 60.0
PROGRESS_EVERY_S = 600.0

PatchFn = Callable[[torch.Tensor], torch.Tensor]
Scale = Union[int, float, Fraction, Sequence[Union[int, float, Fraction]]]
Tile = tuple[slice, ...]


def count_starts(size: int, patch: int, step_size: float) -> int:
    """How many tiles ``compute_starts`` places along one axis (an axis smaller than the patch is padded: 1).

    Never more than ``size - patch + 1``: a stride below one voxel (``patch * step_size < 1``) would only
    repeat identical tiles, so the tiles then sit at every voxel. For ``patch * step_size >= 1`` the cap never
    applies (the tiling is unchanged).
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if size <= patch:
        return 1
    return min(int(math.ceil((size - patch) / (patch * step_size))) + 1, size - patch + 1)


def count_tiles(shape: Sequence[int], patch: Sequence[int], step_size: float) -> int:
    """Number of tiles of a window over ``shape`` (padded to the patch first), without building them."""
    return math.prod(count_starts(int(s), int(p), step_size) for s, p in zip(shape, patch))


def compute_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Tile start offsets along one axis (``size >= patch``); first is 0, last is ``size - patch``."""
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch {patch}; pad first")
    n = count_starts(size, patch, step_size)
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


def _pad_amounts(shape: Sequence[int], patch: Sequence[int], units: Sequence[int] | None = None
                 ) -> list[tuple[int, int]]:
    """Padding before/after per axis up to ``patch``; the part before is a multiple of the axis' unit."""
    out = []
    for i, (s, p) in enumerate(zip(shape, patch)):
        missing = max(p - s, 0)
        u = 1 if units is None else int(units[i])
        before = (missing // u // 2) * u
        out.append((before, missing - before))
    return out


def pad_to_patch(volume: torch.Tensor, patch: Sequence[int], value: float, units: Sequence[int] | None = None
                 ) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``(C, D, H, W)`` with ``value`` to at least ``patch``; return it and the slices of the original.

    ``units``: per axis, the padding before the volume is a multiple of it (scaled windows need whole output
    offsets); default 1 (half the padding on each side, the extra voxel after).
    """
    amounts = _pad_amounts(volume.shape[1:], patch, units)
    if not any(a or b for a, b in amounts):
        return volume, tuple(slice(None) for _ in amounts)
    flat = [x for a, b in reversed(amounts) for x in (a, b)]  # F.pad wants the last axis first
    padded = torch.nn.functional.pad(volume, flat, mode="constant", value=float(value))
    return padded, tuple(slice(a, a + s) for (a, _), s in zip(amounts, volume.shape[1:]))


def parse_scale(scale: Scale) -> tuple[Fraction, Fraction, Fraction]:
    """``scale`` as three positive exact fractions (floats like ``0.25`` or ``1 / 3`` are snapped to the nearest
    fraction with a denominator up to 1000; a sequence gives one scale per axis)."""
    items = list(scale) if isinstance(scale, (list, tuple)) else [scale] * 3
    if len(items) != 3:
        raise ValueError(f"scale must be a number or 3 numbers, got {scale!r}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float, Fraction)) or not math.isfinite(float(v)) \
                or float(v) <= 0:
            raise ValueError(f"scale must be positive and finite, got {scale!r}")
        frac = Fraction(v).limit_denominator(1000)
        if abs(float(frac) - float(v)) > 1e-9 * max(1.0, float(v)):
            raise ValueError(f"scale {v!r} is not a ratio of small integers")
        out.append(frac)
    return tuple(out)  # type: ignore[return-value]


def _scaled(n: int, scale: Fraction, what: str) -> int:
    value = n * scale
    if value.denominator != 1:
        raise ValueError(f"{what} {n} times scale {scale} = {float(value):g} is not a whole number of voxels")
    return int(value)


def scaled_tiles(shape: Sequence[int], patch: Sequence[int], step_size: float,
                 scale: Sequence[Fraction]) -> list[tuple[Tile, Tile]]:
    """(input tile, output tile) pairs for a scaled window, in C order.

    With ``scale = p / q`` per axis, starts are chosen by ``compute_starts`` on the grid of ``q`` input voxels
    (so ``start * scale`` is whole); for ``scale = 1`` this is exactly ``tile_slices``.
    """
    per_axis = []
    for size, p, sc in zip(shape, patch, scale):
        q = sc.denominator
        _scaled(p, sc, "patch size")
        _scaled(size, sc, "volume size")
        starts = [a * q for a in compute_starts(size // q, p // q, step_size)]
        per_axis.append([(slice(a, a + p), slice(_scaled(a, sc, "tile start"), _scaled(a + p, sc, "tile end")))
                         for a in starts])
    return [(tuple(t[0] for t in combo), tuple(t[1] for t in combo)) for combo in itertools.product(*per_axis)]


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

    def add(self, pred: torch.Tensor, tiles: Sequence[Tile]) -> None:
        """Add a batch of tile predictions; the only allocation (the transfer) happens before any sum changes."""
        pred = pred.to(self.values.device, torch.float32)
        for i, sl in enumerate(tiles):
            self.values[(slice(None), *sl)].addcmul_(pred[i], self.weight)
            self.weights[sl].add_(self.weight)

    def result(self) -> torch.Tensor:
        return self.values.div_(self.weights)


def format_duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h`` (for progress lines and estimates)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _batches(tiles: list, batch_size: int) -> list[list]:
    return [tiles[i:i + batch_size] for i in range(0, len(tiles), batch_size)]


def _predict_batch(volume: torch.Tensor, tiles: Sequence[Tile], predict: PatchFn,
                   device: torch.device, out_patch: Sequence[int] | None = None) -> torch.Tensor:
    x = torch.stack([volume[(slice(None), *sl)] for sl in tiles]).to(device, non_blocking=True)
    out = predict(x)
    want = tuple(x.shape[2:]) if out_patch is None else tuple(out_patch)
    if out.ndim != 5 or out.shape[0] != len(tiles) or tuple(out.shape[2:]) != want:
        raise RuntimeError(f"patch prediction returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
                           f"expected (N, C_out, {', '.join(map(str, want))}) with the input's N"
                           + ("" if out_patch is None else " (the input tile times the window's scale)"))
    return out


def sliding_window(volume: torch.Tensor, predict: PatchFn, patch_size: Sequence[int], step_size: float = 0.5,
                   blend: str = "gaussian", batch_size: int = 1, pad_value: float = -1.0,
                   device: torch.device | str | None = None, accumulate_device: torch.device | str | None = None,
                   generator: torch.Generator | None = None, scale: Scale = 1, desc: str = "tiles",
                   steps_per_tile: int = 1) -> torch.Tensor:
    """Predict a whole ``(C, D, H, W)`` volume with ``predict`` on tiles; returns ``(C_out, D, H, W)`` fp32.

    Args:
        predict: maps ``(N, C, *patch_size)`` on ``device`` to ``(N, C_out, *(patch_size * scale))``.
        step_size: tile stride as a fraction of the patch (0.5 = half-patch overlap).
        pad_value: value for padding inputs smaller than the patch (the plan's normalized air).
        device: where tiles are predicted (default: the volume's device).
        accumulate_device: where the blended sums live (default: ``device``); CPU fallback on OOM.
        generator: the random generator ``predict`` draws from, rewound when an OOM forces a redo.
        scale: output size / input size per axis (a number or 3 numbers): ``1/f`` for an encoder that
            downsamples by ``f``, ``f`` for a decoder. The result is ``(C_out, *(D, H, W) * scale)``; the patch
            and the (padded) volume must scale to whole voxels (``ValueError`` otherwise). Default 1.
        desc, steps_per_tile: the nested progress bar (``autotrans.utils.progress``: on a terminal only) counts
            tiles x ``steps_per_tile`` (a sampler's steps), so a minutes-long latent window is not silent.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    patch = [int(p) for p in patch_size]
    if len(patch) != 3:
        raise ValueError(f"patch_size must have 3 entries, got {patch}")
    scales = parse_scale(scale)
    unscaled = all(sc == 1 for sc in scales)
    device = torch.device(device) if device is not None else volume.device
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else device
    if unscaled:  # today's path, untouched
        padded, inner = pad_to_patch(volume.float(), patch, pad_value)
        out_patch, out_shape, out_inner = patch, padded.shape[1:], inner
        tiles = [(t, t) for t in tile_slices(padded.shape[1:], patch, step_size)]
    else:
        units = [sc.denominator for sc in scales]
        for p, sc in zip(patch, scales):
            _scaled(p, sc, "patch size")
        padded, inner = pad_to_patch(volume.float(), patch, pad_value, units)
        out_patch = [_scaled(p, sc, "patch size") for p, sc in zip(patch, scales)]
        out_shape = [_scaled(n, sc, "volume size") for n, sc in zip(padded.shape[1:], scales)]
        out_inner = tuple(slice(_scaled(sl.start or 0, sc, "crop start"),
                                _scaled(sl.start or 0, sc, "crop start") + _scaled(n, sc, "volume size"))
                          for sl, sc, n in zip(inner, scales, volume.shape[1:]))
        tiles = scaled_tiles(padded.shape[1:], patch, step_size, scales)
    weight = importance_map(out_patch, blend)
    acc: _Accumulators | None = None
    started, next_report, done = time.perf_counter(), PROGRESS_FIRST_S, 0
    per_tile = max(1, int(steps_per_tile))
    bar = progress(total=len(tiles) * per_tile, desc=desc, unit="step" if per_tile > 1 else "tile", leave=False)
    for batch in _batches(tiles, max(1, int(batch_size))):
        in_tiles, out_tiles = [t[0] for t in batch], [t[1] for t in batch]
        state = generator.get_state() if generator is not None else None
        while True:
            try:
                out = _predict_batch(padded, in_tiles, predict, device, None if unscaled else out_patch)
                if acc is None:
                    acc = _Accumulators(out.shape[1], out_shape, acc_device, weight)
                acc.add(out, out_tiles)
                break
            except torch.OutOfMemoryError:
                if acc is None or not acc.fall_back():
                    raise
                if state is not None:
                    generator.set_state(state)
        done += len(batch)
        bar.update(len(batch) * per_tile)
        elapsed = time.perf_counter() - started
        if elapsed >= next_report and done < len(tiles):
            left = elapsed / done * (len(tiles) - done)
            logger.info("sliding window: %s of %s tiles after %s; about %s left for this window",
                        f"{done:,}", f"{len(tiles):,}", format_duration(elapsed), format_duration(left))
            next_report = elapsed + PROGRESS_EVERY_S
    bar.close()
    assert acc is not None  # at least one tile always exists
    return acc.result()[(slice(None), *out_inner)]
