"""Pair-alignment check: does each source lie on its target, or would training on it teach blur?

Translation learns a voxel-wise mapping, so a source that is shifted or rotated against its target teaches
the network to smear anatomy. Curated datasets (SynthRAD) are registered; user data often are not. For
every paired training case we register source channel 0 (moving) onto the target (fixed) with a rigid
transform (SimpleITK: Mattes mutual information, which works across modalities: MR↔CT, CT↔PET, T2↔FLAIR)
and report how far it moved the anatomy:

- ``translation_mm``: the displacement of the mask's centroid (the rotation centre), x, y, z in the
  patient (LPS) frame, and its norm ``shift_mm``;
- ``rotation_deg``: the rotation angle of the transform's matrix (axis-angle; ``euler_deg`` per axis);
- ``max_displacement_mm`` / ``mean_displacement_mm``: how far the mask's voxels move under the transform;
  the most meaningful single number (a small rotation moves the far edge of a large field of view a lot);
- ``metric_before`` / ``metric_after``: Mattes MI (negative; lower = better aligned) without and with it.

The transform maps *target* points to *source* points (``source(T(x)) ≈ target(x)``, ITK's convention):
resampling the source with it puts the source onto its target (``register_dataset``).

Outlier rule (``flag_outliers``): a case is flagged when its maximum displacement exceeds 2 voxels of the
dataset's reference spacing (the finest axis of the median raw spacing of the training cases: plan-
independent), or when it lies clearly apart from the others: above median + 5 × 1.4826 × MAD of the dataset's
maximum displacements, and at least one reference voxel above the median (that floor keeps a perfectly
registered dataset, whose displacements are all noise, from flagging its noisiest case). Flagging is a
warning, never an error: the user decides.

Work is bounded: images above ``WORK_VOXELS`` voxels are smoothed and resampled onto a coarser grid before a
4-2-1 pyramid, and the metric uses a fixed number of randomly drawn samples with a fixed seed, so a case
takes seconds on a CPU (measured, one thread: ~2-2.5 s per 2 mm demo brain, ~1.5-2 s per 6 mm PET/CT slab, ~5 s
for a whole 1 mm brain) and the same inputs give the same numbers (measured: also across thread counts).

Known weakness: CT↔PET. PET is blurry and its bladder fills between the CT and the PET, so MI has little to
hold on to; on the bundled hardware-aligned PET/CT demo the estimates lie 6-25 mm from identity
(documentation/dataset_format.md, "Pair alignment check"). Registering body outlines instead (signed distance
maps of a CT > -500 HU body and a PET body thresholded relative to its uptake, mean squares or correlation) was
tried and measured no better on these data (3-15 mm on the same slabs): PET's blurred edge lies a few mm
outside the CT skin where subcutaneous fat takes up little, and a slab's outline barely constrains its
head-feet position or a rotation about its own axis. So where PET is on either side, nothing below
``PET_NOISE_FLOOR_MM`` (30 mm) is flagged: the check still catches gross errors (a wrong series, a swapped or
flipped volume) and records every estimate, but it does not raise false alarms on hardware-aligned PET/CT.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autotrans.dataset.format import CaseFiles, DatasetJson
from autotrans.errors import ConfigurationError, DatasetError
from autotrans.io import Geometry, ImageReadError, read_image, write_image
from autotrans.preprocessing.cropping import nonbackground_mask
from autotrans.utils.parallel import pool_context
from autotrans.utils.progress import progress

logger = logging.getLogger(__name__)

ALIGNMENT_VERSION = 2  # bump when the method changes: cached per-case results of another version are redone
# Registration grid: coarsened until it has at most this many voxels (about 2.9 mm on a whole 1 mm brain).
# Measured (whole 182 x 218 x 182 1 mm T2 -> FLAIR brain, 5 mm / 3 deg misalignment, one thread): 1 M voxels
# 6.6 s CPU, error 0.35 mm / 0.05 deg; 300 k voxels 4.8 s, 0.40 mm / 0.09 deg; smaller images are not touched.
WORK_VOXELS = 300_000
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS = (2.0, 1.0, 0.0)  # working voxels, per pyramid level
MIN_LEVEL_SIZE = 8  # a coarse pyramid level is used only if the two largest axes keep this many voxels
SAMPLES_PER_LEVEL = 30_000
HISTOGRAM_BINS = 32
SEED = 20240229
MASK_DILATION_MM = 4.0  # include the body outline: the strongest, modality-independent MI feature
MAX_POINTS = 200_000  # mask voxels used for the displacement statistics

FLAG_VOXELS = 2.0  # absolute rule: displacement > 2 reference voxels
MAD_FACTOR = 5.0  # relative rule: > median + 5 robust standard deviations ...
MAD_FLOOR_VOXELS = 1.0  # ... and > median + 1 reference voxel
MIN_CASES_RELATIVE = 3  # the relative rule needs at least this many cases
#: below this max displacement, a pair with PET on either side is never flagged: the estimate's own noise on
#: hardware-aligned PET/CT (measured on the bundled demo slabs and the pelvis fixture: up to 25 mm, see the
#: module docstring) leaves only gross errors (a wrong series, a swapped or flipped volume) detectable
PET_NOISE_FLOOR_MM = 30.0

METHOD = {
    "version": ALIGNMENT_VERSION,
    "transform": "rigid (Euler3D), maps target points to source points",
    "metric": f"Mattes mutual information, {HISTOGRAM_BINS} bins, {SAMPLES_PER_LEVEL} random samples per level, seed {SEED}",
    "moving": "source channel 0",
    "fixed": "target",
    "metric_mask": f"case mask (else the target's non-background) dilated by {MASK_DILATION_MM:g} mm",
    "intensities": "clipped to the 0.5-99.5 percentiles inside the metric mask",
    "pyramid": {"shrink": list(SHRINK_FACTORS), "smoothing_voxels": list(SMOOTHING_SIGMAS),
                "work_grid_max_voxels": WORK_VOXELS},
    "optimizer": "regular-step gradient descent, scales from physical shift",
}


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def _windowed(array: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5 percentiles inside ``region``: a few very bright voxels (PET bladder, metal, contrast)
    would otherwise squeeze the tissue into one or two of MI's histogram bins and leave it blind."""
    values = array[region] if region.any() else array.reshape(-1)
    lo, hi = np.percentile(values, (0.5, 99.5)) if values.size else (0.0, 1.0)
    return np.clip(array, lo, hi).astype(np.float32)


def _work_spacing(geometry: Geometry) -> np.ndarray:
    """The registration grid's spacing (x y z): the image's own when it has at most ``WORK_VOXELS`` voxels, else
    coarsened (the finest axes first, towards isotropic) until it does: bounded work, full detail for small images."""
    spacing = np.array(geometry.spacing, dtype=np.float64)
    extent = spacing * np.array(geometry.size)
    if np.prod(geometry.size) <= WORK_VOXELS:
        return spacing
    lo, hi = float(spacing.min()), float(extent.max())
    for _ in range(50):  # bisection on the isotropic floor s: voxels of max(spacing, s)
        mid = 0.5 * (lo + hi)
        if np.prod(np.ceil(extent / np.maximum(spacing, mid))) > WORK_VOXELS:
            lo = mid
        else:
            hi = mid
    return np.maximum(spacing, hi)


def _working_image(img: sitk.Image, new_spacing: np.ndarray) -> sitk.Image:
    """Smooth (anti-alias) and resample to ``new_spacing``; unchanged when that is the image's own."""
    spacing = np.array(img.GetSpacing())
    if np.allclose(new_spacing, spacing):
        return img
    # Gaussian of FWHM sqrt(new^2 - old^2) per axis (at least half a voxel, which the recursive filter needs).
    sigma = [float(max(math.sqrt(max(n * n - s * s, 0.0)) / 2.355, 0.5 * s)) for n, s in zip(new_spacing, spacing)]
    img = sitk.SmoothingRecursiveGaussian(img, sigma)
    size = [max(1, int(math.ceil(n * s / ns))) for n, s, ns in zip(img.GetSize(), spacing, new_spacing)]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), tuple(float(v) for v in new_spacing),
                         img.GetDirection(), 0.0, sitk.sitkFloat32)


def metric_mask(target: np.ndarray, mask: np.ndarray | None, target_modality: str, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """Where the metric samples: the case mask, else the target's non-background (the training loss region),
    dilated by ``MASK_DILATION_MM`` so the body outline counts. The whole image when that leaves nothing."""
    fg = mask.astype(bool) if mask is not None else nonbackground_mask(target[None], [target_modality])
    if not fg.any():
        return np.ones(target.shape, bool)
    radius = [max(0, int(round(MASK_DILATION_MM / s))) for s in spacing_zyx[::-1]]  # ITK order x y z
    if any(radius):
        img = sitk.GetImageFromArray(fg.astype(np.uint8))
        fg = sitk.GetArrayFromImage(sitk.BinaryDilate(img, radius, sitk.sitkBall, 0, 1)).astype(bool)
    return fg


def _levels(size: tuple[int, ...]) -> tuple[list[int], list[float]]:
    """The pyramid levels whose shrunken image keeps ``MIN_LEVEL_SIZE`` voxels along the two largest axes."""
    two_largest = sorted(size)[-2]
    keep = [i for i, f in enumerate(SHRINK_FACTORS) if f == 1 or two_largest // f >= MIN_LEVEL_SIZE]
    return [SHRINK_FACTORS[i] for i in keep], [SMOOTHING_SIGMAS[i] for i in keep]


def transform_from_result(result: dict[str, Any]) -> sitk.Euler3DTransform:
    """The rigid transform of a per-case result (target points → source points)."""
    t = sitk.Euler3DTransform()
    t.SetCenter(tuple(float(v) for v in result["center_mm"]))
    t.SetParameters(tuple(float(v) for v in result["parameters"]))
    return t


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Rotation angle of a 3×3 rotation matrix (axis-angle), degrees."""
    c = (float(np.trace(matrix)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def displacement_stats(transform: sitk.Euler3DTransform, points_mm: np.ndarray) -> tuple[float, float]:
    """Max and mean distance (mm) that ``transform`` moves the given physical points (N × 3, x y z)."""
    if points_mm.size == 0:
        return 0.0, 0.0
    r = np.array(transform.GetMatrix()).reshape(3, 3)
    c = np.array(transform.GetCenter())
    t = np.array(transform.GetTranslation())
    d = (points_mm - c) @ (r - np.eye(3)).T + t
    norms = np.linalg.norm(d, axis=1)
    return float(norms.max()), float(norms.mean())


def _mask_points(mask: np.ndarray, geometry: Geometry, seed: int = SEED) -> np.ndarray:
    """Physical (x, y, z) points of the mask's voxels, at most ``MAX_POINTS`` of them (seeded sample)."""
    idx = np.argwhere(mask)  # (z, y, x)
    if len(idx) > MAX_POINTS:
        idx = idx[np.sort(np.random.default_rng(seed).choice(len(idx), MAX_POINTS, replace=False))]
    ijk = idx[:, ::-1].astype(np.float64)  # ITK index order (x, y, z)
    direction = np.array(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + (ijk * np.asarray(geometry.spacing)) @ direction.T


def estimate_rigid(fixed: sitk.Image, moving: sitk.Image, mask: np.ndarray, seed: int = SEED,
                   threads: int | None = None) -> dict[str, Any]:
    """Rigidly register ``moving`` (source channel 0) onto ``fixed`` (the target) inside ``mask`` (bool, z y x,
    on the fixed grid) and describe the transform. Deterministic for given inputs, seed and thread count."""
    start = time.perf_counter()
    geometry = Geometry.from_sitk(fixed)
    work = _work_spacing(geometry)
    fixed_w = _working_image(_to_sitk(_windowed(sitk.GetArrayFromImage(fixed), mask), geometry), work)
    moving_w = _working_image(_to_sitk(_windowed(sitk.GetArrayFromImage(moving), mask), Geometry.from_sitk(moving)), work)
    mask_img = _to_sitk(mask.astype(np.uint8), geometry)
    mask_w = sitk.Resample(mask_img, fixed_w, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if sitk.GetArrayViewFromImage(mask_w).sum() == 0:
        mask_w = sitk.Resample(mask_img, fixed_w, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32) > 0
    n_mask = int(sitk.GetArrayViewFromImage(mask_w).astype(bool).sum())
    centroid = _mask_points(mask, geometry).mean(axis=0) if mask.any() else None

    initial = sitk.CenteredTransformInitializer(fixed_w, moving_w, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    initial = sitk.Euler3DTransform(initial)
    if centroid is not None:  # rotate about the anatomy: the translation then is the anatomy's shift
        offset = np.array(initial.TransformPoint(tuple(float(v) for v in centroid))) - centroid
        initial.SetCenter(tuple(float(v) for v in centroid))
        initial.SetTranslation(tuple(float(v) for v in offset))
    shrink, sigmas = _levels(fixed_w.GetSize())
    percentages = [float(np.clip(SAMPLES_PER_LEVEL * f ** 3 / max(n_mask, 1), 0.01, 1.0)) for f in shrink]

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    if min(percentages) < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentagePerLevel(percentages, seed)
    else:  # small images: every voxel of the mask (deterministic, and the least noisy metric)
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(mask_w)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel(sigmas)
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if threads is not None:
        reg.SetNumberOfThreads(threads)
    reg.SetInitialTransform(sitk.Euler3DTransform(initial), inPlace=False)
    before = float(reg.MetricEvaluate(fixed_w, moving_w))
    final = reg.Execute(fixed_w, moving_w)
    stop = reg.GetOptimizerStopConditionDescription()
    iterations = int(reg.GetOptimizerIteration())
    transform = sitk.Euler3DTransform(sitk.CompositeTransform(final).GetBackTransform()
                                      if final.GetName() == "CompositeTransform" else final)
    reg.SetInitialTransform(sitk.Euler3DTransform(transform), inPlace=False)
    after = float(reg.MetricEvaluate(fixed_w, moving_w))
    kept_identity = after >= before
    if kept_identity:  # the optimizer ended somewhere worse than where it started: nothing better was found
        transform, after = sitk.Euler3DTransform(initial), before

    points = _mask_points(mask, geometry) if mask.any() else _mask_points(np.ones(mask.shape, bool), geometry)
    max_d, mean_d = displacement_stats(transform, points)
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    translation = [float(v) for v in transform.GetTranslation()]
    return {
        "translation_mm": translation,
        "shift_mm": float(np.linalg.norm(translation)),
        "rotation_deg": rotation_angle_deg(matrix),
        "euler_deg": [float(np.degrees(a)) for a in (transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ())],
        "max_displacement_mm": max_d,
        "mean_displacement_mm": mean_d,
        "metric_before": before,
        "metric_after": after,
        "center_mm": [float(v) for v in transform.GetCenter()],
        "parameters": [float(v) for v in transform.GetParameters()],
        "iterations": iterations,
        "stop": stop,
        "kept_identity": kept_identity,
        "seconds": round(time.perf_counter() - start, 3),
    }


def check_case(cf: CaseFiles, dj: DatasetJson, threads: int | None = None) -> dict[str, Any]:
    """Register one case's source channel 0 onto its target; raises ``DatasetError`` naming the case."""
    case = cf.case_id
    if cf.target is None or not cf.images or cf.images[0] is None:
        raise DatasetError([(case, "no source channel 0 and target pair to check")], header="pair check failed")
    try:
        target, geometry = read_image(cf.target)
        source, source_geometry = read_image(cf.images[0])
        mask = read_image(cf.mask, dtype=np.uint8)[0] > 0 if cf.mask is not None else None
    except ImageReadError as e:
        raise DatasetError([(case, str(e))], header="pair check failed") from None
    if (diff := geometry.mismatch(source_geometry)) is not None:
        raise DatasetError([(case, f"source channel 0 and target grids differ ({diff})")], header="pair check failed")
    for label, arr in (("target", target), ("source channel 0", source)):
        if not np.isfinite(arr).all():
            raise DatasetError([(case, f"{label} contains NaN/Inf voxels")], header="pair check failed")
    region = metric_mask(target, mask, dj.target.modality, geometry.spacing_zyx)
    result = estimate_rigid(_to_sitk(target, geometry), _to_sitk(source, geometry), region, threads=threads)
    # Displacement over the mask proper (not the dilated sampling region): how far any tissue moves.
    if mask is not None and mask.any():
        result["max_displacement_mm"], result["mean_displacement_mm"] = displacement_stats(
            transform_from_result(result), _mask_points(mask, geometry))
    result["spacing"] = list(geometry.spacing_zyx)
    return result


def _worker(args: tuple[CaseFiles, DatasetJson, int | None]) -> tuple[str, dict[str, Any] | None, list[tuple[str, str]]]:
    cf, dj, threads = args
    try:
        return cf.case_id, check_case(cf, dj, threads), []
    except DatasetError as e:
        return cf.case_id, None, e.problems
    except Exception as e:  # ITK's RuntimeError ("All samples map outside moving image buffer"), odd data
        text = " ".join(str(e).split())
        return cf.case_id, None, [(cf.case_id, f"registration failed ({type(e).__name__}: {text[-200:]})")]


def reference_spacing(spacings_zyx: list[list[float]]) -> float:
    """The voxel size the rule counts in: the finest axis of the median raw spacing (plan-independent)."""
    return float(np.min(np.median(np.asarray(spacings_zyx, dtype=np.float64), axis=0)))


def noise_floor_mm(dj: DatasetJson) -> float:
    """Displacements the check cannot tell from its own error for this direction: 0 for anatomical pairs,
    ``PET_NOISE_FLOOR_MM`` where PET is on either side (functional uptake has no anatomical counterpart)."""
    modalities = {c.modality for c in dj.source_channels[:1]} | {dj.target.modality}
    return PET_NOISE_FLOOR_MM if "PET" in modalities else 0.0


def flag_outliers(max_displacements: dict[str, float], voxel_mm: float,
                  floor_mm: float = 0.0) -> tuple[list[str], dict[str, Any]]:
    """Cases whose maximum displacement is > 2 voxels, or clearly apart from the others (robust z-score); never
    below ``floor_mm`` (the method's noise for this direction, ``noise_floor_mm``)."""
    absolute = max(FLAG_VOXELS * voxel_mm, floor_mm)
    values = np.array(list(max_displacements.values()), dtype=np.float64)
    relative = None
    if len(values) >= MIN_CASES_RELATIVE:
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        relative = max(median + MAD_FACTOR * 1.4826 * mad, median + MAD_FLOOR_VOXELS * voxel_mm, floor_mm)
    flagged = sorted(c for c, d in max_displacements.items()
                     if d > absolute or (relative is not None and d > relative))
    rule = {
        "measure": "max_displacement_mm (how far any voxel of the mask moves under the rigid transform)",
        "reference_voxel_mm": voxel_mm,
        "reference_voxel": "finest axis of the median raw spacing of the training cases",
        "absolute_threshold_mm": absolute,
        "relative_threshold_mm": relative,
        "noise_floor_mm": floor_mm,
        "text": (f"flagged if > {FLAG_VOXELS:g} reference voxels ({absolute:.2f} mm)"
                 + (f" or > max(median + {MAD_FACTOR:g} x 1.4826 x MAD, median + {MAD_FLOOR_VOXELS:g} voxel) = "
                    f"{relative:.2f} mm" if relative is not None else
                    f" (the relative rule needs >= {MIN_CASES_RELATIVE} cases)")
                 + (f"; never below {floor_mm:g} mm: with PET on either side the rigid estimate's own error on "
                    "hardware-aligned PET/CT reaches 25 mm, so only gross misalignment is detectable" if floor_mm else "")),
    }
    return flagged, rule


def check_pairs(cases: dict[str, CaseFiles], dj: DatasetJson, num_processes: int = 2,
                signatures: dict[str, str] | None = None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``pair_alignment`` section for a dataset's training cases.

    ``signatures``: per-case content hashes; a case whose hash and method version equal those recorded in
    ``previous`` (an earlier section) is not registered again. Cases that cannot be checked (unreadable,
    registration failure) are listed under ``failed``, not raised: the check advises, it never blocks.
    """
    if not dj.paired:
        return {"skipped": "unpaired dataset (dataset.json paired: false): sources have no registered target",
                "method": METHOD}
    signatures = signatures or {}
    old = (previous or {}).get("cases", {}) if (previous or {}).get("method", {}).get("version") == ALIGNMENT_VERSION else {}
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for case in sorted(cases):
        cf = cases[case]
        if cf.target is None or cf.images[0] is None:
            continue
        sig = signatures.get(case)
        if sig is not None and old.get(case, {}).get("signature") == sig:
            results[case] = old[case]
        else:
            todo.append(cf)
    if old and results:
        logger.info("pair check: %d case(s) unchanged since the last check, not registered again", len(results))
    problems: list[tuple[str, str]] = []
    if todo:
        n = min(num_processes, len(todo))
        threads = 1 if n > 1 else None
        items = [(cf, dj, threads) for cf in todo]
        if n > 1:
            with pool_context().Pool(n) as pool:
                out = list(progress(pool.imap(_worker, items), total=len(items), desc="pair alignment", unit="case"))
        else:
            out = [_worker(it) for it in progress(items, desc="pair alignment", unit="case")]
        for case, res, probs in out:
            problems += probs
            if res is not None:
                if case in signatures:
                    res["signature"] = signatures[case]
                results[case] = res
    # A pair the registration cannot handle is reported, not fatal: the check advises, the user decides.
    failed = {case: msg for case, msg in problems}
    if not results:
        return {"skipped": "no case has both a source and a target" if not failed else "registration failed for every case",
                "failed": failed, "method": METHOD}
    voxel = reference_spacing([r["spacing"] for r in results.values()])
    flagged, rule = flag_outliers({c: r["max_displacement_mm"] for c, r in results.items()}, voxel,
                                  noise_floor_mm(dj))
    for case, r in results.items():
        r["offset_voxels"] = r["max_displacement_mm"] / voxel
        r["flagged"] = case in flagged
    return {"method": METHOD, "rule": rule, "flagged": flagged, "failed": failed, "cases": dict(sorted(results.items()))}


def log_flagged(section: dict[str, Any], dataset: str) -> None:
    """One warning per flagged case (offset in mm and degrees) and the command that fixes it."""
    for case, msg in section.get("failed", {}).items():
        logger.warning("%s: %s: pair alignment not checked: %s", dataset, case, msg)
    if "skipped" in section:
        logger.info("%s: pair alignment check skipped: %s", dataset, section["skipped"])
        return
    flagged = section.get("flagged", [])
    if not flagged:
        logger.info("%s: pair alignment: all %d pairs aligned (%s)", dataset, len(section.get("cases", {})),
                    section["rule"]["text"])
        return
    for case in flagged:
        r = section["cases"][case]
        logger.warning("%s: %s: source and target look misaligned: tissue moves up to %.2f mm (%.1f voxels), "
                       "shift %.2f mm, rotation %.2f deg", dataset, case, r["max_displacement_mm"],
                       r["offset_voxels"], r["shift_mm"], r["rotation_deg"])
    logger.warning("%s: %d of %d pairs flagged (%s); a warning, not an error: inspect them, then fix with "
                   "`autotrans_check_pairs -d %s --register rigid -o NEW_ID` (writes a new dataset) or remove them",
                   dataset, len(flagged), len(section["cases"]), section["rule"]["text"], dataset)


def format_table(section: dict[str, Any]) -> str:
    """The per-case table ``autotrans_check_pairs`` prints."""
    if "skipped" in section:
        return f"pair alignment check skipped: {section['skipped']}"
    head = f"{'case':<24} {'shift mm':>9} {'rot deg':>8} {'max disp mm':>12} {'voxels':>7} {'MI before':>10} {'MI after':>9}  flagged"
    lines = [head, "-" * len(head)]
    for case, r in section["cases"].items():
        lines.append(f"{case:<24} {r['shift_mm']:>9.2f} {r['rotation_deg']:>8.2f} {r['max_displacement_mm']:>12.2f} "
                     f"{r['offset_voxels']:>7.2f} {r['metric_before']:>10.4f} {r['metric_after']:>9.4f}  "
                     f"{'YES' if r['flagged'] else ''}")
    for case, msg in section.get("failed", {}).items():
        lines.append(f"{case:<24} not checked: {msg}")
    lines.append(section["rule"]["text"])
    return "\n".join(lines)


def resample_onto_target(source_path: Path, result: dict[str, Any], out_path: Path) -> None:
    """Resample one source channel with the case's rigid transform onto its (shared) target grid.

    Linear interpolation; voxels that come from outside the source get the channel's minimum (its background).
    """
    arr, geometry = read_image(source_path)
    img = _to_sitk(arr, geometry)
    out = sitk.Resample(img, img, transform_from_result(result), sitk.sitkLinear, float(arr.min()), sitk.sitkFloat32)
    write_image(sitk.GetArrayFromImage(out), geometry, out_path, reference=source_path)


def register_dataset(raw_dir: Path, dest: Path, section: dict[str, Any], cases: dict[str, CaseFiles],
                     dataset_json: dict[str, Any], only_flagged: bool = False) -> Path:
    """Write ``dest`` (a new raw dataset): every training source channel resampled onto its target with the
    case's estimated rigid transform; everything else (targets, masks, lesion maps, test split, other files)
    copied byte for byte. The original folder is only read. Atomic: a failure leaves no ``dest``.

    Masks and lesion maps stay valid because they share the target's grid and describe the target.
    """
    from autotrans.utils.files import atomic_directory, save_json

    if "skipped" in section:
        raise ConfigurationError(f"{raw_dir.name}: nothing to register ({section['skipped']})")
    if dest.exists():
        raise ConfigurationError(f"{dest} already exists; choose another -o id (the check never overwrites a dataset)")
    to_register = set(section["flagged"]) if only_flagged else set(section["cases"])
    with atomic_directory(dest) as tmp:
        for item in sorted(raw_dir.iterdir()):
            if item.name.startswith(".") or item.name in ("imagesTr", "dataset.json"):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        images = raw_dir / "imagesTr"
        (tmp / "imagesTr").mkdir()
        source_of = {p.name: (case, p) for case, cf in cases.items() for p in cf.images if p is not None}
        for f in progress(sorted(images.iterdir()), desc=f"registering sources of {dest.name}", unit="file"):
            if f.name.startswith("."):
                continue
            case = source_of.get(f.name, (None,))[0]
            if case in to_register:
                resample_onto_target(f, section["cases"][case], tmp / "imagesTr" / f.name)
            else:
                shutil.copy2(f, tmp / "imagesTr" / f.name)
        dj = dict(dataset_json)
        dj["name"] = dest.name.split("_", 1)[1]
        dj["pair_registration"] = {
            "registered_from": raw_dir.name,
            "method": "rigid (autotrans_check_pairs --register rigid): every source channel resampled onto its "
                      "target with the rigid transform estimated from source channel 0 (linear interpolation, "
                      "outside = the channel's minimum); targets, masks, lesion maps and the test split copied unchanged",
            "cases_registered": sorted(to_register),
            "cases_copied_unchanged": sorted(set(cases) - to_register),
            "transforms": "pair_registration.json",
        }
        save_json(dj, tmp / "dataset.json")
        save_json({"method": section["method"], "rule": section["rule"],
                   "cases": {c: {k: section["cases"][c][k] for k in ("center_mm", "parameters", "translation_mm",
                                                                     "rotation_deg", "max_displacement_mm")}
                             for c in sorted(to_register)}}, tmp / "pair_registration.json")
    logger.info("wrote %s: %d of %d cases' sources registered onto their targets", dest, len(to_register),
                len(section["cases"]))
    return dest


PAIR_ALIGNMENT_FILE = "pair_alignment.json"


def previous_results(preprocessed_dir: Path, fingerprint_section: dict[str, Any] | None) -> dict[str, Any]:
    """Earlier per-case results of this method version, from the fingerprint and ``pair_alignment.json`` (the
    standalone check's record), for ``check_pairs`` to reuse where a case's content hash is unchanged."""
    from autotrans.utils.files import load_json

    sections = [fingerprint_section or {}]
    path = preprocessed_dir / PAIR_ALIGNMENT_FILE
    if path.is_file():
        try:
            sections.append(load_json(path))
        except ValueError:
            pass
    cases: dict[str, Any] = {}
    for sec in sections:
        if sec.get("method", {}).get("version") == ALIGNMENT_VERSION:
            cases.update({c: r for c, r in sec.get("cases", {}).items() if "signature" in r})
    return {"method": {"version": ALIGNMENT_VERSION}, "cases": cases}


def check_dataset(dataset: str | int, num_processes: int = 2, clean: bool = False) -> tuple[dict[str, Any], Path]:
    """``autotrans_check_pairs``: integrity-check the raw dataset, check its pairs (reusing unchanged cases'
    results unless ``clean``), write ``$autotrans_preprocessed/DatasetXXX/pair_alignment.json``, warn.
    Returns the section and the path written."""
    from autotrans.planning.api import DatasetFolders, _checked, case_signatures
    from autotrans.utils.files import ensure_writable_folder, load_json, save_json

    folders = DatasetFolders(dataset)
    ensure_writable_folder(folders.preprocessed)
    dj, cases = _checked(folders)
    signatures = case_signatures(cases)
    fingerprint_section = None
    if not clean and folders.fingerprint_file.is_file():
        try:
            fingerprint_section = load_json(folders.fingerprint_file).get("pair_alignment")
        except ValueError:
            pass
    cached = None if clean else previous_results(folders.preprocessed, fingerprint_section)
    section = check_pairs(cases, dj, num_processes, signatures, cached)
    out = folders.preprocessed / PAIR_ALIGNMENT_FILE
    folders.preprocessed.mkdir(parents=True, exist_ok=True)
    save_json({"dataset": folders.name, **section}, out)
    log_flagged(section, folders.name)
    return section, out


def register_step(dataset: str | int, new_id: int, name: str | None = None, num_processes: int = 2,
                  only_flagged: bool = False, clean: bool = False) -> tuple[Path, dict[str, Any]]:
    """``autotrans_check_pairs --register rigid -o NEW_ID``: check (cached), then write the registered copy.
    Refuses, before any registration, an id that is taken or the dataset's own."""
    from autotrans.dataset.converters.common import ensure_dataset_id_free
    from autotrans.dataset.format import load_dataset_json
    from autotrans.paths import dataset_folder_name, parse_dataset_folder_name, raw_root, resolve_dataset
    from autotrans.planning.api import DatasetFolders, _checked
    from autotrans.utils.files import ensure_writable_folder, load_json

    source_name = resolve_dataset(dataset)
    source_id, source_short = parse_dataset_folder_name(source_name)
    if new_id == source_id:
        raise ConfigurationError(f"-o {new_id} is the id of {source_name} itself; the original is never modified, "
                                 "choose a new id")
    folder = dataset_folder_name(new_id, name or f"{source_short}Registered")
    dest = raw_root() / folder
    try:
        ensure_dataset_id_free(new_id, folder)
    except ConfigurationError as e:  # its advice (--overwrite) is the converters'; this command never overwrites
        raise ConfigurationError(f"-o {new_id}: {str(e).split(': a second', 1)[0]}; choose another id") from None
    if dest.exists():
        raise ConfigurationError(f"{dest} already exists; choose another -o id (the check never overwrites a dataset)")
    ensure_writable_folder(dest.parent)
    section, _ = check_dataset(dataset, num_processes, clean)
    folders = DatasetFolders(dataset)
    load_dataset_json(folders.raw)  # validated; the raw dict is copied to keep every field
    _, cases = _checked(folders)
    raw_json = load_json(folders.raw / "dataset.json")
    return register_dataset(folders.raw, dest, section, cases, raw_json, only_flagged), section
