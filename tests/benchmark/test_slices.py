"""Example slices follow the patient, not the array: one real volume stored LPS, LAS and oblique renders the same
three planes (exactly for the axis-aligned ones; correlation > 0.95 for the oblique one, which is interpolated
twice)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autotrans.benchmark.slices import display_grid, display_window, planes, to_display
from autotrans.io.image_io import Geometry

FLAIR = Path(__file__).resolve().parents[1] / "data" / "ms_patient07" / "flair.nii.gz"


def _stored(kind: str) -> sitk.Image:
    """The fixture FLAIR stored with an LPS direction (identity), LAS (y flipped) or an oblique one (20° about
    the superior axis, resampled linearly onto that rotated grid)."""
    img = sitk.Cast(sitk.ReadImage(str(FLAIR)), sitk.sitkFloat32)
    # 1 mm of smoothing: the fixture's voxel-level noise would otherwise dominate the comparison of the oblique
    # copy, whose display grid is offset from the LPS one by a fraction of a voxel (anatomy is what must match)
    img = sitk.SmoothingRecursiveGaussian(img, 1.0)
    lps = sitk.DICOMOrient(img, "LPS")  # identity direction (the fixture itself is stored LAS)
    if kind == "LPS":
        return lps
    if kind == "LAS":  # the same physical voxels, the second axis pointing anterior
        arr = sitk.GetArrayFromImage(lps)[:, ::-1, :].copy()
        out = sitk.GetImageFromArray(arr)
        out.SetSpacing(lps.GetSpacing())
        n_y = lps.GetSize()[1]
        out.SetOrigin(lps.TransformIndexToPhysicalPoint([0, n_y - 1, 0]))
        out.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        return out
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    size = np.asarray(lps.GetSize())
    centre = np.asarray(lps.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))
    spacing = np.asarray(lps.GetSpacing())
    grid = sitk.Image([int(s * 1.4) for s in size[:2]] + [int(size[2])], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(rot.ravel().tolist())
    half = (np.asarray(grid.GetSize()) - 1) / 2.0 * spacing
    grid.SetOrigin((centre - rot @ half).tolist())
    return sitk.Resample(lps, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _render(img: sitk.Image, point_lps: np.ndarray, grid: sitk.Image | None = None
            ) -> tuple[list[np.ndarray], list[float]]:
    """The three planes through ``point_lps``; with ``grid``: the display volume cut to that grid's extent (the
    oblique image's display grid is larger; voxel-aligned with the LPS one, same spacing)."""
    geo = Geometry.from_sitk(img)
    own = display_grid(geo)
    vol = to_display(sitk.GetArrayFromImage(img), geo, own)
    if grid is not None:
        start = np.round(own.TransformPhysicalPointToContinuousIndex(grid.GetOrigin())).astype(int)[::-1]
        assert (start >= 0).all()
        vol = vol[tuple(slice(s, s + n) for s, n in zip(start, grid.GetSize()[::-1]))]
        own = grid
    idx = own.TransformPhysicalPointToIndex(point_lps.tolist())[::-1]
    cut = planes(vol, idx, own.GetSpacing())
    return [p for p, _ in cut], [a for _, a in cut]


def test_planes_match_across_storage_orientations() -> None:
    lps = _stored("LPS")
    size = np.asarray(lps.GetSize())
    point = np.asarray(lps.TransformIndexToPhysicalPoint((size // 2).tolist()))
    ref, aspects = _render(lps, point)
    las, las_aspects = _render(_stored("LAS"), point)
    for p, q in zip(ref, las):
        np.testing.assert_array_equal(p, q)  # exact: the same voxels, only stored the other way round
    assert las_aspects == aspects
    # the raw-index cut the report used before differs for LAS: the test would catch the old bug
    raw_lps, raw_las = sitk.GetArrayFromImage(lps), sitk.GetArrayFromImage(_stored("LAS"))
    assert not np.array_equal(raw_lps[size[2] // 2], raw_las[size[2] // 2])
    oblique, _ = _render(_stored("oblique"), point, display_grid(Geometry.from_sitk(lps)))
    for name, p, q in zip(("axial", "coronal", "sagittal"), ref, oblique):
        assert p.shape == q.shape, name
        # compare the anatomy, not the edges: the oblique copy loses the original's outermost voxels (linear
        # interpolation has no neighbour beyond the last voxel centre)
        inside = np.zeros(p.shape, bool)
        inside[3:-3, 3:-3] = True
        inside &= (p > 0) & (q > 0)
        assert inside.mean() > 0.3, name
        r = np.corrcoef(p[inside], q[inside])[0, 1]
        assert r > 0.95, (name, r)


def test_radiological_orientation_of_a_marker() -> None:
    """A bright voxel placed anterior, left and superior of the centre lands top-right (axial), right and up
    (coronal), left and up (sagittal)."""
    img = sitk.Image([21, 21, 21], sitk.sitkFloat32)
    img.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # LAS storage
    img.SetOrigin((-10.0, 10.0, -10.0))
    arr = np.zeros((21, 21, 21), np.float32)
    centre = np.array([0.0, 0.0, 0.0])
    marker = centre + np.array([5.0, -5.0, 5.0])  # LPS: +x left, -y anterior, +z superior
    for p in (centre, marker):
        arr[img.TransformPhysicalPointToIndex(p.tolist())[::-1]] = 1.0
    geo = Geometry.from_sitk(img)
    grid = display_grid(geo)
    vol = to_display(arr, geo, grid)
    c = grid.TransformPhysicalPointToIndex(centre.tolist())[::-1]
    ax = planes(vol, c, grid.GetSpacing())[0][0]
    assert len(np.argwhere(ax == 1.0)) == 1  # only the centre in this axial plane
    m = grid.TransformPhysicalPointToIndex(marker.tolist())[::-1]
    ax_m, cor_m, sag_m = (p for p, _ in planes(vol, m, grid.GetSpacing()))
    ax_c, cor_c, sag_c = (p for p, _ in planes(vol, c, grid.GetSpacing()))
    (r_m, c_m), (r_c, c_c) = np.argwhere(ax_m == 1)[0], np.argwhere(ax_c == 1)[0]
    assert r_m < r_c and c_m > c_c  # axial: anterior up, patient left on the right
    (r_m, c_m), (r_c, c_c) = np.argwhere(cor_m == 1)[0], np.argwhere(cor_c == 1)[0]
    assert r_m < r_c and c_m > c_c  # coronal: head up, patient left on the right
    (r_m, c_m), (r_c, c_c) = np.argwhere(sag_m == 1)[0], np.argwhere(sag_c == 1)[0]
    assert r_m < r_c and c_m < c_c  # sagittal: head up, anterior on the left


def test_clinical_windows() -> None:
    ref = np.linspace(0, 100, 1000, dtype=np.float32).reshape(10, 10, 10)
    assert (display_window("CT", ref).lo, display_window("CT", ref).hi) == (-160.0, 240.0)
    pet = display_window("PET", ref)
    assert (pet.lo, pet.hi, pet.cmap) == (0.0, 7.0, "gray_r")
    mr = display_window("MR", ref, np.ones_like(ref))
    assert np.isclose(mr.lo, 1.0, atol=0.1) and np.isclose(mr.hi, 99.0, atol=0.1)
