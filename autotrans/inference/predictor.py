"""The predictor: settings, per-fold sliding windows, fold ensembling and export in physical units.

``Predictor`` only stores settings and the loaded folds; the work is done by ``sliding_window`` (tiles) and
``export_prediction`` (the preprocessor's exact inverse), so training, preprocessing and inference share one
definition of every transform.

One protocol for every family:

- Mirror test-time augmentation (on by default, ``tta=False`` / ``--disable_tta`` for all): the average of the
  predictions of every mirrored input over the axes the model trained with mirroring. Sliding-window families
  mirror each tile; latent families (``family.latent``, whose window runs in latent space) run their whole
  chain — encode, latent sampling window with one noise draw per case and pass, decode — once per mirrored
  volume. Either way each mirror costs one full prediction and is averaged the same way.
- Fold ensembling in physical units: each fold's prediction is exported (inverted to HU / SUV / the plan's MR
  scale, resampled, un-cropped) and the exports are averaged. With a nonlinear inverse (log1p PET) the mean of
  the physical values is the MSE-optimal combination of the folds; the inverse of a normalized mean is biased
  low (5 and 15 SUV would give 8.8). The optional uncertainty is the per-voxel standard deviation of the same
  exports, in the same unit.

Each case's per-fold timings are kept in ``Predictor.timings`` (``predict_folder`` writes them to
``timings.json``).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from autotrans.errors import ConfigurationError
from autotrans.inference.cases import intensity_warnings, preprocess_case
from autotrans.inference.latent import clock, is_latent, predict_latent_volume
from autotrans.inference.models import LoadedFold, LoadedModel
from autotrans.inference.windows import BLEND_MODES, count_tiles, sliding_window
from autotrans.io import Geometry, read_image
from autotrans.planning.plans import Configuration, Plans
from autotrans.preprocessing.preprocessor import export_prediction

logger = logging.getLogger(__name__)


@dataclass
class PredictorSettings:
    """What a user can choose at prediction time (the CLI flags map onto these one to one)."""

    step_size: float = 0.5
    blend: str = "gaussian"
    tta: bool = True  # mirror TTA for every family, over the axes the checkpoint says the model trained mirrored
    seed: int = 0
    batch_size: int = 1
    device: str = "cpu"
    bf16: bool = True  # bf16 autocast on CUDA (accumulation stays fp32); ignored on the CPU
    save_uncertainty: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.step_size <= 1:
            raise ConfigurationError(f"step_size {self.step_size}: must be in (0, 1]")
        if self.blend not in BLEND_MODES:
            raise ConfigurationError(f"blend {self.blend!r}: use one of {', '.join(BLEND_MODES)}")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size {self.batch_size}: must be >= 1")


def case_generator(seed: int, case_id: str, fold: str, device: torch.device) -> torch.Generator:
    """A generator seeded from (seed, case, fold): reproducible per case, whatever order cases run in."""
    digest = hashlib.sha1(f"{seed}|{case_id}|{fold}".encode()).hexdigest()
    g = torch.Generator(device=device)
    g.manual_seed(int(digest[:15], 16))
    return g


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes (the empty one included): 2**len(axes) passes."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def make_patch_fn(fold: LoadedFold, tta: bool, bf16: bool, generator: torch.Generator | None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tile predictor of one fold: no autograd, optional bf16 autocast, mirror TTA where trained."""
    family = fold.family
    flips = mirror_combinations(fold.mirror_axes) if tta and fold.mirror_axes else [()]
    autocast = bf16 and family.device.type == "cuda"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(family.device.type, dtype=torch.bfloat16, enabled=autocast):
            total = None
            for axes in flips:
                dims = [a + 2 for a in axes]
                xi = torch.flip(x, dims) if dims else x
                y = family.predict_patch(xi, generator).float()
                y = torch.flip(y, dims) if dims else y
                total = y if total is None else total + y  # out of place: never write into a family's tensor
            return total / len(flips) if len(flips) > 1 else total

    return run


class Predictor:
    """Settings plus a loaded model; ``predict_*`` methods turn sources into physical-unit predictions."""

    def __init__(self, model: LoadedModel, settings: PredictorSettings | None = None) -> None:
        self.model = model
        self.settings = settings or PredictorSettings()
        self.device = torch.device(self.settings.device)
        #: case id -> fold -> timings of the last ``predict_folds`` of that case (seconds; see ``predict_folds``)
        self.timings: dict[str, dict[str, dict[str, Any]]] = {}

    @property
    def plans(self) -> Plans:
        return self.model.plans

    @property
    def configuration(self) -> Configuration:
        return self.model.configuration

    @property
    def invert(self) -> bool:
        """MR targets have no absolute scale: they stay in the plan's normalized output scale."""
        return not self.plans.target_normalization.per_case

    def output_unit(self) -> str:
        return str(self.plans.data["normalization"].get("target_output_scale", self.plans.target_normalization.unit))

    def predict_folds(self, data: np.ndarray, case_id: str) -> list[np.ndarray]:
        """One normalized ``(z, y, x)`` prediction per fold for a preprocessed ``(C, z, y, x)`` source.

        Also sets ``self.timings[case_id]`` to ``{fold: timings}``: ``{"predict_s"}`` for sliding-window
        families, plus ``encode_s``, ``sample_s``, ``decode_s``, ``steps`` and ``tiles`` for latent ones.
        """
        volume = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        if self.device.type != "cpu":
            try:
                volume = volume.to(self.device)
            except torch.OutOfMemoryError:  # tiles then travel to the device one batch at a time
                logger.warning("%s: source volume does not fit on %s; keeping it on the CPU", case_id, self.device)
        s = self.settings
        cfg = self.configuration
        out = []
        case_timings: dict[str, dict[str, Any]] = {}
        for fold in self.model.folds:
            gen = case_generator(s.seed, case_id, fold.fold, fold.family.device) if fold.family.stochastic else None
            start = clock(self.device)
            if is_latent(fold.family):
                pred, timing = self._predict_latent(volume, fold, gen)
            else:
                pred = sliding_window(volume, make_patch_fn(fold, s.tta, s.bf16, gen), cfg.patch_size, s.step_size,
                                      s.blend, s.batch_size, self._pad_value(), self.device, generator=gen)
                timing = {}
            out.append(pred[0].cpu().numpy())
            timing["predict_s"] = clock(self.device) - start
            case_timings[fold.fold] = timing
        self.timings[case_id] = case_timings
        return out

    def window_patch(self, fold: LoadedFold) -> list[int]:
        """The patch ``step_size`` applies to: the plan's patch, or a latent family's latent patch."""
        if is_latent(fold.family):
            return [int(p) for p in fold.family.latent_patch_size]
        return [int(p) for p in self.configuration.patch_size]

    def workload(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """``(tiles per pass, passes, tile predictions)`` for a preprocessed volume of spatial ``shape``.

        A pass is one fold under one mirror combination; tile predictions are the sum of tiles over all passes
        (what the network runs). Latent families count the tiles of their sampler window, each one a full
        sampler run (their encoder and decoder windows have as many, much cheaper, tiles). Counted, not built.
        """
        s = self.settings
        per_pass = passes = total = 0
        for fold in self.model.folds:
            mirrors = len(mirror_combinations(fold.mirror_axes)) if s.tta and fold.mirror_axes else 1
            patch = self.window_patch(fold)
            if is_latent(fold.family):
                f = int(fold.family.downsampling_factor)
                shape_ = [max(-(-int(n) // f) * f, p * f) // f for n, p in zip(shape, patch)]
            else:
                shape_ = [int(n) for n in shape]
            tiles = count_tiles(shape_, patch, s.step_size)
            per_pass = max(per_pass, tiles)
            passes += mirrors
            total += tiles * mirrors
        return per_pass, passes, total

    def _predict_latent(self, volume: torch.Tensor, fold: LoadedFold, generator: torch.Generator | None
                        ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The latent chain once per mirrored volume (see the module docstring), averaged; timings summed."""
        s = self.settings
        flips = mirror_combinations(fold.mirror_axes) if s.tta and fold.mirror_axes else [()]
        total: torch.Tensor | None = None
        timings: dict[str, Any] = {}
        for axes in flips:
            dims = [a + 1 for a in axes]  # (C, D, H, W): spatial axes start at 1
            vol = torch.flip(volume, dims) if dims else volume
            pred, t = predict_latent_volume(vol, fold.family, s.step_size, s.blend, s.batch_size, self._pad_value(),
                                            self.device, generator, s.bf16)
            pred = torch.flip(pred, dims) if dims else pred
            total = pred if total is None else total + pred
            for k, v in t.items():
                timings[k] = timings.get(k, 0) + v if k.endswith("_s") else v
        timings["mirror_passes"] = len(flips)
        assert total is not None
        return total / len(flips), timings

    def describe_device(self) -> str:
        """The compute device for reports, with the GPU's name where there is one (``cuda:0 (NVIDIA H100 ...)``)."""
        if self.device.type == "cuda" and torch.cuda.is_available():
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return str(self.device)

    def _pad_value(self) -> float:
        """Padding is in the *source* space: channel 0's normalized air (all schemes use -1 today)."""
        return float(self.plans.source_normalization[0].air)

    def predict_array(self, source: np.ndarray, geometry: Geometry, case_id: str = "case"
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Whole chain in memory: ``(C, z, y, x)`` source -> (prediction, std or None) in physical units."""
        for w in intensity_warnings(case_id, source, self.plans, self.model.fingerprint):
            logger.warning(w)
        data, props = preprocess_case(source, geometry, self.plans, self.configuration.name)
        preds = self.predict_folds(data, case_id)
        return export_ensemble(preds, props, self.plans, self.configuration, self.invert,
                               self.settings.save_uncertainty)

    def predict_image(self, image: sitk.Image | str | os.PathLike | Sequence[sitk.Image | str | os.PathLike],
                      case_id: str = "case") -> sitk.Image:
        """Python API: SimpleITK image(s) or path(s), one per source channel, in; SimpleITK image out.

        The output carries the first channel's geometry (for the std map use ``predict_array``).
        """
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        n = len(self.plans.source_modalities)
        if len(items) != n:
            raise ConfigurationError(f"the model takes {n} source channel(s), got {len(items)} image(s)")
        arrays, geometries = zip(*(_as_array(i) for i in items))
        for i, g in enumerate(geometries[1:], 1):
            if (diff := geometries[0].mismatch(g)) is not None:
                raise ConfigurationError(f"{case_id}: channel {i} geometry differs from channel 0: {diff}")
        pred, _ = self.predict_array(np.stack(arrays), geometries[0], case_id)
        return geometries[0].apply_to(sitk.GetImageFromArray(pred))


def _as_array(item: sitk.Image | str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """One channel as a float32 ``(z, y, x)`` array and its geometry; paths go through ``read_image``."""
    if isinstance(item, (str, os.PathLike)):
        arr, geometry = read_image(item)
    else:
        if item.GetDimension() != 3 or item.GetNumberOfComponentsPerPixel() != 1:
            raise ConfigurationError(f"expected a 3D scalar image, got {item.GetDimension()}D with "
                                     f"{item.GetNumberOfComponentsPerPixel()} component(s) per voxel")
        arr, geometry = sitk.GetArrayFromImage(item).astype(np.float32), Geometry.from_sitk(item)
    if not np.isfinite(arr).all():
        raise ConfigurationError("input image contains NaN or Inf voxels")
    return arr, geometry


def export_ensemble(preds: list[np.ndarray], properties: dict[str, Any], plans: Plans, cfg: Configuration,
                    invert: bool, with_std: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Each fold exported in physical units, then averaged; std across the same exports (Welford)."""
    avg: np.ndarray | None = None
    m2: np.ndarray | None = None
    for k, p in enumerate(preds, 1):
        x = export_prediction(p, properties, plans, cfg, invert=invert).astype(np.float64)
        if avg is None:
            avg, m2 = x, np.zeros(x.shape, dtype=np.float64)
            continue
        delta = x - avg
        avg += delta / k
        m2 += delta * (x - avg)
    assert avg is not None and m2 is not None
    mean = avg.astype(np.float32)
    if not with_std:
        return mean, None
    if len(preds) < 2:
        logger.warning("%s: uncertainty needs at least two folds; the std map is all zeros",
                       properties.get("case", "case"))
    return mean, np.sqrt(m2 / len(preds)).astype(np.float32)


def output_paths(out_dir: Path, case_id: str, ending: str) -> tuple[Path, Path]:
    """Prediction ``{CASE}{ending}`` and uncertainty ``{CASE}_std{ending}``."""
    return out_dir / f"{case_id}{ending}", out_dir / f"{case_id}_std{ending}"
