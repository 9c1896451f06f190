"""Lesion-level agreement: per connected lesion of the reference lesion map, and by size stratum.

Whole-volume scores hide what matters clinically in small, hot lesions; these per-lesion numbers
(uptake errors, contrast error, thresholded shape agreement) and the size strata make that visible.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

SIZE_CLASSES = (("<0.5 mL", 0.0, 0.5), ("0.5-5 mL", 0.5, 5.0), (">5 mL", 5.0, math.inf))
PET_THRESHOLD = 0.41  # fraction of SUVmax (EANM-style fixed-threshold delineation)
PEAK_SPHERE_ML = 1.0
SEARCH_DILATION = 2  # voxels: thresholded shapes may extend a little beyond the reference lesion
SHELL_DILATION = 3  # voxels: thickness of the MR local background shell
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
UNDEFINED = "_undefined"  # suffix of the key beside an undefined (NaN -> null) metric that says why


def size_class(volume_ml: float) -> str:
    for name, lo, hi in SIZE_CLASSES:
        if lo <= volume_ml < hi:
            return name
    return SIZE_CLASSES[-1][0]


def _grow(box: tuple[slice, ...], margin: Sequence[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(box, margin, shape))


def _sphere_kernel(spacing_zyx: Sequence[float], volume_ml: float = PEAK_SPHERE_ML) -> np.ndarray:
    r = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # mm
    half = [int(r // s) for s in spacing_zyx]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_zyx)], indexing="ij")
    return (sum(g**2 for g in grids) <= r * r + 1e-9).astype(np.float64)


def _sphere_mean(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Mean of ``img`` over the sphere centred at each voxel, counting only voxels inside the image."""
    num = ndi.correlate(img, kernel, mode="constant", cval=0.0)
    den = ndi.correlate(np.ones_like(img), kernel, mode="constant", cval=0.0)
    return num / den


def _surface(a: np.ndarray) -> np.ndarray:
    return a & ~ndi.binary_erosion(a, border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of two masks:
    the larger of the two directed 95th percentiles (MONAI's definition). NaN if either is empty."""
    if not a.any() or not b.any():
        return float("nan")
    sa, sb = _surface(a), _surface(b)
    d_ab = ndi.distance_transform_edt(~sb, sampling=spacing_zyx)[sa]
    d_ba = ndi.distance_transform_edt(~sa, sampling=spacing_zyx)[sb]
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def _touching(seg: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """The 26-connected components of ``seg`` that overlap the reference lesion (drops neighbours)."""
    labels, _ = ndi.label(seg, structure=_FULL)
    keep = np.unique(labels[lesion & seg])
    return np.isin(labels, keep[keep > 0])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total


def _rel(pred: float, ref: float) -> float:
    return (pred - ref) / abs(ref) if ref != 0 else float("nan")


def lesion_metrics(ref: np.ndarray, pred: np.ndarray, lesion_map: np.ndarray, mask: np.ndarray,
                   modality: str, spacing_zyx: Sequence[float], mr_k: float = 3.0) -> list[dict[str, Any]]:
    """One dict per 26-connected lesion of ``lesion_map > 0`` (reference lesions)."""
    all_lesions = lesion_map > 0
    labels, _ = ndi.label(all_lesions, structure=_FULL)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    kernel = _sphere_kernel(spacing_zyx) if modality == "PET" else None
    margin = [SHELL_DILATION + SEARCH_DILATION + 1] * 3
    if kernel is not None:
        margin = [max(m, k // 2 + 1) for m, k in zip(margin, kernel.shape)]
    rows = []
    for idx, box in enumerate(ndi.find_objects(labels), start=1):
        box = _grow(box, margin, labels.shape)
        les = labels[box] == idx
        r = ref[box].astype(np.float64)
        p = pred[box].astype(np.float64)
        vol = float(les.sum()) * voxel_ml
        row: dict[str, Any] = {
            "lesion": idx,
            "voxels": int(les.sum()),
            "volume_ml": vol,
            "size_class": size_class(vol),
            "mae": float(np.abs(r[les] - p[les]).mean()),
        }
        search = ndi.binary_dilation(les, _FULL, iterations=SEARCH_DILATION)
        if modality == "PET":
            rmax, pmax = float(r[les].max()), float(p[les].max())
            rmean, pmean = float(r[les].mean()), float(p[les].mean())
            rpeak = float(_sphere_mean(r, kernel)[les].max())
            ppeak = float(_sphere_mean(p, kernel)[les].max())
            seg_r = search & (r >= PET_THRESHOLD * rmax)
            seg_p = search & (p >= PET_THRESHOLD * pmax)
            row.update(
                suvmax_ref=rmax, suvmax_pred=pmax, suvmax_rel_err=_rel(pmax, rmax),
                suvmean_ref=rmean, suvmean_pred=pmean, suvmean_rel_err=_rel(pmean, rmean),
                suvpeak_ref=rpeak, suvpeak_pred=ppeak, suvpeak_rel_err=_rel(ppeak, rpeak),
            )
        elif modality == "MR":
            shell = ndi.binary_dilation(les, _FULL, iterations=SHELL_DILATION) & ~all_lesions[box] & mask[box]
            if not shell.any():
                shell = ~les  # lesion fills its surroundings' mask: fall back to all non-lesion voxels
            c_ref = float(r[les].mean() - r[shell].mean())
            c_pred = float(p[les].mean() - p[shell].mean())
            thr_r = r[shell].mean() + mr_k * r[shell].std()
            thr_p = p[shell].mean() + mr_k * p[shell].std()
            seg_r = search & (r > thr_r)
            seg_p = search & (p > thr_p)
            row.update(contrast_ref=c_ref, contrast_pred=c_pred, contrast_rel_err=_rel(c_pred, c_ref))
        else:
            rows.append(row)
            continue
        seg_r, seg_p = _touching(seg_r, les), _touching(seg_p, les)
        row.update(dice=dice(seg_r, seg_p), hd95_mm=hd95(seg_r, seg_p, spacing_zyx),
                   seg_voxels_ref=int(seg_r.sum()), seg_voxels_pred=int(seg_p.sum()))
        row.update({f"{k}{UNDEFINED}": why for k, why in undefined_reasons(row, modality).items()})
        rows.append(row)
    return rows


def undefined_reasons(row: dict[str, Any], modality: str) -> dict[str, str]:
    """Why each undefined (NaN) metric of a lesion row has no value, written beside its ``null`` in strict JSON as
    ``<metric>_undefined`` (like strict JSON's ``<metric>_infinite``): a reader of "Dice 0 (3/25 lesions)" then
    knows what happened to the other 22."""
    threshold = "41% of SUVmax" if modality == "PET" else "the local background's mean + k std"
    out: dict[str, str] = {}
    ref_empty, pred_empty = not row.get("seg_voxels_ref"), not row.get("seg_voxels_pred")
    which = " and ".join(w for w, e in (("reference", ref_empty), ("prediction", pred_empty)) if e)
    if "dice" in row and math.isnan(row["dice"]):
        out["dice"] = f"no voxel above {threshold} near the lesion in the reference nor in the prediction"
    if "hd95_mm" in row and math.isnan(row["hd95_mm"]):
        out["hd95_mm"] = f"no voxel above {threshold} near the lesion in the {which}: no surface to measure"
    for key in ("suvmax_rel_err", "suvmean_rel_err", "suvpeak_rel_err", "contrast_rel_err"):
        if key in row and math.isnan(row[key]):
            out[key] = "the reference value is 0: a relative error is undefined"
    return out


_STRATUM_METRICS = (
    ("mae", False), ("suvmax_rel_err", True), ("suvmean_rel_err", True), ("suvpeak_rel_err", True),
    ("contrast_rel_err", True), ("dice", False), ("hd95_mm", False),
)


def stratify(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and median of per-lesion metrics per size class (relative errors as absolute values), each with
    ``n``, the lesions where it is defined (the stratum's ``n`` counts all its lesions)."""
    out: dict[str, dict[str, Any]] = {}
    for name, _, _ in SIZE_CLASSES + (("all", 0, 0),):
        sub = rows if name == "all" else [r for r in rows if r["size_class"] == name]
        entry: dict[str, Any] = {"n": len(sub)}
        for key, absolute in _STRATUM_METRICS:
            vals = np.array([r[key] for r in sub if key in r], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                continue
            if absolute:
                vals = np.abs(vals)
                key = "abs_" + key
            entry[key] = {"mean": float(vals.mean()), "median": float(np.median(vals)), "n": int(vals.size)}
        out[name] = entry
    return out
