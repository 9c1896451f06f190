"""Example slices in one display convention, whatever the orientation an image was stored in.

Cutting planes from raw array indices shows an image stored LAS upside down and one stored LPS right, so every
volume of a case is first resampled onto one axis-aligned LPS grid derived from the reference's direction
(array axes (z, y, x) = (inferior→superior, anterior→posterior, right→left)). A direction that is a signed
permutation keeps every voxel centre (exact values); an oblique one is resampled linearly with its spacing.

Display convention (radiological), stated in the report's caption as :data:`CONVENTION`:

* axial: anterior at the top, the patient's left on the image's right, seen from the feet;
* coronal: head up, the patient's left on the image's right;
* sagittal: head up, anterior on the left.

Pixels are drawn with their physical aspect ratio (from the spacing).

Windows (:func:`display_window`) are clinical defaults per modality, computed once per row from the row's
reference and applied to all panels of the row: CT/CBCT soft tissue W400/L40 HU; PET 0–7 SUV in inverted grey
(uptake dark on white, as PET is read); MR p1–p99 of the reference inside the mask.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from autotrans.io.image_io import Geometry

logger = logging.getLogger(__name__)

CONVENTION = ("radiological convention: axial seen from the feet, anterior up, patient left on the image right; "
              "coronal head up, patient left on the image right; sagittal head up, anterior left; physical aspect "
              "ratio")
PLANES = ("axial", "coronal", "sagittal")
CT_WINDOW = (40.0 - 200.0, 40.0 + 200.0)  # soft tissue: level 40 HU, width 400 HU
PET_WINDOW = (0.0, 7.0)  # SUV
MR_PERCENTILES = (1.0, 99.0)
_TOL = 1e-3


@dataclass(frozen=True)
class Window:
    """Display range and colour map of one row (``cmap`` a matplotlib name)."""

    lo: float
    hi: float
    cmap: str
    text: str


def display_window(modality: str, reference: np.ndarray, mask: np.ndarray | None = None,
                   name: str = "the reference") -> Window:
    """The clinical default window of ``modality`` (see the module doc); MR from ``reference`` inside ``mask``."""
    if modality in ("CT", "CBCT"):
        return Window(*CT_WINDOW, "gray", "soft-tissue window W400/L40 HU")
    if modality == "PET":
        return Window(*PET_WINDOW, "gray_r", "0–7 SUV, inverted grey (high uptake dark)")
    sel = mask > 0 if mask is not None and mask.shape == reference.shape and (mask > 0).any() else None
    vals = reference[sel] if sel is not None else reference[reference > reference.min()]
    if vals.size == 0:
        vals = reference.ravel()
    lo, hi = (float(v) for v in np.percentile(vals, MR_PERCENTILES))
    if not hi > lo:
        hi = lo + 1.0
    where = "inside the mask" if sel is not None else "above the background"
    return Window(lo, hi, "gray", f"p1–p99 of {name} {where} ({lo:.3g} to {hi:.3g})")


def background_value(modality: str, arr: np.ndarray) -> float:
    """The physical background (air) of ``modality``: 0 SUV for PET, the image minimum otherwise (CT air at the
    window's floor, the darkest MR value)."""
    if modality == "PET":
        return 0.0
    return float(np.nanmin(arr)) if arr.size else 0.0


def _is_permutation(direction: np.ndarray) -> bool:
    return bool(np.all((np.abs(direction) < _TOL) | (np.abs(np.abs(direction) - 1.0) < _TOL)))


def _same_centres(img: sitk.Image, grid: sitk.Image) -> bool:
    """Whether every voxel centre of ``grid`` is a voxel centre of ``img`` (a signed-permutation direction,
    the same spacing per physical axis, an origin on the image's lattice)."""
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    if not _is_permutation(d):
        return False
    closest = np.argmax(np.abs(d), axis=1)
    if not np.allclose(np.asarray(img.GetSpacing())[closest], grid.GetSpacing(), rtol=1e-5):
        return False
    idx = np.asarray(img.TransformPhysicalPointToContinuousIndex(grid.GetOrigin()))
    return bool(np.allclose(idx, np.round(idx), atol=1e-3))


def display_grid(geometry: Geometry) -> sitk.Image:
    """An empty image on the axis-aligned LPS grid (identity direction) that covers ``geometry``.

    Signed-permutation directions: the same voxel centres, axes reordered (spacing permuted). Oblique ones: the
    bounding box of the voxel centres, each LPS axis with the spacing of the image axis closest to it.
    """
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # columns: image axes in LPS
    spacing = np.asarray(geometry.spacing, dtype=float)
    size = np.asarray(geometry.size, dtype=int)
    origin = np.asarray(geometry.origin, dtype=float)
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)],
                       dtype=float)
    points = origin + (corners * spacing) @ d.T
    closest = np.argmax(np.abs(d), axis=1)  # for each LPS axis, the image axis most aligned with it
    out_spacing = spacing[closest]
    lo, hi = points.min(axis=0), points.max(axis=0)
    if _is_permutation(d):
        out_size = size[closest]
    else:
        out_size = np.floor((hi - lo) / out_spacing + 1e-6).astype(int) + 1
        logger.debug("oblique direction %s: resampled linearly onto an LPS grid of %s voxels", d.ravel().round(3),
                     out_size.tolist())
    grid = sitk.Image([int(s) for s in out_size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in out_spacing])
    grid.SetOrigin([float(v) for v in lo])
    grid.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return grid


def to_display(arr: np.ndarray, geometry: Geometry, grid: sitk.Image, background: float = 0.0,
               label: bool = False) -> np.ndarray:
    """``arr`` (numpy (z, y, x) of an image with ``geometry``) on the display ``grid``: linear for intensities,
    nearest for label maps; outside the image: ``background``."""
    img = geometry.apply_to(sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32)))
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    if _same_centres(img, grid):
        interp = sitk.sitkNearestNeighbor  # the grid's voxel centres are the image's: exact values, no round-off
    out = sitk.Resample(img, grid, sitk.Transform(), interp, float(background), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def planes(vol: np.ndarray, point: tuple[int, int, int], spacing_xyz: tuple[float, ...]
           ) -> list[tuple[np.ndarray, float]]:
    """Axial, coronal and sagittal planes of a display-grid volume through ``point`` (z, y, x), flipped to the
    radiological convention, each with its matplotlib ``aspect`` (row spacing / column spacing)."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    z, y, x = point
    axial = vol[z]  # rows: anterior -> posterior (anterior up); columns: right -> left (left on the right)
    coronal = vol[:, y, :][::-1]  # rows: superior first (head up); columns: right -> left
    sagittal = vol[:, :, x][::-1]  # rows: head up; columns: anterior -> posterior (anterior left)
    return [(axial, sy / sx), (coronal, sz / sx), (sagittal, sz / sy)]


def physical_point(point_zyx: tuple[int, int, int], grid: sitk.Image) -> tuple[float, float, float]:
    """The LPS position (mm) of a display-grid voxel, for the caption."""
    return tuple(float(v) for v in grid.TransformIndexToPhysicalPoint([int(i) for i in point_zyx[::-1]]))
