"""Shared machinery of the dataset converters: the conversion plan, grid checks and the raw writer.

A converter only has to *describe* a public dataset (which file of which case plays which role); this
module turns that description into ``$autotrans_raw/DatasetXXX_Name``. It works in two phases so that a
bad download never leaves a half-written dataset behind:

1. ``check_plan`` reads every header (cheap) and collects one ``(case, problem)`` line per finding:
   missing or unreadable files, grids that differ without sharing the patient frame.
2. ``write_raw_dataset`` writes into a hidden temporary folder beside the destination and renames it
   into place at the end. Source files are only ever read, linked or copied, never modified.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.dataset.format import ChannelInfo, DatasetJson, save_dataset_json
from autotrans.errors import ConfigurationError, DatasetError
from autotrans.utils.files import atomic_directory, ensure_replaceable, ensure_writable_folder
from autotrans.io import Geometry, ImageReadError, file_ending, read_geometry, read_image, write_image
from autotrans.paths import ROOT_VARS, dataset_folder_name, parse_dataset_folder_name, raw_root
from autotrans.utils.progress import progress
from autotrans.utils.lazy import LazyModule

sitk = LazyModule("SimpleITK")
ndimage = LazyModule("scipy.ndimage")

logger = logging.getLogger(__name__)

RAW_ENDING = ".nii.gz"
FILE_MODES = ("copy", "hardlink", "symlink")
# Roles whose voxels are labels: resampled with nearest neighbour, never blended.
LABEL_ROLES = ("mask", "lesions")


@dataclass
class CaseSource:
    """Where one case's files live in the downloaded dataset.

    ``mask_rule`` says how to make a mask when the dataset ships none: ``"body_from_ct"`` thresholds the
    CT (``ct_role`` names which file is the CT, e.g. ``"image0"`` or ``"target"``), ``"nonzero"`` takes
    the union of non-zero voxels of all intensity images (skull-stripped brain MRI).
    """

    case_id: str
    images: list[Path]
    target: Path | None
    split: str = "Tr"
    mask: Path | None = None
    lesions: Path | None = None
    mask_rule: str | None = None
    ct_role: str | None = None

    def files(self) -> list[tuple[str, Path]]:
        """All files as ``(role, path)``; roles are ``image0..``, ``target``, ``mask``, ``lesions``."""
        out = [(f"image{i}", p) for i, p in enumerate(self.images)]
        for role in ("target", "mask", "lesions"):
            p = getattr(self, role)
            if p is not None:
                out.append((role, p))
        return out


@dataclass
class ConversionPlan:
    """Everything a converter found: the dataset.json content, the cases and the problems."""

    default_name: str
    source_channels: list[ChannelInfo]
    target: ChannelInfo
    description: str
    licence: str
    reference: str
    cases: list[CaseSource] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    # The grid every file of a case is put on: the target's (default) or the first source image's.
    reference_role: str = "target"
    extra: dict[str, Any] = field(default_factory=dict)


def ensure_dataset_id_free(dataset_id: int, folder: str) -> None:
    """Refuse a dataset id that another dataset (another name) already uses in any of the roots that are set:
    a second ``DatasetXXX_*`` folder would make ``-d XXX`` ambiguous for every later command."""
    for var in ROOT_VARS:
        value = os.environ.get(var)
        root = Path(value).expanduser() if value else None
        if root is None or not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            parsed = parse_dataset_folder_name(child.name)
            if parsed and parsed[0] == dataset_id and child.name != folder and child.is_dir():
                raise ConfigurationError(
                    f"dataset id {dataset_id} is already used by {child}: a second Dataset{dataset_id:03d}_* folder "
                    f"would make -d {dataset_id} ambiguous; choose another id, or -n {parsed[1]} with --overwrite "
                    "to replace that dataset")


def body_mask_from_ct(ct_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Binary body mask of a CT: threshold, largest 3D component, holes filled slice by slice.

    Why slice by slice: lungs and bowel gas touch the volume's top/bottom faces, so a 3D hole fill
    would leave them out; in each axial slice they are enclosed by the body contour.
    """
    fg = ct_hu > threshold_hu
    if not fg.any():
        return np.zeros(ct_hu.shape, dtype=np.uint8)
    fg = ndimage.binary_opening(fg, structure=np.ones((1, 3, 3), bool))
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    elif n == 0:
        return np.zeros(ct_hu.shape, dtype=np.uint8)
    out = np.empty_like(fg)
    for z in range(fg.shape[0]):
        out[z] = ndimage.binary_fill_holes(fg[z])
    return out.astype(np.uint8)


def nonzero_mask(arrays: list[np.ndarray]) -> np.ndarray:
    """Union of non-zero voxels (skull-stripped MRI: everything outside the brain is exactly 0)."""
    m = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        m |= a != 0
    return m.astype(np.uint8)


def _physical_bounds(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box of all voxel corners in world (LPS) coordinates."""
    d = np.asarray(g.direction, float).reshape(3, 3)
    sp = np.asarray(g.spacing, float)
    corners = []
    for cx in (-0.5, g.size[0] - 0.5):
        for cy in (-0.5, g.size[1] - 0.5):
            for cz in (-0.5, g.size[2] - 0.5):
                corners.append(np.asarray(g.origin) + d @ (sp * np.array([cx, cy, cz])))
    c = np.asarray(corners)
    return c.min(0), c.max(0)


def overlap_fraction(moving: Geometry, reference: Geometry) -> float:
    """Fraction of the reference box covered by the moving box (0 = no common patient frame)."""
    lo_m, hi_m = _physical_bounds(moving)
    lo_r, hi_r = _physical_bounds(reference)
    inter = np.clip(np.minimum(hi_m, hi_r) - np.maximum(lo_m, lo_r), 0, None)
    vol_r = np.prod(hi_r - lo_r)
    return float(np.prod(inter) / vol_r) if vol_r > 0 else 0.0


def resample_to_grid(array: np.ndarray, geometry: Geometry, reference: Geometry, label: bool) -> np.ndarray:
    """Resample ``array`` onto ``reference`` through physical coordinates (identity transform).

    No registration is estimated: both grids are assumed to share the scanner's patient frame, which is
    what a same-session PET/CT or a pre-registered benchmark provides. Outside the moving image the value
    is its minimum (air for CT, 0 for PET and skull-stripped MR), never an arbitrary constant.
    """
    img = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    ref = reference.apply_to(sitk.Image(list(reference.size), sitk.sitkUInt8))
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    default = float(array.min()) if array.size else 0.0
    out = sitk.Resample(img, ref, sitk.Transform(), interp, default, img.GetPixelID())
    return sitk.GetArrayFromImage(out)


def check_plan(plan: ConversionPlan, resample: bool) -> dict[str, dict[str, Geometry]]:
    """Read the headers of every planned file; append problems to ``plan.problems``.

    Returns the geometries per case and role so that the writer need not read headers twice.
    """
    geoms: dict[str, dict[str, Geometry]] = {}
    for case in plan.cases:
        g: dict[str, Geometry] = {}
        for role, path in case.files():
            try:
                g[role] = read_geometry(path)
            except ImageReadError as e:
                plan.problems.append((case.case_id, str(e)))
        ref_role = _reference_role(plan, case)
        ref = g.get(ref_role)
        if ref is not None:
            for role, geo in g.items():
                if role == ref_role or ref.mismatch(geo) is None:
                    continue
                if not resample:
                    plan.problems.append(
                        (case.case_id, f"{role} grid differs from the {ref_role} grid ({ref.mismatch(geo)}); "
                                       "drop --no-resample to resample it by physical coordinates")
                    )
                elif overlap_fraction(geo, ref) <= 0.0:
                    plan.problems.append(
                        (case.case_id, f"{role} does not overlap the {ref_role} in physical space; the two "
                                       "images do not share a patient frame (register them first)")
                    )
        geoms[case.case_id] = g
    return geoms


def _reference_role(plan: ConversionPlan, case: CaseSource) -> str:
    if plan.reference_role == "target" and case.target is not None:
        return "target"
    return "image0"


def _place_file(src: Path, dst: Path, mode: str) -> None:
    """Copy or link ``src`` to ``dst``; hard links fall back to a copy across filesystems or owners."""
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
        return
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError as e:
            logger.debug("hard link %s -> %s failed (%s); copying", src, dst, e)
    shutil.copyfile(src, dst)


def _out_path(root: Path, case: CaseSource, role: str) -> Path:
    s = case.split
    if role.startswith("image"):
        return root / f"images{s}" / f"{case.case_id}_{int(role[5:]):04d}{RAW_ENDING}"
    folder = {"target": "targets", "mask": "masks", "lesions": "lesions"}[role]
    return root / f"{folder}{s}" / f"{case.case_id}{RAW_ENDING}"


def _write_case(plan: ConversionPlan, case: CaseSource, geoms: dict[str, Geometry], root: Path, mode: str) -> None:
    ref_role = _reference_role(plan, case)
    ref = geoms[ref_role]
    arrays: dict[str, np.ndarray] = {}  # on the reference grid, loaded only when needed

    def load(role: str, path: Path) -> np.ndarray:
        if role not in arrays:
            arr, geo = read_image(path, dtype=None)
            if ref.mismatch(geo) is not None:
                arr = resample_to_grid(arr, geo, ref, label=role in LABEL_ROLES)
            arrays[role] = arr
        return arrays[role]

    for role, path in case.files():
        dst = _out_path(root, case, role)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if ref.mismatch(geoms[role]) is None and file_ending(path) == RAW_ENDING:
            _place_file(path, dst, mode)
        else:
            write_image(load(role, path), ref, dst)
    if case.mask is None and case.mask_rule is not None:
        if case.mask_rule == "body_from_ct":
            ct_path = dict(case.files())[case.ct_role or "image0"]
            mask = body_mask_from_ct(load(case.ct_role or "image0", ct_path))
        elif case.mask_rule == "nonzero":
            mask = nonzero_mask([load(r, p) for r, p in case.files() if r not in LABEL_ROLES])
        else:
            raise ValueError(f"unknown mask rule {case.mask_rule!r}")
        write_image(mask, ref, _out_path(root, case, "mask"))


def write_raw_dataset(
    plan: ConversionPlan,
    dataset_id: int,
    name: str | None = None,
    mode: str = "copy",
    resample: bool = True,
    overwrite: bool = False,
    skip_incomplete: bool = False,
) -> Path:
    """Check ``plan`` and write it as ``$autotrans_raw/DatasetXXX_Name``; return that folder.

    Raises:
        DatasetError: one line per problem (unless ``skip_incomplete``, which drops the affected cases).
        ConfigurationError: the destination exists (and not ``overwrite``), or nothing is left to write.
    """
    if mode not in FILE_MODES:
        raise ConfigurationError(f"file mode {mode!r} not in {FILE_MODES}")
    folder = dataset_folder_name(dataset_id, name or plan.default_name)
    dest = raw_root() / folder
    ensure_dataset_id_free(dataset_id, folder)
    ensure_replaceable(dest, overwrite)
    ensure_writable_folder(dest.parent)  # a read-only raw root fails before any file is read
    geoms = check_plan(plan, resample)
    if plan.problems:
        if not skip_incomplete:
            raise DatasetError(plan.problems, header=f"cannot convert to {folder}")
        bad = {c for c, _ in plan.problems}
        for c, msg in plan.problems:
            logger.warning("skipping %s: %s", c, msg)
        plan.cases = [c for c in plan.cases if c.case_id not in bad]
    if not any(c.split == "Tr" for c in plan.cases):
        raise ConfigurationError(f"{folder}: no complete training case found")
    with atomic_directory(dest) as tmp:
        for case in progress(plan.cases, desc=f"converting to {folder}", unit="case"):
            _write_case(plan, case, geoms[case.case_id], tmp, mode)
        n_tr = sum(c.split == "Tr" for c in plan.cases)
        extra = {
            "description": plan.description,
            "licence": plan.licence,
            "reference": plan.reference,
            "numTest": sum(c.split == "Ts" for c in plan.cases),
            **plan.extra,
        }
        dj = DatasetJson(
            name=folder.split("_", 1)[1],
            source_channels=tuple(plan.source_channels),
            target=plan.target,
            paired=True,
            file_ending=RAW_ENDING,
            num_training=n_tr,
            extra=extra,
        )
        save_dataset_json(dj, tmp)
    logger.info("wrote %s (%d training, %d test cases)", dest, n_tr, extra["numTest"])
    return dest


def find_dirs(root: Path, predicate: Any, max_depth: int = 3) -> list[Path]:
    """Directories under ``root`` (``root`` included) satisfying ``predicate``, not descending into hits.

    Downloads get unpacked with an extra wrapping folder or two, so the converters look a few levels
    down instead of demanding the exact top folder.
    """
    hits: list[Path] = []
    frontier = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in frontier:
            if predicate(d):
                hits.append(d)
                continue
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        frontier = nxt
    return sorted(hits)


def parse_direction(direction: str, allowed: dict[str, str]) -> tuple[list[str], str]:
    """Parse ``SRC[,SRC...]:TGT`` against the modality keys a dataset offers (case-insensitive)."""
    text = direction.strip().lower()
    if ":" not in text:
        raise ConfigurationError(f"--direction {direction!r}: expected SOURCE:TARGET, e.g. {next(iter(allowed))}:...")
    src_text, tgt = text.split(":", 1)
    srcs = [s.strip() for s in src_text.split(",") if s.strip()]
    unknown = [k for k in [*srcs, tgt] if k not in allowed]
    if unknown or not srcs:
        raise ConfigurationError(
            f"--direction {direction!r}: unknown modality {', '.join(unknown) or '(none)'} "
            f"(valid: {', '.join(allowed)})"
        )
    if tgt in srcs:
        raise ConfigurationError(f"--direction {direction!r}: the target {tgt} is also a source")
    return srcs, tgt
