"""Torch augmentation: the same transform set as ``augment.py``, one code path for CPU workers and the GPU.

Why torch instead of batchgenerators v1: v1 resamples a rotated/scaled patch with scipy's cubic
``map_coordinates``, one channel at a time (3-6 samples/s per 2 workers at 80x96x80). Here one trilinear
``grid_sample`` per batch moves every channel of every resampled sample at once, and mirroring is folded
into the same affine (a sign of an output axis), so nothing is resampled twice.

Guarantees kept from ``augment.py``:

- Joint alignment: source, target, mask and lesion map of a paired sample are channels of ONE tensor, sampled
  with ONE grid; the mask is interpolated linearly and thresholded at 0.5 (never shifted against the image).
  Samples without rotation/scaling are cropped and flipped exactly (no interpolation at all).
- Air padding: every channel is shifted so its air value is 0 before sampling (``grid_sample`` pads zeros)
  and shifted back after; multiplicative intensity transforms also act in that air-shifted space.
- Intensity transforms touch the source only, with batchgenerators v1's distributions and probabilities
  (noise, blur, brightness, contrast, low resolution, gamma; see ``intensity_transforms`` in augment.py).
  Known difference: the low-resolution transform upsamples trilinearly instead of cubically.

Randomness: every parameter is drawn from numpy's global generator, which ``data.batch_rng`` reseeds per
batch, and per-voxel noise from a torch generator seeded from it: a batch is a function of its index alone,
on any worker and any device (the GPU path draws its parameters on the host, then moves them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autotrans.training.augment import AugmentationSettings


@dataclass
class SampleParams:
    """Random draws of one sample: spatial (rotation matrix incl. scale, mirror signs) and source intensity."""

    matrix: np.ndarray  # 3x3, output voxel offset -> input voxel offset, (z, y, x) order, mirroring excluded
    resample: bool  # rotated or scaled: needs interpolation
    flips: tuple[bool, bool, bool]
    intensity: list[tuple[str, Any]] = field(default_factory=list)


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

    The CPU path slices each sample to it before any copy: a patch without rotation/scaling never touches the
    rest of the (up to 3x larger per axis) read region."""
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


def spatial(x: torch.Tensor, params: list[SampleParams], patch: list[int], linear: int | None = None) -> torch.Tensor:
    """``(B, C, *load) -> (B, C, *patch)``: rotated/scaled samples by one trilinear ``grid_sample`` (zeros
    outside), the others by an exact centre crop + flip. ``linear``: channels from this index on are masks
    (sampled the same, then thresholded at 0.5)."""
    load = list(x.shape[2:])
    lo = [(l - p) // 2 for l, p in zip(load, patch)]
    out = x.new_empty((x.shape[0], x.shape[1], *patch))
    resampled = [i for i, p in enumerate(params) if p.resample]
    crop = [i for i in range(len(params)) if i not in resampled]
    if resampled:
        theta = torch.stack([_theta(params[i], load, patch) for i in resampled]).to(x.device, x.dtype)
        grid = F.affine_grid(theta, [len(resampled), x.shape[1], *patch], align_corners=True)
        out[resampled] = F.grid_sample(x[resampled], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    for i in crop:
        c = x[i, :, lo[0]:lo[0] + patch[0], lo[1]:lo[1] + patch[1], lo[2]:lo[2] + patch[2]]
        dims = [k + 1 for k, f in enumerate(params[i].flips) if f]
        out[i] = torch.flip(c, dims) if dims else c
    if linear is not None:
        out[:, linear:] = (out[:, linear:] > 0.5).to(out.dtype)
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


def intensity(src: torch.Tensor, params: list[SampleParams]) -> torch.Tensor:
    """Source-only intensity chain, per sample and channel, in the air-shifted space (in place on a copy)."""
    src = src.clone()
    for b, p in enumerate(params):
        for name, value in p.intensity:
            if name == "seed":
                continue
            for c in range(src.shape[1]):
                v = src[b, c]
                if name == "noise":
                    g = torch.Generator(device="cpu").manual_seed(dict(p.intensity)["seed"] + c)
                    v += torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device) * value
                elif name == "blur" and value[c] > 0:
                    src[b, c] = _blur(v, value[c])
                elif name == "brightness":
                    v *= value[c]
                elif name == "contrast":
                    mn, lo, hi = v.mean(), v.min(), v.max()
                    src[b, c] = ((v - mn) * value[c] + mn).clamp(lo, hi)
                elif name == "lowres" and value[c] < 1:
                    small = [max(int(round(s * value[c])), 1) for s in v.shape]
                    down = F.interpolate(v[None, None], size=small, mode="nearest")
                    src[b, c] = F.interpolate(down, size=list(v.shape), mode="trilinear", align_corners=False)[0, 0]
                elif name == "gamma":
                    mean, std = v.mean(), v.std()
                    lo = v.min()
                    rng = v.max() - lo
                    w = ((v - lo) / (rng + 1e-7)).clamp_min(0) ** value[c] * rng + lo
                    src[b, c] = (w - w.mean()) / (w.std() + 1e-8) * std + mean  # retain_stats
    return src


class TorchAugmentation:
    """The training transform on torch tensors of any device: read regions in, patches out.

    Same batch contract as ``augment.TranslationAugmentation`` (``source``, ``target``, ``mask``, ``lesions``
    and, unpaired, ``target_mask``; batch first). ``__call__`` takes and returns torch tensors;
    ``numpy_transform`` wraps it for batchgenerators' workers (numpy in, numpy out).
    """

    def __init__(self, patch_size: list[int], source_air: list[float], target_air: float,
                 settings: AugmentationSettings, augment: bool = True, threads: int | None = None) -> None:
        self.patch = list(patch_size)
        self.threads = threads  # intra-op threads in a worker process: workers x threads must not oversubscribe
        self.source_air = list(map(float, source_air))
        self.target_air = float(target_air)
        self.settings, self.augment = settings, augment

    def params(self, batch: int, n_src: int) -> list[SampleParams]:
        return draw(self.settings, self.patch, batch, n_src, self.augment, self.settings.intensity)

    def __call__(self, batch: dict[str, torch.Tensor], params: list[SampleParams] | None = None,
                 target_params: list[SampleParams] | None = None) -> dict[str, torch.Tensor]:
        src, tgt = batch["source"].float(), batch["target"].float()
        n, n_src = src.shape[0], src.shape[1]
        params = params if params is not None else self.params(n, n_src)
        s_air = torch.tensor(self.source_air, device=src.device, dtype=src.dtype).reshape(1, -1, 1, 1, 1)
        src, tgt = src - s_air, tgt - self.target_air
        out: dict[str, torch.Tensor] = {}
        if "target_mask" in batch:  # unpaired: source and target regions move independently
            target_params = target_params if target_params is not None else \
                draw(self.settings, self.patch, n, 0, self.augment, False)
            a = spatial(torch.cat([src, batch["mask"].float()], 1), params, self.patch, linear=n_src)
            b = spatial(torch.cat([tgt, batch["target_mask"].float()], 1), target_params, self.patch, linear=1)
            src, mask, tgt, out["target_mask"] = a[:, :n_src], a[:, n_src:], b[:, :1], b[:, 1:]
        else:
            joint = torch.cat([src, tgt, batch["mask"].float(), batch["lesions"].float()], 1)
            moved = spatial(joint, params, self.patch, linear=n_src + 1)
            src, tgt, mask = moved[:, :n_src], moved[:, n_src:n_src + 1], moved[:, n_src + 1:n_src + 2]
        if any(p.intensity for p in params):
            src = intensity(src, params)
        out.update({"source": src + s_air, "target": tgt + self.target_air, "mask": mask})
        return out

    def _sample(self, arrays: list[np.ndarray], airs: list[Any], p: SampleParams, n_masks: int) -> torch.Tensor:
        """One sample on the CPU: slice each read region to the needed box, shift air to 0, then crop/flip or
        one ``grid_sample``; returns ``(C, *patch)`` with masks thresholded (the last ``n_masks`` channels)."""
        load = list(arrays[0].shape[1:])
        box, centre = needed_box(p, load, self.patch)
        parts = [torch.from_numpy(np.asarray(a[(slice(None), *box)], dtype=np.float32)) - air
                 for a, air in zip(arrays, airs)]  # one air per array: a (C, 1, 1, 1) tensor for the source
        x = torch.cat(parts, 0)
        if not p.resample:
            dims = [k + 1 for k, f in enumerate(p.flips) if f]
            out = torch.flip(x, dims) if dims else x
        else:
            theta = _theta(p, list(x.shape[1:]), self.patch, centre).to(x.dtype)[None]
            grid = F.affine_grid(theta, [1, x.shape[0], *self.patch], align_corners=True)
            out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        if n_masks:
            out = torch.cat([out[:-n_masks], (out[-n_masks:] > 0.5).to(out.dtype)], 0)
        return out

    def numpy_transform(self, **batch: Any) -> dict[str, Any]:
        """For batchgenerators' augmenters (numpy in and out): per sample, only the needed box of each read
        region is ever copied (see ``needed_box``); one intra-op thread in worker processes. Same parameters,
        same result as ``__call__`` (which serves the device path, one ``grid_sample`` per batch)."""
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        n, n_src = len(batch["source"]), batch["source"][0].shape[0]  # an array or a list of per-sample regions
        params = self.params(n, n_src)
        unpaired = "target_mask" in batch
        target_params = draw(self.settings, self.patch, n, 0, self.augment, False) if unpaired else None
        s_air1 = torch.tensor(self.source_air).reshape(-1, 1, 1, 1)
        with torch.no_grad():
            src, tgt, mask, tmask = [], [], [], []
            for i in range(n):
                if unpaired:
                    a = self._sample([batch["source"][i], batch["mask"][i]], [s_air1, 0.0], params[i], 1)
                    b = self._sample([batch["target"][i], batch["target_mask"][i]], [self.target_air, 0.0],
                                     target_params[i], 1)  # type: ignore[index]
                    src.append(a[:n_src]), mask.append(a[n_src:]), tgt.append(b[:1]), tmask.append(b[1:])
                else:
                    x = self._sample([batch["source"][i], batch["target"][i], batch["mask"][i], batch["lesions"][i]],
                                     [s_air1, self.target_air, 0.0, 0.0], params[i], 2)
                    src.append(x[:n_src]), tgt.append(x[n_src:n_src + 1]), mask.append(x[n_src + 1:n_src + 2])
            s_air = s_air1[None]
            source = torch.stack(src)
            if any(p.intensity for p in params):
                source = intensity(source, params)
            out = {"source": (source + s_air).numpy(), "target": (torch.stack(tgt) + self.target_air).numpy(),
                   "mask": torch.stack(mask).numpy()}
            if unpaired:
                out["target_mask"] = torch.stack(tmask).numpy()
        for key in ("case_index", "target_case_index", "batch_index"):
            if key in batch:
                out[key] = batch[key]
        return out
