"""Per-case preprocessing: crop -> normalize -> transpose -> resample -> store; and its exact inverse.

Inference imports ``preprocess_arrays`` and ``export_prediction`` from here: one implementation, so a
model sees at prediction time exactly what it saw in training. Per-case normalization parameters of a
*source* channel are fitted on the source's own non-background over the whole image (never the mask),
because inference has no mask: a case gets the same source parameters in training and at inference.
Voxels the normalization clips are counted per case (``clipped_voxels`` in the case's JSON) and
``preprocess_dataset`` warns once about cases whose target was clipped inside the foreground.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import label as cc_label

from autotrans.dataset.format import CaseFiles, DatasetJson
from autotrans.dataset.integrity import CaseArrays, load_case
from autotrans.errors import DatasetError
from autotrans.utils.parallel import pool_context
from autotrans.io import Geometry
from autotrans.planning.plans import Configuration, Plans
from autotrans.planning.planner import compute_new_shape
from autotrans.preprocessing.cropping import crop_region, crop_slices, nonbackground_mask
from autotrans.preprocessing.normalization import Normalization
from autotrans.preprocessing.resampling import resample_channels, resample_volume
from autotrans.preprocessing import store
from autotrans.utils.files import clean_stale_temps, load_json
from autotrans.utils.progress import progress

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
        "version": 2,  # 2: source parameters on the source's non-background; clipped voxels counted
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def clipped_counts(x: np.ndarray, foreground: np.ndarray, norm: Normalization,
                   params: dict[str, float] | None) -> dict[str, int]:
    """Voxels of ``x`` (raw) that ``norm.forward`` clips, below and above, in all of ``x`` and inside ``foreground``."""
    lo, hi = norm.clip_bounds(params or None)
    out = {}
    for side, bound, op in (("below", lo, np.less), ("above", hi, np.greater)):
        hit = op(x, bound) if bound is not None else None
        out[side] = int(hit.sum()) if hit is not None else 0
        out[f"{side}_in_foreground"] = int((hit & foreground).sum()) if hit is not None else 0
    return out


def preprocess_arrays(source: np.ndarray, geometry: Geometry, plans: Plans, cfg: Configuration,
                      mask: np.ndarray | None = None, target: np.ndarray | None = None,
                      lesions: np.ndarray | None = None, *, fit_source_on_foreground: bool = False
                      ) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
    """Preprocess one case held in memory. ``source`` is ``(C, z, y, x)`` in the file's array order.

    Returns arrays in the plan's transposed, resampled grid and the properties needed to invert.
    Per-case parameters: a source channel's from the source's non-background over the whole image (the
    same with or without a mask), the target's from the foreground (the mask, else that non-background).
    ``fit_source_on_foreground`` fits the source on the foreground instead: for target-only cases, whose
    "source" is the target. ``properties["clipped_voxels"]`` counts what the normalization clipped.
    """
    if source.ndim != 4:
        raise ValueError(f"source must be (C, z, y, x), got shape {source.shape}")
    box, fg = crop_region(source, mask, plans.source_modalities)
    sl = crop_slices(box)
    src = source[(slice(None),) + sl]
    fg_c = fg[sl]
    src_fit: np.ndarray | None = None  # the source's own non-background, whole image (computed when needed)
    src_params = []
    src_clipped = []
    normalized = np.empty(src.shape, dtype=np.float32)
    for c, norm in enumerate(plans.source_normalization):
        params: dict[str, float] = {}
        if norm.per_case:
            if fit_source_on_foreground:
                params = norm.fit_case(src[c][fg_c])
            else:
                if src_fit is None:
                    src_fit = fg if mask is None else nonbackground_mask(source, plans.source_modalities)
                params = norm.fit_case(source[c][src_fit])
        normalized[c] = norm.forward(src[c], params)
        src_params.append(params)
        src_clipped.append(clipped_counts(src[c], fg_c, norm, params))
    tgt_params: dict[str, float] = {}
    tgt = None
    tgt_clipped = None
    if target is not None:
        t = target[sl]
        tn = plans.target_normalization
        tgt_params = tn.fit_case(t[fg_c]) if tn.per_case else {}
        tgt = tn.forward(t, tgt_params)[None]
        tgt_clipped = clipped_counts(t, fg_c, tn, tgt_params)
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
        "clipped_voxels": {"source": src_clipped, "target": tgt_clipped},
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


def _preprocess_one(args: tuple[CaseFiles, DatasetJson, Plans, str, Path, str, str | None]
                    ) -> tuple[str, list[tuple[str, str]], dict[str, int] | None]:
    """(case, problems, the target's clipped-voxel counts or None)."""
    cf, dj, plans, cfg_name, out_dir, chash, input_sha1 = args
    arrays, problems = load_case(cf, dj)
    if arrays is None:
        return cf.case_id, problems, None
    problems, props = _preprocess_loaded(arrays, plans, plans.configuration(cfg_name), out_dir, chash, input_sha1)
    return cf.case_id, problems, (props or {}).get("clipped_voxels", {}).get("target")


def _preprocess_loaded(a: CaseArrays, plans: Plans, cfg: Configuration, out_dir: Path, chash: str,
                       input_sha1: str | None = None) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
    try:
        if a.source is None:
            arrays, props = _target_only(a, plans, cfg)
        else:
            arrays, props = preprocess_arrays(a.source, a.geometry, plans, cfg, a.mask, a.target, a.lesions)
    except ValueError as e:
        return [(a.case_id, str(e))], None
    seed = int(hashlib.sha1(a.case_id.encode()).hexdigest()[:8], 16)
    locs = sample_locations(arrays["mask"], arrays["lesions"], seed)
    n_les = int((arrays["lesions"] > 0).sum()) if arrays["lesions"] is not None else 0
    props.update(case=a.case_id, config_hash=chash, has_source=a.source is not None,
                 has_target=a.target is not None, n_lesion_voxels=n_les, input_sha1=input_sha1)
    store.save_case(out_dir, a.case_id, arrays, locs, props, cfg.patch_size)
    return [], props


def _target_only(a: CaseArrays, plans: Plans, cfg: Configuration) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
    """Unpaired datasets: preprocess a target-only case with the target's normalization and crop rule."""
    view = Plans({**plans.data, "source_channels": [plans.data["target"]],
                  "normalization": {**plans.data["normalization"], "source": [plans.data["normalization"]["target"]]}})
    arrays, props = preprocess_arrays(a.target[None], a.geometry, view, cfg, a.mask, None, a.lesions,
                                      fit_source_on_foreground=True)  # target parameters come from the foreground
    arrays["target"], arrays["source"] = arrays["source"], None
    props["target_normalization_params"] = props.pop("source_normalization_params")[0]
    props["source_normalization_params"] = []
    props["clipped_voxels"] = {"source": [], "target": props["clipped_voxels"]["source"][0]}
    return arrays, props


def preprocess_dataset(cases: dict[str, CaseFiles], dj: DatasetJson, plans: Plans, cfg_name: str, out_dir: Path,
                       num_processes: int = 2, input_signatures: dict[str, str] | None = None) -> list[str]:
    """Preprocess every case not already done with the same decisions and the same inputs; returns the cases
    (re)written.

    ``input_signatures`` (case -> hash of the content of its input files, ``planning.api.case_signatures``) is
    recorded in each case's JSON as ``input_sha1``; a case whose inputs changed since (a flipped target, a
    corrected mask) is redone even when the plan is unchanged. Without it only the plan's decisions are compared.
    """
    cfg = plans.configuration(cfg_name)
    chash = config_hash(plans, cfg)
    todo, changed = [], []
    for case in sorted(cases):
        props_path = out_dir / f"{case}.json"
        if props_path.exists():
            try:
                props = load_json(props_path)
            except ValueError:
                props = {}
            if props.get("config_hash") == chash:
                if input_signatures is None or props.get("input_sha1") == input_signatures.get(case):
                    continue
                changed.append(case)
        todo.append(case)
    if len(todo) < len(cases):
        logger.info("%s: %d of %d cases already preprocessed with these plans and inputs, skipped", cfg_name,
                    len(cases) - len(todo), len(cases))
    if changed:
        logger.info("%s: input files changed since preprocessing (or were never recorded) for %d case(s), redoing: %s",
                    cfg_name, len(changed), ", ".join(changed))
    if not todo:
        return []
    sig = input_signatures or {}
    items = [(cases[c], dj, plans, cfg_name, out_dir, chash, sig.get(c)) for c in todo]
    problems: list[tuple[str, str]] = []
    clipped: dict[str, dict[str, int]] = {}
    desc = f"preprocess {cfg_name}"

    def collect(result: tuple[str, list[tuple[str, str]], dict[str, int] | None]) -> None:
        case, probs, counts = result
        problems.extend(probs)
        if counts and counts["below_in_foreground"] + counts["above_in_foreground"] > 0:
            clipped[case] = counts

    clean_stale_temps(out_dir)  # half-written arrays of a killed earlier run
    try:
        if num_processes > 1 and len(items) > 1:
            with pool_context().Pool(min(num_processes, len(items))) as pool:
                for r in progress(pool.imap_unordered(_preprocess_one, items), total=len(items), desc=desc, unit="case"):
                    collect(r)
        else:
            for it in progress(items, desc=desc, unit="case"):
                collect(_preprocess_one(it))
    except BaseException:
        # a worker's error (a full disk) ends the pool: the other workers' unfinished temporaries go too, the
        # finished cases stay
        clean_stale_temps(out_dir)
        raise
    if problems:
        raise DatasetError(problems, header="preprocessing failed")
    if clipped:
        logger.warning("%s: the target normalization clipped foreground voxels in %d of %d case(s) (below/above): %s; "
                       "these values cannot be predicted (see 'clipped_voxels' in each case's JSON; "
                       "--pet_ceiling / --ct_window widen the range)", cfg_name, len(clipped), len(todo),
                       ", ".join(f"{c} {v['below_in_foreground']}/{v['above_in_foreground']}" for c, v in sorted(clipped.items())))
    return todo


def export_prediction(pred: np.ndarray, properties: dict[str, Any], plans: Plans, cfg: Configuration,
                      normalization_params: dict[str, float] | None = None, invert: bool = True) -> np.ndarray:
    """Map a ``(z, y, x)`` prediction in the preprocessed grid back to the original array in physical units.

    Order: invert the normalization, resample to the cropped shape, transpose back, un-crop (outside the
    crop: the modality's physical background). With ``invert=False`` (an MR target whose per-case scale is
    unknown at inference) values are mapped from network space to the plan's normalized output scale
    (``norm.to_output_scale``: MR p0.5 -> -1, p99.5 -> +1, unclipped) and the background is
    ``norm.output_background``.
    """
    norm = plans.target_normalization
    if invert:
        if norm.per_case and not normalization_params:
            raise ValueError(f"{properties.get('case', 'case')}: MR target needs per-case parameters to invert; "
                             "export with invert=False to keep the plan's normalized scale")
        values = norm.inverse(pred, normalization_params)
        background = norm.physical_background()
    else:
        values = norm.to_output_scale(pred)
        background = norm.output_background
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
