"""The self-configuring planner: fingerprint -> plans.json, every derived decision recorded as data.

The U-Net part (target spacing, transposition, patch size, topology, batch size, 3d_lowres) follows
nnU-Net v2's default ExperimentPlanner rules so a user gets the configuration nnU-Net would give the same
images (checked by tests against the nnunetv2 package); the ResEnc presets (``planning/presets.py``) follow
nnU-Net's nnUNetPlannerResEncM/L/XL the same way. Translation-specific parts (normalization of
source and target, per-family sections) are added on top.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotrans import __version__
from autotrans.dataset.format import DatasetJson
from autotrans.errors import ConfigurationError
from autotrans.planning.families import plan_families
from autotrans.planning.presets import DEFAULT_PRESET, PRESETS, PlannerPreset, get_preset, preset_for_plans_name
from autotrans.planning.topology import pool_and_conv_props
from autotrans.planning.fingerprint import case_statistics
from autotrans.preprocessing.normalization import NormalizationDefaults, plan_normalization

logger = logging.getLogger(__name__)

ANISO_THRESHOLD = 3
UNET_BASE_FEATURES = 32
UNET_MAX_FEATURES_3D = 320
UNET_REFERENCE_VAL_3D = PRESETS[DEFAULT_PRESET].reference_val_3d  # nnU-Net v2's feature-map voxels for 8 GB at bs 2
UNET_REFERENCE_GB = PRESETS[DEFAULT_PRESET].reference_gb
UNET_REFERENCE_BS = 2
UNET_MIN_BATCH_SIZE = 2
UNET_MIN_EDGE = 4
MAX_DATASET_COVERED = PRESETS[DEFAULT_PRESET].max_dataset_covered
LOWRES_THRESHOLD = 0.25
LOWRES_SPACING_FACTOR = 1.03
UNET_CLASS = PRESETS[DEFAULT_PRESET].network_class_name
DEFAULT_PLANS_NAME = PRESETS[DEFAULT_PRESET].plans_name
#: configurations the planner itself writes; re-planning replaces these and keeps only user-added ones
GENERATED_CONFIGURATIONS = ("3d_fullres", "3d_lowres")
#: the planned images (median voxels at the target spacing) may hold this many times the raw voxels before a
#: warning, and at most this many times (a 0.01 mm target on 6 mm data: a 10^8-fold upsampling) before refusal
UPSAMPLING_WARN = 10.0
UPSAMPLING_MAX = 1000.0


@dataclass(frozen=True)
class PlannerOptions:
    """Planner settings. ``preset`` (``-pl``) picks the network and its memory reference; a ``None`` GPU target
    or plans name becomes the preset's on construction (so every reader sees concrete values)."""

    gpu_memory_target_gb: float | None = None  # None: the preset's (8 GB by default)
    overwrite_target_spacing: tuple[float, float, float] | None = None  # (z, y, x) before transposition
    plans_name: str | None = None  # None: the preset's (autotransPlans by default)
    output_channels: int = 1  # the generator predicts the target: one channel
    normalization: NormalizationDefaults = field(default_factory=NormalizationDefaults)
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)  # unknown name: one line listing the valid ones
        gb = preset.gpu_memory_target_gb if self.gpu_memory_target_gb is None else self.gpu_memory_target_gb
        object.__setattr__(self, "preset", preset.name)
        object.__setattr__(self, "gpu_memory_target_gb", gb)
        if self.plans_name is None:
            valid_gb = isinstance(gb, (int, float)) and math.isfinite(gb)
            object.__setattr__(self, "plans_name", preset.plans_name_for(gb) if valid_gb else preset.plans_name)
            if self.plans_name != preset.plans_name:
                logger.info("-pl %s at -gpu_memory_target %g GB (the preset's is %g): plans name %s", preset.name, gb,
                            preset.gpu_memory_target_gb, self.plans_name)

    @property
    def planner_preset(self) -> PlannerPreset:
        return PRESETS[self.preset]

    @property
    def default_preprocessing(self) -> bool:
        """Whether the preprocessing decisions are the default plan's (then a preset shares its 3d_fullres data)."""
        return self.overwrite_target_spacing is None and self.normalization == NormalizationDefaults()


def validate_options(options: PlannerOptions) -> None:
    """Refuse numeric planner settings that cannot give a plan, with one line naming the flag."""
    gb = options.gpu_memory_target_gb
    if not (isinstance(gb, (int, float)) and math.isfinite(gb) and gb > 0):
        raise ConfigurationError(f"-gpu_memory_target {gb:g}: must be a positive number of GB (e.g. 8)")
    owner = preset_for_plans_name(options.plans_name)
    if owner is not None and owner.name != options.preset:
        raise ConfigurationError(f"plans name {options.plans_name} belongs to planner preset {owner.name}, not "
                                 f"{options.preset}: use -pl {owner.name} or another -overwrite_plans_name")
    ts = options.overwrite_target_spacing
    if ts is not None:
        if len(ts) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in ts):
            raise ConfigurationError(f"--overwrite_target_spacing {' '.join(f'{v:g}' for v in ts)}: "
                                     "needs three positive spacings in mm (z y x)")
    norm = options.normalization
    lo, hi = (float(v) for v in norm.ct_window)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigurationError(f"--ct_window {lo:g} {hi:g}: needs two finite HU values, LO < HI")
    if norm.pet_ceiling is not None and not (math.isfinite(norm.pet_ceiling) and norm.pet_ceiling > 0):
        raise ConfigurationError(f"--pet_ceiling {norm.pet_ceiling:g}: must be a positive SUV")


def check_upsampling(raw_shapes: list, new_shapes: list, target_spacing: np.ndarray, median_spacing: np.ndarray) -> float:
    """Ratio of planned to raw voxels (medians over cases); warn above ``UPSAMPLING_WARN``, refuse above
    ``UPSAMPLING_MAX``: such a target spacing invents detail the data do not have and multiplies disk, memory and
    training time by the same factor."""
    raw = float(np.median([np.prod(s, dtype=np.float64) for s in raw_shapes]))
    new = float(np.median([np.prod(s, dtype=np.float64) for s in new_shapes]))
    ratio = new / max(raw, 1.0)
    spacing = " x ".join(f"{v:g}" for v in target_spacing)
    median = " x ".join(f"{v:g}" for v in median_spacing)
    if ratio > UPSAMPLING_MAX:
        raise ConfigurationError(
            f"target spacing {spacing} mm on data of median spacing {median} mm would make the images {ratio:.3g}x "
            f"larger than the raw ones (at most {UPSAMPLING_MAX:g}x is accepted): choose a coarser "
            "--overwrite_target_spacing")
    if ratio > UPSAMPLING_WARN:
        logger.warning("target spacing %s mm on data of median spacing %s mm makes the images %.3gx larger than the raw "
                       "ones: disk, memory and training time grow by the same factor", spacing, median, ratio)
    return ratio


def compute_new_shape(shape: list[int], spacing: list[float], new_spacing: list[float]) -> np.ndarray:
    return np.array([int(round(s * sp / nsp)) for s, sp, nsp in zip(shape, spacing, new_spacing)])


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray, overwrite: tuple[float, ...] | None = None) -> np.ndarray:
    """Median spacing; for strongly anisotropic data with few slices, the 10th percentile of the coarse axis.

    Interpolating a 5 mm axis of some cases to a median of 3 mm and others' 1 mm to 3 mm loses less than the
    median rule would when most cases are coarse (nnU-Net's anisotropy rule, threshold 3).
    """
    if overwrite is not None:
        return np.array(overwrite, dtype=float)
    target = np.percentile(spacings, 50, 0)
    target_size = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[i] for i in others)
    aniso_voxels = target_size[worst] * ANISO_THRESHOLD < min(target_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        t = np.percentile(spacings[:, worst], 10)
        other_max = max(target[i] for i in others)
        if t < other_max:
            t = max(other_max, t) + 1e-5
        target[worst] = t
    return target


def transpose_for(spacing: np.ndarray) -> tuple[list[int], list[int]]:
    """Put the coarsest axis first (so 2D slicing and separate-z logic see it as z)."""
    first = int(np.argmax(spacing))
    forward = [first] + [i for i in range(3) if i != first]
    backward = [forward.index(i) for i in range(3)]
    return forward, backward


def _unet_kwargs(topo_strides: tuple, kernels: tuple, n_stages: int,
                 preset: PlannerPreset = PRESETS[DEFAULT_PRESET]) -> dict[str, Any]:
    """``arch_kwargs`` in nnU-Net's plans layout (a PlainConvUNet's convs per stage, or a ResEnc's blocks)."""
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(UNET_MAX_FEATURES_3D, UNET_BASE_FEATURES * 2 ** i) for i in range(n_stages)],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in topo_strides],
        **preset.encoder_kwargs(n_stages),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


class UNetMemoryModel:
    """Feature-map voxel count of the planned U-Net (PlainConvUNet or ResidualEncoderUNet, the preset's class),
    computed by dynamic-network-architectures as nnU-Net's ``static_estimate_VRAM_usage`` does."""

    def __init__(self, in_channels: int, out_channels: int, network_class_name: str = UNET_CLASS) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.network_class_name = network_class_name
        self._cache: dict[str, float] = {}

    def __call__(self, patch_size: tuple[int, ...], arch_kwargs: dict[str, Any]) -> float:
        key = f"{tuple(patch_size)}_{arch_kwargs['strides']}"
        if key not in self._cache:
            import torch

            from autotrans.networks.unet import resolve_import

            kw = dict(arch_kwargs)
            kw.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, dropout_op=None)
            n_threads = torch.get_num_threads()
            try:
                # on the meta device: the count needs the modules' shapes only, not initialised weights (a
                # ResEnc XL candidate's CPU initialisation took seconds, and the planner tries many patches)
                with torch.device("meta"):
                    net = resolve_import(self.network_class_name)(input_channels=self.in_channels,
                                                                  num_classes=self.out_channels, **kw)
                self._cache[key] = float(net.compute_conv_feature_map_size(list(patch_size)))
            finally:
                torch.set_num_threads(n_threads)
        return self._cache[key]


def plan_configuration(spacing: np.ndarray, median_shape: np.ndarray, n_voxels_dataset: float,
                       memory: UNetMemoryModel, gpu_memory_target_gb: float, data_identifier: str,
                       preset: PlannerPreset = PRESETS[DEFAULT_PRESET]) -> dict[str, Any]:
    """Patch size, topology and batch size for one spacing (nnU-Net v2's get_plans_for_configuration rules, with
    the preset's network, reference and dataset cap)."""
    tmp = 1 / np.array(spacing)
    initial = [round(i) for i in tmp * (256 ** 3 / np.prod(tmp)) ** (1 / 3)]
    initial = [min(i, j) for i, j in zip(initial, median_shape)]
    topo = pool_and_conv_props(list(spacing), initial, UNET_MIN_EDGE)
    if len(topo.strides) < 2:
        size = " x ".join(f"{m:g}" for m in median_shape)
        raise ConfigurationError(
            f"images of median size {size} voxels at the target spacing {' x '.join(f'{v:g}' for v in spacing)} mm "
            f"are too small for a U-Net: it needs at least one pooling step, i.e. at least {2 * UNET_MIN_EDGE} voxels "
            f"along two axes of similar spacing (or {3 * UNET_MIN_EDGE} along one); the smallest supported image is "
            f"{2 * UNET_MIN_EDGE}x{2 * UNET_MIN_EDGE}x{2 * UNET_MIN_EDGE} voxels (a finer --overwrite_target_spacing "
            "gives more voxels)")
    arch = _unet_kwargs(topo.strides, topo.kernel_sizes, len(topo.strides), preset)
    patch = list(topo.patch_size)
    estimate = memory(tuple(patch), arch)
    reference = preset.reference_val_3d * gpu_memory_target_gb / preset.reference_gb
    while estimate / UNET_REFERENCE_BS * 2 > reference:
        # shrink the axis that is largest relative to the median shape, by one divisibility step
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        trial = list(patch)
        trial[axis] -= topo.divisible_by[axis]
        step = pool_and_conv_props(list(spacing), trial, UNET_MIN_EDGE).divisible_by
        smaller = list(patch)
        smaller[axis] -= step[axis]
        shrunk = pool_and_conv_props(list(spacing), smaller, UNET_MIN_EDGE) if min(smaller) > 0 else None
        if shrunk is None or len(shrunk.strides) < 2:
            need = estimate / UNET_REFERENCE_BS * 2 / preset.reference_val_3d * preset.reference_gb
            raise ConfigurationError(
                f"-gpu_memory_target {gpu_memory_target_gb:g} GB is too small: even the smallest U-Net patch "
                f"{' x '.join(str(int(p)) for p in patch)} needs about {need:.2g} GB")
        patch = smaller
        topo = shrunk
        patch = list(topo.patch_size)
        arch = _unet_kwargs(topo.strides, topo.kernel_sizes, len(topo.strides), preset)
        estimate = memory(tuple(patch), arch)
    batch_size = round(reference / estimate * UNET_REFERENCE_BS)
    cap = round(n_voxels_dataset * preset.max_dataset_covered / np.prod(patch, dtype=np.float64))
    batch_size = int(max(min(batch_size, cap), UNET_MIN_BATCH_SIZE))
    return {
        "data_identifier": data_identifier,
        "spacing": [float(s) for s in spacing],
        "median_image_size_in_voxels": [float(m) for m in median_shape],
        "patch_size": [int(p) for p in patch],
        "batch_size": batch_size,
        "architecture": {
            "network_class_name": preset.network_class_name,
            "arch_kwargs": arch,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            "feature_map_voxels": estimate,
        },
        "memory_reference_feature_map_voxels": reference,
    }


def _resampling() -> dict[str, Any]:
    """Cubic for images and target, nearest for masks; a coarse axis (>3x) is resampled on its own, linearly."""
    return {
        "image": {"order": 3, "order_z": 1, "anisotropy_threshold": ANISO_THRESHOLD},
        "target": {"order": 3, "order_z": 1, "anisotropy_threshold": ANISO_THRESHOLD},
        "mask": {"order": 0, "order_z": 0, "anisotropy_threshold": ANISO_THRESHOLD},
    }


def plan_experiment(fingerprint: dict[str, Any], dj: DatasetJson, dataset_name: str,
                    options: PlannerOptions = PlannerOptions()) -> dict[str, Any]:
    """Derive plans.json from a fingerprint and the dataset description."""
    validate_options(options)
    spacings = np.array(fingerprint["spacings"], dtype=float)
    shapes = np.array(fingerprint["shapes_after_crop"], dtype=float)
    target_spacing = fullres_target_spacing(spacings, shapes, options.overwrite_target_spacing)
    forward, backward = transpose_for(target_spacing)
    fullres_spacing = target_spacing[forward]
    check_upsampling(fingerprint["shapes_after_crop"], [np.array(s, dtype=np.float64) * np.array(sp) / target_spacing
                                                        for s, sp in zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])],
                     target_spacing, np.median(spacings, 0))
    new_shapes = [compute_new_shape(s, sp, target_spacing) for s, sp in zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])]
    median_shape = np.median(new_shapes, 0)[forward]
    n_voxels = float(np.prod(median_shape, dtype=np.float64) * len(fingerprint["spacings"]))
    preset = options.planner_preset
    memory = UNetMemoryModel(dj.num_channels, options.output_channels, preset.network_class_name)
    gb = options.gpu_memory_target_gb
    fullres = plan_configuration(fullres_spacing, median_shape, n_voxels, memory, gb,
                                 f"{fullres_data_plans_name(options)}_3d_fullres", preset)
    configurations: dict[str, Any] = {}
    lowres = _maybe_lowres(fullres, median_shape, len(fingerprint["spacings"]), memory, gb, options.plans_name, preset)
    if lowres is not None:
        configurations["3d_lowres"] = lowres
    configurations["3d_fullres"] = fullres
    for cfg in configurations.values():
        cfg["resampling"] = _resampling()
        n_vox_cfg = float(np.prod(cfg["median_image_size_in_voxels"], dtype=np.float64) * len(fingerprint["spacings"]))
        cfg["families"] = plan_families(cfg, dj.num_channels, options.output_channels, n_vox_cfg, gb,
                                        preset.max_dataset_covered, preset.name)
    fg_props = fingerprint["foreground_intensity_properties_per_channel"]
    norm_src = [plan_normalization(c.modality, fg_props.get(str(i)), False, options.normalization,
                                   case_statistics(fingerprint, str(i))).to_dict()
                for i, c in enumerate(dj.source_channels)]
    norm_tgt = plan_normalization(dj.target.modality, fingerprint.get("target_intensity_properties"), True,
                                  options.normalization, case_statistics(fingerprint, "target")).to_dict()
    return {
        "dataset_name": dataset_name,
        "plans_name": options.plans_name,
        "autotrans_version": __version__,
        "experiment_planner_used":
            f"autotrans.planning.planner.plan_experiment (nnU-Net v2 {preset.nnunet_planner} rules)",
        "planner_preset": preset.name,
        "gpu_memory_target_gb": gb,
        "source_channels": [{"name": c.name, "modality": c.modality} for c in dj.source_channels],
        "target": {"name": dj.target.name, "modality": dj.target.modality},
        "paired": dj.paired,
        "original_median_spacing_after_transp": [float(s) for s in np.median(spacings, 0)[forward]],
        "original_median_shape_after_transp": [int(round(s)) for s in np.median(shapes, 0)[forward]],
        "transpose_forward": forward,
        "transpose_backward": backward,
        "crop": {"rule": "mask" if fingerprint.get("has_masks") else "source_nonbackground",
                 "ct_body_threshold_hu": -500.0},
        "normalization": {"source": norm_src, "target": norm_tgt,
                          "target_output_scale": norm_tgt["unit"]},
        "configurations": configurations,
        # re-planning replaces these and keeps any other configuration (the user's own)
        "generated_configurations": sorted(configurations),
        "fingerprint_sha1": fingerprint_hash(fingerprint),
    }


def fullres_data_plans_name(options: PlannerOptions) -> str:
    """Whose 3d_fullres data a plan uses: a preset's 3d_fullres preprocessing equals the default plan's (nnU-Net's
    ResEnc planners reuse ``nnUNetPlans_3d_fullres``), so it shares that folder, unless the preprocessing options
    differ from the defaults (then sharing would overwrite the default plan's data)."""
    if options.preset != DEFAULT_PRESET and options.default_preprocessing:
        return DEFAULT_PLANS_NAME
    return options.plans_name


def _maybe_lowres(fullres: dict[str, Any], median_shape: np.ndarray, n_cases: int, memory: UNetMemoryModel,
                  gb: float, plans_name: str, preset: PlannerPreset = PRESETS[DEFAULT_PRESET]) -> dict[str, Any] | None:
    """nnU-Net's 3d_lowres: when the fullres patch covers <25% of the median image, coarsen until it covers enough."""
    median_voxels = np.prod(median_shape, dtype=np.float64)
    patch_voxels = np.prod(fullres["patch_size"], dtype=np.float64)
    spacing_full = np.array(fullres["spacing"])
    lowres_spacing = spacing_full.copy()
    lowres = None
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        max_spacing = max(lowres_spacing)
        if np.any(max_spacing / lowres_spacing > 2):
            lowres_spacing[(max_spacing / lowres_spacing) > 2] *= LOWRES_SPACING_FACTOR
        else:
            lowres_spacing *= LOWRES_SPACING_FACTOR
        median_voxels = np.prod(spacing_full / lowres_spacing * median_shape, dtype=np.float64)
        shape = np.array([round(i) for i in spacing_full / lowres_spacing * median_shape])
        lowres = plan_configuration(lowres_spacing, shape, float(median_voxels * n_cases), memory, gb,
                                    f"{plans_name}_3d_lowres", preset)
        patch_voxels = np.prod(lowres["patch_size"], dtype=np.int64)
    if lowres is not None and np.prod(median_shape, dtype=np.float64) / median_voxels < 2:
        logger.info("3d_lowres dropped: its images would be less than 2x smaller than 3d_fullres")
        return None
    return lowres


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def plans_hash(plans: dict[str, Any]) -> str:
    """Hash of the decisions in a plan (used to tie preprocessed data and checkpoints to it)."""
    return hashlib.sha1(json.dumps(plans, sort_keys=True, default=str).encode()).hexdigest()


def merge_user_configurations(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """Keep configurations the user added to an existing plans.json (nnU-Net's re-planning behaviour).

    Configurations the planner generated last time (listed in ``generated_configurations``; for plans written
    before that list existed, ``3d_fullres`` and ``3d_lowres``) are not the user's: one that the new plan no
    longer has (a ``3d_lowres`` the data no longer call for) is dropped, not kept forever.
    """
    if not old:
        return new
    merged = deepcopy(new)
    generated_before = set(old.get("generated_configurations", GENERATED_CONFIGURATIONS))
    for name, cfg in old.get("configurations", {}).items():
        if name in merged["configurations"]:
            continue
        if name in generated_before:
            logger.info("dropped configuration %r: generated by the previous plan, not planned any more", name)
            continue
        merged["configurations"][name] = cfg
        logger.info("kept user configuration %r from the existing plans", name)
    for name, cfg in merged["configurations"].items():
        parent = cfg.get("inherits_from") if isinstance(cfg, dict) else None
        if parent is not None and parent not in merged["configurations"]:
            logger.warning("user configuration %r inherits from %r, which the new plans do not have: edit it before "
                           "using it", name, parent)
    return merged
