"""Per-case preprocessing: crop -> normalize -> transpose -> resample -> store; and its exact inverse.

Inference imports ``preprocess_arrays`` and ``export_prediction`` from here: one implementation, so a
model sees at prediction time exactly what it saw in training.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import label as cc_label
from tqdm import tqdm

from autotrans.dataset.format import CaseFiles, DatasetJson
from autotrans.dataset.integrity import CaseArrays, load_case
from autotrans.errors import DatasetError
from autotrans.utils.parallel import pool_context
from autotrans.io import Geometry
from autotrans.planning.plans import Configuration, Plans
from autotrans.planning.planner import compute_new_shape
from autotrans.preprocessing.cropping import crop_region, crop_slices
from autotrans.preprocessing.resampling import resample_channels, resample_volume
from autotrans.preprocessing import store
from autotrans.utils.files import load_json

logger = logging.getLogger(__name__)

MAX_FOREGROUND_LOCATIONS = 10_000
MAX_LOCATIONS_PER_LESION = 200


def config_hash(plans: Plans, cfg: Configuration) -> str:
    """Hash of every decision that changes preprocessed arrays (spacing, transpose, resampling, normalization)."""
    relevant = {
        "spacing": cfg.spacing,
        "resampling": cfg.data.get("resampling"),
        "transpose": plans.transpose_forward,
        "normalization": plans.data["normalization"],
        "crop": plans.data.get("crop"),
        "version": 1,
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def preprocess_arrays(source: np.ndarray, geometry: Geometry, plans: Plans, cfg: Configuration,
                      mask: np.ndarray | None = None, target: np.ndarray | None = None,
                      lesions: np.ndarray | None = None) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
    """Preprocess one case held in memory. ``source`` is ``(C, z, y, x)`` in the file's array order.

    Returns arrays in the plan's transposed, resampled grid and the properties needed to invert.
    """
    if source.ndim != 4:
        raise ValueError(f"source must be (C, z, y, x), got shape {source.shape}")
    box, fg = crop_region(source, mask, plans.source_modalities)
    sl = crop_slices(box)
    src = source[(slice(None),) + sl]
    fg_c = fg[sl]
    src_params = []
    normalized = np.empty(src.shape, dtype=np.float32)
    for c, norm in enumerate(plans.source_normalization):
        params = norm.fit_case(src[c][fg_c]) if norm.per_case else {}
        normalized[c] = norm.forward(src[c], params)
        src_params.append(params)
    tgt_params: dict[str, float] = {}
    tgt = None
    if target is not None:
        t = target[sl]
        tn = plans.target_normalization
        tgt_params = tn.fit_case(t[fg_c]) if tn.per_case else {}
        tgt = tn.forward(t, tgt_params)[None]
    tf = plans.transpose_forward
    spacing_zyx = list(geometry.spacing_zyx)
    spacing_t = [spacing_zyx[a] for a in tf]
    cropped_shape_t = [normalized.shape[1 + a] for a in tf]
    new_shape = [int(s) for s in compute_new_shape(cropped_shape_t, spacing_t, cfg.spacing)]

    def spatial(x: np.ndarray) -> np.ndarray:
        return np.transpose(x, [0] + [1 + a for a in tf]) if x.ndim == 4 else np.transpose(x, tf)

    r_img, r_tgt, r_msk = cfg.resampling("image"), cfg.resampling("target"), cfg.resampling("mask")
    out: dict[str, np.ndarray | None] = {
        "source": resample_channels(spatial(normalized), new_shape, spacing_t, cfg.spacing,
                                    r_img["order"], r_img["order_z"], r_img["anisotropy_threshold"]),
        "target": None if tgt is None else resample_channels(spatial(tgt), new_shape, spacing_t, cfg.spacing,
                                                             r_tgt["order"], r_tgt["order_z"], r_tgt["anisotropy_threshold"]),
        "mask": None if mask is None else resample_volume(spatial(mask[sl].astype(np.uint8)), new_shape, spacing_t,
                                                          cfg.spacing, 0, 0, r_msk["anisotropy_threshold"]),
        "lesions": None if lesions is None else resample_volume(spatial(lesions[sl].astype(np.int16)), new_shape,
                                                                spacing_t, cfg.spacing, 0, 0, r_msk["anisotropy_threshold"]),
    }
    properties = {
        "geometry": geometry.to_dict(),
        "shape_before_crop": list(geometry.shape_zyx),
        "crop_bbox": box,
        "shape_after_crop": [b - a for a, b in box],
        "spacing_zyx": spacing_zyx,
        "shape_after_resampling": new_shape,
        "target_spacing": cfg.spacing,
        "transpose_forward": tf,
        "source_normalization_params": src_params,
        "target_normalization_params": tgt_params,
    }
    return out, properties


def sample_locations(mask: np.ndarray | None, lesions: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    """Seeded voxel coordinates for foreground sampling and per-lesion oversampling (like nnU-Net's class locations)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    if mask is not None:
        idx = np.argwhere(mask > 0)
        if len(idx) > MAX_FOREGROUND_LOCATIONS:
            idx = idx[np.sort(rng.choice(len(idx), MAX_FOREGROUND_LOCATIONS, replace=False))]
        out["foreground"] = idx
    if lesions is not None and (lesions > 0).any():
        comps, n = cc_label(lesions > 0, structure=np.ones((3, 3, 3)))
        picks = []
        for i in range(1, n + 1):
            idx = np.argwhere(comps == i)
            if len(idx) > MAX_LOCATIONS_PER_LESION:
                idx = idx[np.sort(rng.choice(len(idx), MAX_LOCATIONS_PER_LESION, replace=False))]
            picks.append(np.concatenate([idx, np.full((len(idx), 1), i)], axis=1))
        out["lesions"] = np.concatenate(picks)  # columns z, y, x, lesion index
    return out


def _preprocess_one(args: tuple[CaseFiles, DatasetJson, Plans, str, Path, str]) -> tuple[str, list[tuple[str, str]]]:
    cf, dj, plans, cfg_name, out_dir, chash = args
    arrays, problems = load_case(cf, dj)
    if arrays is None:
        return cf.case_id, problems
    return cf.case_id, _preprocess_loaded(arrays, plans, plans.configuration(cfg_name), out_dir, chash)


def _preprocess_loaded(a: CaseArrays, plans: Plans, cfg: Configuration, out_dir: Path, chash: str) -> list[tuple[str, str]]:
    try:
        if a.source is None:
            arrays, props = _target_only(a, plans, cfg)
        else:
            arrays, props = preprocess_arrays(a.source, a.geometry, plans, cfg, a.mask, a.target, a.lesions)
    except ValueError as e:
        return [(a.case_id, str(e))]
    seed = int(hashlib.sha1(a.case_id.encode()).hexdigest()[:8], 16)
    locs = sample_locations(arrays["mask"], arrays["lesions"], seed)
    n_les = int((arrays["lesions"] > 0).sum()) if arrays["lesions"] is not None else 0
    props.update(case=a.case_id, config_hash=chash, has_source=a.source is not None,
                 has_target=a.target is not None, n_lesion_voxels=n_les)
    store.save_case(out_dir, a.case_id, arrays, locs, props, cfg.patch_size)
    return []


def _target_only(a: CaseArrays, plans: Plans, cfg: Configuration) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
    """Unpaired datasets: preprocess a target-only case with the target's normalization and crop rule."""
    view = Plans({**plans.data, "source_channels": [plans.data["target"]],
                  "normalization": {**plans.data["normalization"], "source": [plans.data["normalization"]["target"]]}})
    arrays, props = preprocess_arrays(a.target[None], a.geometry, view, cfg, a.mask, None, a.lesions)
    arrays["target"], arrays["source"] = arrays["source"], None
    props["target_normalization_params"] = props.pop("source_normalization_params")[0]
    props["source_normalization_params"] = []
    return arrays, props


def preprocess_dataset(cases: dict[str, CaseFiles], dj: DatasetJson, plans: Plans, cfg_name: str, out_dir: Path,
                       num_processes: int = 2) -> list[str]:
    """Preprocess every case not already done with the same decisions; returns the cases (re)written."""
    cfg = plans.configuration(cfg_name)
    chash = config_hash(plans, cfg)
    todo = []
    for case in sorted(cases):
        props_path = out_dir / f"{case}.json"
        if props_path.exists():
            try:
                if load_json(props_path).get("config_hash") == chash:
                    continue
            except ValueError:
                pass
        todo.append(case)
    if len(todo) < len(cases):
        logger.info("%s: %d of %d cases already preprocessed with these plans, skipped", cfg_name, len(cases) - len(todo), len(cases))
    if not todo:
        return []
    items = [(cases[c], dj, plans, cfg_name, out_dir, chash) for c in todo]
    problems: list[tuple[str, str]] = []
    desc = f"preprocess {cfg_name}"
    if num_processes > 1 and len(items) > 1:
        with pool_context().Pool(min(num_processes, len(items))) as pool:
            for _, probs in tqdm(pool.imap_unordered(_preprocess_one, items), total=len(items), desc=desc, unit="case"):
                problems += probs
    else:
        for it in tqdm(items, desc=desc, unit="case"):
            problems += _preprocess_one(it)[1]
    if problems:
        raise DatasetError(problems, header="preprocessing failed")
    return todo


def export_prediction(pred: np.ndarray, properties: dict[str, Any], plans: Plans, cfg: Configuration,
                      normalization_params: dict[str, float] | None = None, invert: bool = True) -> np.ndarray:
    """Map a ``(z, y, x)`` prediction in the preprocessed grid back to the original array in physical units.

    Order: invert the normalization, resample to the cropped shape, transpose back, un-crop (outside the
    crop: the modality's physical background). With ``invert=False`` (an MR target whose per-case scale is
    unknown at inference) values stay in the plan's normalized output scale and the background is ``air``.
    """
    norm = plans.target_normalization
    if invert:
        if norm.per_case and not normalization_params:
            raise ValueError(f"{properties.get('case', 'case')}: MR target needs per-case parameters to invert; "
                             "export with invert=False to keep the plan's normalized scale")
        values = norm.inverse(pred, normalization_params)
        background = norm.physical_background()
    else:
        values = np.asarray(pred, dtype=np.float32)
        background = norm.air
    tf = properties["transpose_forward"]
    crop_shape = properties["shape_after_crop"]
    crop_shape_t = [crop_shape[a] for a in tf]
    spacing_t = [properties["spacing_zyx"][a] for a in tf]
    r = cfg.resampling("target")
    values = resample_volume(values, crop_shape_t, cfg.spacing, spacing_t, r["order"], r["order_z"], r["anisotropy_threshold"])
    values = np.transpose(values, plans.transpose_backward)
    full = np.full(properties["shape_before_crop"], background, dtype=np.float32)
    full[crop_slices(properties["crop_bbox"])] = values
    return full
