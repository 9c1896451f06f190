"""Torch augmentation: the same transform set as ``augment.py``, one code path for CPU workers and the GPU.

Why torch instead of batchgenerators v1: v1 resamples a rotated/scaled patch with scipy's cubic
``map_coordinates``, one channel at a time (3-6 samples/s per 2 workers at 80x96x80). Here a rotated sample is
one trilinear ``grid_sample`` over all its channels, a scaled-only one three separable 1-D linear passes (the
same values, a fraction of the cost), and mirroring is folded into the same affine (a sign of an output axis),
so nothing is resampled twice.

Why the parameters are drawn in the loader (``TorchAugmentation.plan``): a sample's patch needs only a box of
the read region (the region covers the worst rotation and zoom; most samples are neither rotated nor scaled and
need exactly the patch), so the loader reads only that box from the store (``needed_box``) and hands the
parameters on with the batch. The CPU transform and the device (``--gpu_augmentation``) then apply exactly
those parameters: both paths produce the same batch for the same index, and the GPU path's workers only read.

Guarantees kept from ``augment.py``:

- Joint alignment: source, target and mask of a paired sample are channels of ONE tensor, sampled with ONE
  grid; the mask is interpolated linearly and thresholded at 0.5 (never shifted against the image).
  Samples without rotation/scaling are cropped and flipped exactly (no interpolation at all).
- Air padding: every channel is shifted so its air value is 0 before sampling (``grid_sample`` pads zeros)
  and shifted back after; multiplicative intensity transforms also act in that air-shifted space.
- Intensity transforms touch the source only, with batchgenerators v1's distributions and probabilities
  (noise, blur, brightness, contrast, low resolution, gamma; see ``intensity_transforms`` in augment.py).
  Known difference: the low-resolution transform upsamples trilinearly instead of cubically.

Randomness: every parameter is drawn from numpy's global generator, which ``data.batch_rng`` reseeds per
batch, and per-voxel noise from a torch generator seeded from it: a batch is a function of its index alone,
on any worker and any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autotrans.training.augment import AugmentationSettings, load_size


@dataclass
class SampleParams:
    """Random draws of one sample: spatial (rotation matrix incl. scale, mirror signs) and source intensity."""

    matrix: np.ndarray  # 3x3, output voxel offset -> input voxel offset, (z, y, x) order, mirroring excluded
    resample: bool  # rotated or scaled: needs interpolation
    flips: tuple[bool, bool, bool]
    intensity: list[tuple[str, Any]] = field(default_factory=list)
    #: patch centre in the voxels of the array handed over (``with_boxes``: the needed box, not the read region)
    centre: np.ndarray | None = None


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _bg_factor(lo: float, hi: float) -> float:
    """batchgenerators' two-sided draw (contrast, gamma, scale): half below 1, half above, when the range spans 1."""
    if np.random.random() < 0.5 and lo < 1:
        return float(np.random.uniform(lo, 1))
    return float(np.random.uniform(max(lo, 1), hi))


def draw_spatial(settings: AugmentationSettings, patch: list[int], augment: bool) -> tuple[np.ndarray, bool,
                                                                                           tuple[bool, bool, bool]]:
    """Rotation about each enabled axis (p_rotation per sample), isotropic scale (p_scale), mirror per axis (0.5)."""
    m, resample = np.eye(3), False
    if augment and settings.p_rotation > 0 and np.random.uniform() < settings.p_rotation:
        a = math.radians(settings.rotation_degrees)
        for axis, enabled in enumerate(settings.rotation_axes(patch)):
            if enabled:
                m = m @ _rot(axis, float(np.random.uniform(-a, a)))
        resample = True
    if augment and settings.p_scale > 0 and np.random.uniform() < settings.p_scale:
        m = m * _bg_factor(*settings.scale)  # > 1 samples a wider region: zoom out (as batchgenerators)
        resample = True
    flips = tuple(bool(augment and settings.mirror and np.random.uniform() < 0.5) for _ in range(3))
    return m, resample, flips  # type: ignore[return-value]


def draw_intensity(n_channels: int) -> list[tuple[str, Any]]:
    """batchgenerators v1's source intensity chain (same order, probabilities and ranges as augment.py)."""
    ops: list[tuple[str, Any]] = []
    if np.random.uniform() < 0.1:
        ops.append(("noise", float(np.random.uniform(0, 0.01))))  # v1 uses the drawn "variance" as the std
    if np.random.uniform() < 0.2:
        ops.append(("blur", [float(np.random.uniform(0.5, 1.0)) if np.random.uniform() < 0.5 else 0.0
                             for _ in range(n_channels)]))
    if np.random.uniform() < 0.15:
        ops.append(("brightness", [float(np.random.uniform(0.75, 1.25)) for _ in range(n_channels)]))
    if np.random.uniform() < 0.15:
        ops.append(("contrast", [_bg_factor(0.75, 1.25) for _ in range(n_channels)]))
    if np.random.uniform() < 0.25:
        ops.append(("lowres", [float(np.random.uniform(0.5, 1)) if np.random.uniform() < 0.5 else 1.0
                               for _ in range(n_channels)]))
    if np.random.uniform() < 0.3:
        ops.append(("gamma", [_bg_factor(0.7, 1.5) for _ in range(n_channels)]))
    ops.append(("seed", int(np.random.randint(0, 2 ** 31 - 1))))
    return ops


def draw(settings: AugmentationSettings, patch: list[int], batch: int, n_src: int, augment: bool,
         intensity: bool) -> list[SampleParams]:
    out = []
    for _ in range(batch):
        m, resample, flips = draw_spatial(settings, patch, augment)
        out.append(SampleParams(m, resample, flips, draw_intensity(n_src) if augment and intensity else []))
    return out


def _theta(p: SampleParams, load: list[int], patch: list[int], centre: np.ndarray | None = None) -> torch.Tensor:
    """``affine_grid`` matrix (x, y, z order, normalized, align_corners=True) of one sample: output -> input.

    The rotation centre is the centre of the exact crop (``lo + (p-1)/2``) unless ``centre`` (voxels of the
    input) is given, so a resampled sample and a cropped one of the same region agree where the transform is
    the identity."""
    flip = np.diag([-1.0 if f else 1.0 for f in p.flips])
    m = p.matrix @ flip  # a mirrored output axis walks its offsets backwards
    d_out = np.diag([(s - 1) / 2 for s in patch])
    d_in = np.diag([2 / max(s - 1, 1) for s in load])
    if centre is None:
        centre = np.array([(l - s) // 2 + (s - 1) / 2 for l, s in zip(load, patch)])
    shift = d_in @ (centre - (np.array(load) - 1) / 2)
    zyx = np.concatenate([d_in @ m @ d_out, shift[:, None]], axis=1)
    rev = np.concatenate([zyx[::-1, :3][:, ::-1], zyx[::-1, 3:]], axis=1)  # grid_sample's last dimension is (x, y, z)
    return torch.from_numpy(rev.copy())


def needed_box(p: SampleParams, load: list[int], patch: list[int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The part of the read region a sample's patch samples (the crop, or the rotated/scaled patch's bounding
    box + 1 voxel for the interpolation stencil), and the patch centre in that box's voxels.

    The loader reads only this box (``TorchAugmentation.plan``): a patch without rotation/scaling never touches
    the rest of the (up to 2x larger per axis) read region, not even in the store."""
    lo = np.array([(l - s) // 2 for l, s in zip(load, patch)])
    centre = lo + (np.array(patch) - 1) / 2
    if not p.resample:
        return tuple(slice(int(a), int(a + s)) for a, s in zip(lo, patch)), centre - lo
    half = (np.array(patch) - 1) / 2
    corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * half
    reach = np.abs(corners @ p.matrix.T).max(axis=0)
    start = np.maximum(np.floor(centre - reach).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(centre + reach).astype(int) + 2, load)
    stop = np.maximum(stop, start + 1)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop)), centre - start


def with_boxes(params: list[SampleParams], load: list[int], patch: list[int]
               ) -> tuple[list[SampleParams], list[tuple[slice, ...]]]:
    """Each sample's needed box of the read region (what the loader reads instead of the whole region) and its
    parameters with the patch centre moved into that box's voxels."""
    out, boxes = [], []
    for p in params:
        box, centre = needed_box(p, load, patch)
        out.append(replace(p, centre=centre))
        boxes.append(box)
    return out, boxes


def _affine_grid(theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, *size), align_corners=True)`` as broadcast sums of the three axis ramps: one
    write per output coordinate instead of a batched matrix product over a homogeneous base grid (2-3x less
    time on a CPU core, the largest cost of a rotated sample after ``grid_sample`` itself)."""
    d, h, w = (int(s) for s in size)
    ramps = [torch.linspace(-1, 1, s, device=theta.device, dtype=theta.dtype) if s > 1 else
             torch.zeros(1, device=theta.device, dtype=theta.dtype) for s in (w, h, d)]
    grid = torch.empty((theta.shape[0], d, h, w, 3), device=theta.device, dtype=theta.dtype)
    for b in range(theta.shape[0]):
        for k in range(3):
            t = theta[b, k]
            xy = (t[0] * ramps[0]).view(1, 1, w) + (t[1] * ramps[1]).view(1, h, 1)
            torch.add(xy, (t[2] * ramps[2] + t[3]).view(d, 1, 1), out=grid[b, ..., k])
    return grid


def _rotation_free(p: SampleParams) -> bool:
    return bool(np.count_nonzero(p.matrix - np.diag(np.diag(p.matrix))) == 0)


def _take(y: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``y.index_select(dim, index)`` on a CPU tensor; numpy's ``take`` for the innermost axis, where torch's
    gather is ~10x slower per element (measured: 0.8 s vs 0.07 s for 3x180^3 -> 3x180^2x128, one thread)."""
    if dim == y.dim() - 1 and y.device.type == "cpu":
        return torch.from_numpy(np.take(y.numpy(), index.numpy(), axis=dim))
    return y.index_select(dim, index.to(y.device))


def _separable(x: torch.Tensor, p: SampleParams, patch: list[int], centre: np.ndarray) -> torch.Tensor:
    """``(C, *box) -> (C, *patch)`` for a scaled (and mirrored), not rotated sample: trilinear interpolation
    with zero padding is a product of 1-D linear interpolations, so three gather-and-blend passes give
    ``grid_sample``'s values without a 3-D grid (the axis that shrinks the volume most goes first)."""
    order = sorted(range(3), key=lambda a: patch[a] / x.shape[a + 1])
    y = x
    for axis in order:
        n = y.shape[axis + 1]
        step = float(p.matrix[axis, axis]) * (-1.0 if p.flips[axis] else 1.0)
        pos = float(centre[axis]) + step * (torch.arange(patch[axis], dtype=torch.float64) - (patch[axis] - 1) / 2)
        i0 = torch.floor(pos)
        w1 = pos - i0
        i0 = i0.long()
        i1 = i0 + 1
        w0 = (1 - w1) * ((i0 >= 0) & (i0 < n))
        w1 = w1 * ((i1 >= 0) & (i1 < n))
        shape = [1, 1, 1, 1]
        shape[axis + 1] = -1
        a, b = (_take(y, axis + 1, i.clamp(0, n - 1)) for i in (i0, i1))
        y = a.mul_(w0.to(y.device, y.dtype).view(shape)).add_(b.mul_(w1.to(y.device, y.dtype).view(shape)))
    return y


def spatial(x: torch.Tensor, params: list[SampleParams], patch: list[int], linear: int | None = None) -> torch.Tensor:
    """``(B, C, *load) -> (B, C, *patch)`` for whole read regions: rotated/scaled samples by one trilinear
    ``grid_sample`` (zeros outside), the others by an exact centre crop + flip. ``linear``: channels from this
    index on are masks (sampled the same, then thresholded at 0.5)."""
    load = list(x.shape[2:])
    lo = [(l - p) // 2 for l, p in zip(load, patch)]
    out = x.new_empty((x.shape[0], x.shape[1], *patch))
    resampled = [i for i, p in enumerate(params) if p.resample]
    crop = [i for i in range(len(params)) if i not in resampled]
    if resampled:
        theta = torch.stack([_theta(params[i], load, patch) for i in resampled]).to(x.device, x.dtype)
        grid = _affine_grid(theta, patch)
        out[resampled] = F.grid_sample(x[resampled], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    for i in crop:
        c = x[i, :, lo[0]:lo[0] + patch[0], lo[1]:lo[1] + patch[1], lo[2]:lo[2] + patch[2]]
        dims = [k + 1 for k, f in enumerate(params[i].flips) if f]
        out[i] = torch.flip(c, dims) if dims else c
    if linear is not None:
        out[:, linear:] = (out[:, linear:] > 0.5).to(out.dtype)
    return out


def spatial_boxes(parts: list[list[torch.Tensor]], airs: list[torch.Tensor | float | None],
                  params: list[SampleParams], patch: list[int]) -> torch.Tensor:
    """The device half: per-sample boxes (``parts[array][sample]``, ``(C, *box)``, any dtype) -> ``(B, C, *patch)``
    in the air-shifted space (``airs``: subtracted per array; ``None`` for masks, which are not thresholded here).

    Cropped samples are flipped into place; the resampled ones are zero-padded (= air) into one common box on
    the device and moved by ONE ``grid_sample`` (each sample's own centre and box in its matrix)."""
    n, dev = len(params), parts[0][0].device
    channels = sum(int(p[0].shape[0]) for p in parts)
    out = torch.empty((n, channels, *patch), device=dev)
    resampled = [i for i, p in enumerate(params) if p.resample]
    common = [max(int(parts[0][i].shape[k + 1]) for i in resampled) for k in range(3)] if resampled else []
    big = torch.zeros((len(resampled), channels, *common), device=dev) if resampled else None
    for i, p in enumerate(params):
        if p.resample:
            box = parts[0][i].shape[1:]
            dst = big[resampled.index(i), :, :box[0], :box[1], :box[2]]  # type: ignore[index]
        else:
            dst = out[i]
        dims = [k + 1 for k, f in enumerate(p.flips) if f and not p.resample]
        c = 0
        for part, air in zip(parts, airs):
            v = part[i].float()
            v = v if air is None else v - air
            k = v.shape[0]
            dst[c:c + k] = torch.flip(v, dims) if dims else v
            c += k
    if resampled:
        theta = torch.stack([_theta(params[i], common, patch, params[i].centre) for i in resampled])
        grid = _affine_grid(theta.to(dev, torch.float32), patch)
        out[resampled] = F.grid_sample(big, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out


def _gauss_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = max(int(4.0 * sigma + 0.5), 1)  # scipy's truncate=4
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(v: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one (z, y, x) volume, reflect padding (as scipy's default)."""
    k = _gauss_kernel(sigma, v.device, v.dtype)
    r = (len(k) - 1) // 2
    x = v[None, None]
    for axis in range(3):
        if v.shape[axis] <= r:
            continue
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        x = F.conv3d(F.pad(x, pad, mode="reflect"), k.reshape(shape))
    return x[0, 0]


def intensity_(src: torch.Tensor, params: list[SampleParams], air: torch.Tensor | None = None) -> torch.Tensor:
    """Source-only intensity chain, per sample and channel, in place and in the air-shifted space (``air``:
    shift each augmented sample there and back; samples without an intensity draw are not touched at all)."""
    for b, p in enumerate(params):
        ops = [(name, value) for name, value in p.intensity if name != "seed"]
        if not ops:
            continue
        seed = dict(p.intensity)["seed"]
        x = src[b]
        if air is not None:
            x.sub_(air)
        for name, value in ops:
            for c in range(x.shape[0]):
                v = x[c]
                if name == "noise":
                    g = torch.Generator(device="cpu").manual_seed(seed + c)
                    v.add_(torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device), alpha=value)
                elif name == "blur" and value[c] > 0:
                    v.copy_(_blur(v, value[c]))
                elif name == "brightness":
                    v.mul_(value[c])
                elif name == "contrast":
                    mn = v.mean()
                    lo, hi = torch.aminmax(v)
                    v.sub_(mn).mul_(value[c]).add_(mn).clamp_(lo, hi)
                elif name == "lowres" and value[c] < 1:
                    small = [max(int(round(s * value[c])), 1) for s in v.shape]
                    down = F.interpolate(v[None, None], size=small, mode="nearest")
                    v.copy_(F.interpolate(down, size=list(v.shape), mode="trilinear", align_corners=False)[0, 0])
                elif name == "gamma":
                    mean, std = v.mean(), v.std()
                    lo, hi = torch.aminmax(v)
                    rng = hi - lo
                    w = v.sub(lo).div_(rng + 1e-7).clamp_min_(0).pow_(value[c]).mul_(rng).add_(lo)
                    v.copy_(w.sub_(w.mean()).div_(w.std() + 1e-8).mul_(std).add_(mean))  # retain_stats
        if air is not None:
            x.add_(air)
    return src


def intensity(src: torch.Tensor, params: list[SampleParams]) -> torch.Tensor:
    """``intensity_`` on a copy."""
    return intensity_(src.clone(), params)


def _flipped(a: np.ndarray, flips: tuple[bool, bool, bool]) -> np.ndarray:
    """A mirrored view of ``(C, z, y, x)`` (numpy views take negative strides, torch tensors do not)."""
    return a[(slice(None), *[slice(None, None, -1) if f else slice(None) for f in flips])]


class TorchAugmentation:
    """The training transform on torch tensors of any device: read regions (or needed boxes) in, patches out.

    Same batch contract as ``augment.TranslationAugmentation`` (``source``, ``target``, ``mask`` and,
    unpaired, ``target_mask``; batch first). ``plan`` draws a batch's parameters and boxes for the loader;
    ``numpy_transform`` is the CPU workers' transform (numpy in, numpy out); ``__call__`` the device's.
    """

    def __init__(self, patch_size: list[int], source_air: list[float], target_air: float,
                 settings: AugmentationSettings, augment: bool = True, threads: int | None = None) -> None:
        self.patch = list(patch_size)
        self.threads = threads  # intra-op threads in a worker process: workers x threads must not oversubscribe
        self.source_air = list(map(float, source_air))
        self.target_air = float(target_air)
        self.settings, self.augment = settings, augment
        self.load = load_size(self.patch, settings)

    def params(self, batch: int, n_src: int) -> list[SampleParams]:
        return draw(self.settings, self.patch, batch, n_src, self.augment, self.settings.intensity)

    def target_params(self, batch: int) -> list[SampleParams]:
        """Unpaired batches: the target regions' own spatial draws (no intensity: the target stays clean)."""
        return draw(self.settings, self.patch, batch, 0, self.augment, False)

    def plan(self, batch: int, n_src: int, unpaired: bool, load: list[int] | None = None) -> dict[str, Any]:
        """A batch's parameters (same draws, same order as an unplanned ``numpy_transform``) and, per sample, the
        box of the read region (size ``load``) its patch needs: ``params``, ``boxes`` and, unpaired,
        ``target_params``, ``target_boxes``."""
        load = list(load) if load is not None else self.load
        out: dict[str, Any] = {}
        out["params"], out["boxes"] = with_boxes(self.params(batch, n_src), load, self.patch)
        if unpaired:
            out["target_params"], out["target_boxes"] = with_boxes(self.target_params(batch), load, self.patch)
        return out

    def __call__(self, batch: dict[str, Any], params: list[SampleParams] | None = None,
                 target_params: list[SampleParams] | None = None) -> dict[str, torch.Tensor]:
        """The device transform: a planned batch (lists of per-sample boxes + ``params``) or stacked whole read
        regions (parameters drawn here unless given)."""
        if "params" in batch:
            return self._boxes(batch)
        src, tgt = batch["source"].float(), batch["target"].float()
        n, n_src = src.shape[0], src.shape[1]
        params = params if params is not None else self.params(n, n_src)
        s_air = torch.tensor(self.source_air, device=src.device, dtype=src.dtype).reshape(1, -1, 1, 1, 1)
        src, tgt = src - s_air, tgt - self.target_air
        out: dict[str, torch.Tensor] = {}
        if "target_mask" in batch:  # unpaired: source and target regions move independently
            target_params = target_params if target_params is not None else self.target_params(n)
            a = spatial(torch.cat([src, batch["mask"].float()], 1), params, self.patch, linear=n_src)
            b = spatial(torch.cat([tgt, batch["target_mask"].float()], 1), target_params, self.patch, linear=1)
            src, mask, tgt, out["target_mask"] = a[:, :n_src], a[:, n_src:], b[:, :1], b[:, 1:]
        else:
            joint = torch.cat([src, tgt, batch["mask"].float()], 1)
            moved = spatial(joint, params, self.patch, linear=n_src + 1)
            src, tgt, mask = moved[:, :n_src], moved[:, n_src:n_src + 1], moved[:, n_src + 1:n_src + 2]
        if any(p.intensity for p in params):
            src = intensity(src, params)
        out.update({"source": src + s_air, "target": tgt + self.target_air, "mask": mask})
        return out

    def _boxes(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Device half of a planned batch: ``spatial_boxes`` with the loader's parameters, then intensity."""
        params = batch["params"]
        n_src = int(batch["source"][0].shape[0])
        dev = batch["source"][0].device
        s_air = torch.tensor(self.source_air, device=dev).reshape(-1, 1, 1, 1)
        out: dict[str, torch.Tensor] = {}
        if "target_mask" in batch:
            a = spatial_boxes([batch["source"], batch["mask"]], [s_air, None], params, self.patch)
            b = spatial_boxes([batch["target"], batch["target_mask"]], [self.target_air, None],
                              batch["target_params"], self.patch)
            src, mask, tgt = a[:, :n_src], a[:, n_src:], b[:, :1]
            out["target_mask"] = (b[:, 1:] > 0.5).float()
        else:
            x = spatial_boxes([batch["source"], batch["target"], batch["mask"]], [s_air, self.target_air, None],
                              params, self.patch)
            src, tgt, mask = x[:, :n_src], x[:, n_src:n_src + 1], x[:, n_src + 1:n_src + 2]
        intensity_(src, params)
        out.update({"source": (src + s_air[None]).contiguous(), "target": (tgt + self.target_air).contiguous(),
                    "mask": (mask > 0.5).float()})
        return out

    def _sample_into(self, arrays: list[np.ndarray], airs: list[Any], outs: list[np.ndarray], p: SampleParams,
                     planned: bool) -> None:
        """One sample on the CPU, written into its slots of the output batch (``outs``, float32, un-shifted).

        ``arrays``: the needed boxes (``planned``) or whole read regions (sliced to the box here). ``airs``:
        per array, subtracted before resampling; ``None`` marks a mask (thresholded at 0.5 after it). A cropped
        sample is one flipped copy per array, nothing else."""
        if not planned:
            box, centre = needed_box(p, list(arrays[0].shape[1:]), self.patch)
            arrays = [a[(slice(None), *box)] for a in arrays]
            p = replace(p, centre=centre)
        if not p.resample:
            for a, o in zip(arrays, outs):
                np.copyto(o, _flipped(a, p.flips), casting="unsafe")
            return
        x = np.empty((sum(a.shape[0] for a in arrays), *arrays[0].shape[1:]), np.float32)
        c = 0
        for a, air in zip(arrays, airs):
            dst = x[c:c + a.shape[0]]
            if air is None:
                np.copyto(dst, a, casting="unsafe")
            else:
                np.subtract(a, air, out=dst, casting="unsafe")
            c += a.shape[0]
        xt = torch.from_numpy(x)
        if _rotation_free(p):
            y = _separable(xt, p, self.patch, p.centre)  # type: ignore[arg-type]
        else:
            theta = _theta(p, list(x.shape[1:]), self.patch, p.centre).float()[None]
            y = F.grid_sample(xt[None], _affine_grid(theta, self.patch), mode="bilinear", padding_mode="zeros",
                              align_corners=True)[0]
        ys = y.numpy()
        c = 0
        for o, air in zip(outs, airs):
            k = o.shape[0]
            if air is None:
                np.greater(ys[c:c + k], 0.5, out=o, casting="unsafe")
            else:
                np.add(ys[c:c + k], air, out=o)
            c += k

    def numpy_transform(self, **batch: Any) -> dict[str, Any]:
        """For batchgenerators' augmenters (numpy in and out). A planned batch (``params`` from the loader) holds
        per-sample boxes; otherwise parameters are drawn here and each whole region is sliced to its box.
        Outputs are allocated once and written in place; one intra-op thread in worker processes."""
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        n, n_src = len(batch["source"]), batch["source"][0].shape[0]  # an array or a list of per-sample regions
        unpaired = "target_mask" in batch
        planned = "params" in batch
        if planned:
            params, target_params = batch["params"], batch.get("target_params")
        else:
            params = self.params(n, n_src)
            target_params = self.target_params(n) if unpaired else None
        shape = tuple(self.patch)
        src = np.empty((n, n_src, *shape), np.float32)
        tgt, mask = np.empty((n, 1, *shape), np.float32), np.empty((n, 1, *shape), np.float32)
        tmask = np.empty((n, 1, *shape), np.float32) if unpaired else None
        s_air = np.asarray(self.source_air, np.float32).reshape(-1, 1, 1, 1)
        t_air = np.float32(self.target_air)
        with torch.no_grad():
            for i in range(n):
                if unpaired:
                    self._sample_into([batch["source"][i], batch["mask"][i]], [s_air, None], [src[i], mask[i]],
                                      params[i], planned)
                    self._sample_into([batch["target"][i], batch["target_mask"][i]], [t_air, None],
                                      [tgt[i], tmask[i]], target_params[i], planned)  # type: ignore[index]
                else:
                    self._sample_into([batch["source"][i], batch["target"][i], batch["mask"][i]], [s_air, t_air, None],
                                      [src[i], tgt[i], mask[i]], params[i], planned)
            intensity_(torch.from_numpy(src), params, torch.from_numpy(s_air))
        out: dict[str, Any] = {"source": src, "target": tgt, "mask": mask}
        if tmask is not None:
            out["target_mask"] = tmask
        for key in ("case_index", "target_case_index", "batch_index"):
            if key in batch:
                out[key] = batch[key]
        return out
