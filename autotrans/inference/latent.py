"""Whole-volume inference for latent families (ldm, ldm_controlnet, bbdm, flow_matching).

A latent family samples in the latent space of an autoencoder that downsamples by ``f``; its patch is planned
in that space (``family.latent_patch_size``; the image patch is ``latent_patch_size * f``). A volume is
predicted in three blended sliding windows, all in the plan's normalized space:

1. **encode**: image tiles of the image patch -> latent tiles (``scale = 1/f``; tile starts on multiples of
   ``f`` so every tile sees the same voxel-to-latent alignment), blended with the chosen importance map;
2. **sample**: a sliding window over the latent volume (patch = the planned latent patch) whose tiles are
   ``cat(source latent, noise)`` and whose patch function calls ``family.sample_latent``;
3. **decode**: latent tiles -> image tiles (``scale = f``) with Gaussian blending, so decoder border effects
   never show as seams, then the padding is cut off.

Why one noise tensor per case: the sampler's start noise is drawn once for the whole latent volume and each
tile takes its slice. Two overlapping tiles then start from *the same* noise in their overlap and, with the
same conditioning there, converge to the same sample, so blending them is seamless. Independent noise per tile
would give two different (equally plausible) samples in every overlap; their blend is a visibly smoother
average with texture jumps at tile borders. It also makes a case's result independent of the batch size and of
the tiling order: the noise is one draw of ``(Lc, d, h, w)`` from the seeded per-case generator, whatever the
tiles. (Noise a sampler draws *inside* ``sample_latent``, e.g. DDPM with eta > 0, still comes from the same
generator, tile after tile.)

Families with ``needs_source_image = True`` (ldm_controlnet) also get the source image tile behind each latent
tile: ``sample_latent(z_tile, noise_tile, generator, source_image=image_tile)``, with ``image_tile`` the padded
source at image resolution (``latent tile * f``), exactly aligned. The image rides along in the latent window
folded into ``C * f**3`` channels at latent resolution (a 3D pixel unshuffle: no extra memory beyond one copy).

Mirror test-time augmentation is the predictor's (``autotrans.inference.predictor``): it runs this whole chain once
per mirrored volume and averages, as it averages mirrored tiles for the other families.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable

import torch

from autotrans.inference.windows import count_tiles, sliding_window
from autotrans.networks.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d

logger = logging.getLogger(__name__)

#: blending of the decoder window (fixed: a decoder's tile borders are its least reliable voxels)
DECODE_BLEND = "gaussian"


def is_latent(family: Any) -> bool:
    """Whether a family predicts through the latent path (GAN families have no ``latent`` attribute)."""
    return bool(getattr(family, "latent", False))


def clock(device: torch.device) -> float:
    """A wall clock that first waits for queued CUDA work (otherwise the time lands in the next phase)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _runner(fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, bf16: bool
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` without autograd, optionally under bf16 autocast on CUDA, returning fp32."""
    autocast = bf16 and device.type == "cuda"

    def run(x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return fn(x).float()

    return run


def space_to_depth(x: torch.Tensor, f: int) -> torch.Tensor:
    """``(C, D, H, W)`` with sizes multiples of ``f`` -> ``(C * f**3, D/f, H/f, W/f)`` (3D pixel unshuffle)."""
    return pixel_unshuffle_3d(x[None], (f, f, f))[0]


def depth_to_space(x: torch.Tensor, f: int) -> torch.Tensor:
    """Inverse of ``space_to_depth`` for a batch: ``(N, C * f**3, d, h, w)`` -> ``(N, C, d*f, h*f, w*f)``."""
    return pixel_shuffle_3d(x, (f, f, f))


def latent_padding(shape: tuple[int, ...] | list[int], factor: int, image_patch: list[int]) -> list[tuple[int, int]]:
    """Per axis (before, after): up to a multiple of ``factor`` and at least ``image_patch`` (both needed by the
    scaled windows), split evenly with the extra voxel after."""
    out = []
    for s, p in zip(shape, image_patch):
        target = max(-(-s // factor) * factor, p)
        missing = target - s
        out.append((missing // 2, missing - missing // 2))
    return out


def predict_latent_volume(volume: torch.Tensor, family: Any, step_size: float = 0.5, blend: str = "gaussian",
                          batch_size: int = 1, pad_value: float = -1.0, device: torch.device | str | None = None,
                          generator: torch.Generator | None = None, bf16: bool = False
                          ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Predict a normalized ``(C, D, H, W)`` source volume with a latent family; returns ``(1, D, H, W)`` fp32
    and the timings ``{"encode_s", "sample_s", "decode_s", "steps", "tiles"}``.

    Args:
        family: implements the latent protocol (``downsampling_factor``, ``latent_channels``,
            ``latent_patch_size``, ``sampling_steps``, ``encode_source``, ``decode_target``, ``sample_latent``).
        step_size, blend, batch_size: as for ``sliding_window`` (``blend`` applies to the encoder and sampler
            windows; the decoder window is always Gaussian).
        pad_value: the source's normalized air, used to pad up to a multiple of ``f`` and the image patch.
        device: where tiles run (default: the family's device).
        generator: the per-case generator: the start noise is drawn from it once per case (see the module
            docstring), and ``sample_latent`` receives it. ``None``: the global RNG.
            Families with ``needs_source_image`` get ``source_image=`` (the aligned padded image tile) too.
        bf16: bf16 autocast on CUDA (accumulation stays fp32).
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W), got shape {tuple(volume.shape)}")
    f = int(family.downsampling_factor)
    lc = int(family.latent_channels)
    latent_patch = [int(p) for p in family.latent_patch_size]
    if f < 1 or lc < 1 or len(latent_patch) != 3 or min(latent_patch) < 1:
        raise ValueError(f"latent family {getattr(family, 'name', family)!r}: downsampling_factor {f}, "
                         f"latent_channels {lc}, latent_patch_size {latent_patch} are not valid")
    image_patch = [p * f for p in latent_patch]
    device = torch.device(device) if device is not None else torch.device(getattr(family, "device", volume.device))
    timings: dict[str, Any] = {"steps": int(family.sampling_steps)}

    # (a) pad with air to a multiple of f and at least the image patch
    amounts = latent_padding(tuple(volume.shape[1:]), f, image_patch)
    inner = tuple(slice(a, a + s) for (a, _), s in zip(amounts, volume.shape[1:]))
    volume = volume.float()
    if any(a or b for a, b in amounts):
        flat = [x for a, b in reversed(amounts) for x in (a, b)]
        volume = torch.nn.functional.pad(volume, flat, mode="constant", value=float(pad_value))

    # (b) encode: image tiles -> latent tiles, blended
    t0 = clock(device)
    z_source = sliding_window(volume, _runner(family.encode_source, device, bf16), image_patch, step_size, blend,
                              batch_size, pad_value, device, scale=(1 / f) if f > 1 else 1, desc="encode")
    latent_shape = tuple(z_source.shape[1:])
    t1 = clock(device)

    # (c) one noise tensor per case, then a latent window over cat(source latent, noise)
    noise_device = generator.device if generator is not None else device
    noise = torch.randn((lc, *latent_shape), generator=generator, device=noise_device, dtype=torch.float32)
    n_source = z_source.shape[0]
    parts = [z_source.to(noise.device), noise]
    with_image = bool(getattr(family, "needs_source_image", False))
    if with_image:  # the aligned source image tile rides along, folded to latent resolution
        parts.append(space_to_depth(volume.to(noise.device), f))
    stacked = torch.cat(parts)
    del parts

    def sample(x: torch.Tensor) -> torch.Tensor:
        z, n = x[:, :n_source], x[:, n_source:n_source + lc]
        if with_image:
            return family.sample_latent(z, n, generator, source_image=depth_to_space(x[:, n_source + lc:], f))
        return family.sample_latent(z, n, generator)

    steps = int(family.sampling_steps)
    z_target = sliding_window(stacked, _runner(sample, device, bf16), latent_patch, step_size, blend, batch_size,
                              0.0, device, generator=generator, desc=f"sample ({steps} steps/tile)",
                              steps_per_tile=steps)
    timings["tiles"] = count_tiles(latent_shape, latent_patch, step_size)
    t2 = clock(device)

    # (d) decode: latent tiles -> image tiles, Gaussian blending
    pred = sliding_window(z_target, _runner(family.decode_target, device, bf16), latent_patch, step_size,
                          DECODE_BLEND, batch_size, 0.0, device, scale=f, desc="decode")
    t3 = clock(device)
    timings.update(encode_s=t1 - t0, sample_s=t2 - t1, decode_s=t3 - t2)

    # (e) crop the padding
    return pred[(slice(None), *inner)], timings
