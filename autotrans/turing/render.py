"""Display data for the reader page, rendered once at ``create`` time.

Every item of a study is resampled onto one common isotropic display grid and encoded with one
study-wide linear uint16 code, so item files, their sizes and their metadata are identical in form for
real and synthetic volumes: nothing but the pixels themselves can tell the classes apart. Serving is then
a plain file read, and the browser gets physical units back (HU, SUV, or percentile-normalised MR) so
window/level works in units clinicians know.

Storage precision must not tell the classes apart either: real volumes are often stored on a coarse
lattice (PET at 0.01 SUV, MR as integers) while synthetic ones are continuous floats, and rounding both
straight to the display code would leave real items with only every tenth code (PET) or with wide
regular gaps between codes (MR). So every item, real or synthetic, goes through the same quantisation:
display values plus one seeded Gaussian dither field, the same for every item, whose standard deviation is
the coarsest storage step found among all the study's items (at least one display code), then rounding.
Gaussian noise of one lattice step washes out any lattice up to that step (the residue of a lattice
value modulo its step becomes uniform to within ``exp(-2 pi^2)``), and it is of the size of the rounding
error the real data already carries: invisible at any clinical window.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter1d

from autotrans.io import Geometry, read_geometry, read_image

logger = logging.getLogger(__name__)

MODALITIES = ("CT", "PET", "MR")
MAX_DIM = 256  # voxels per axis on the display grid
MAX_VOXELS = 1 << 23  # 8 Mi voxels = 16 MiB per item as uint16
MR_PERCENTILES = (0.5, 99.5)

# physical value = offset + scale * code; code is uint16 little-endian.
ENCODING: dict[str, tuple[float, float]] = {
    "CT": (-1024.0, 1.0),  # HU -1024 .. 64511
    "PET": (0.0, 0.001),  # SUV 0 .. 65.5 in steps of 0.001
    "MR": (-0.5, 1.0 / 20000.0),  # auto-window units: p0.5 -> 0, p99.5 -> 1; range -0.5 .. 2.78
}

# Clinical defaults a radiologist expects (the first preset of a modality is shown first): CT windows as
# W/L in HU, PET as inverted grey 0-7 SUV (the reading-room default) or hot iron with a colour bar, MR
# from the percentile auto-window. Readers may still drag the window freely and pick any colour map.
PRESETS: dict[str, list[dict[str, object]]] = {
    "CT": [
        {"name": "Soft tissue", "center": 40.0, "width": 400.0, "colormap": "gray"},
        {"name": "Lung", "center": -600.0, "width": 1500.0, "colormap": "gray"},
        {"name": "Bone", "center": 300.0, "width": 2000.0, "colormap": "gray"},
        {"name": "Brain", "center": 40.0, "width": 80.0, "colormap": "gray"},
    ],
    "PET": [
        {"name": "SUV 0-7 inverted", "center": 3.5, "width": 7.0, "colormap": "gray_inverted"},
        {"name": "SUV 0-7 hot iron", "center": 3.5, "width": 7.0, "colormap": "hot_iron"},
        {"name": "SUV 0-15", "center": 7.5, "width": 15.0, "colormap": "gray_inverted"},
    ],
    "MR": [
        {"name": "Auto (p0.5-p99.5)", "center": 0.5, "width": 1.0, "colormap": "gray"},
        {"name": "Wide", "center": 0.6, "width": 1.6, "colormap": "gray"},
    ],
}

# Colour maps the page offers (the page draws them; the names are what answers record).
COLORMAPS = ("gray", "gray_inverted", "hot_iron")

UNITS = {"CT": "HU", "PET": "SUV", "MR": "normalised"}


@dataclass(frozen=True)
class DisplayGrid:
    """Common display grid: ``shape`` (z, y, x) voxels of isotropic ``spacing`` mm, centred per item."""

    shape: tuple[int, int, int]
    spacing: float


def oriented_extent_and_spacing(geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Extent and spacing in LPS (z, y, x) order, as they will be after reorientation to LPS."""
    d = np.asarray(geom.direction, dtype=float).reshape(3, 3)
    ext = np.zeros(3)
    sp = np.zeros(3)
    for j in range(3):  # image axis j (x, y, z) points mostly along world axis k
        k = int(np.argmax(np.abs(d[:, j])))
        ext[2 - k] = geom.size[j] * geom.spacing[j]
        sp[2 - k] = geom.spacing[j]
    return ext, sp


def plan_grid(extents_zyx: list[np.ndarray], spacings_zyx: list[np.ndarray]) -> DisplayGrid:
    """Choose one grid for all items: their common (smallest) field of view at about native resolution.

    Using the smallest field of view means every item is cropped, none padded, so no item shows a
    class-specific border; the spacing is coarsened only as needed to stay within the size limits.
    """
    common = np.min(np.stack(extents_zyx), axis=0)
    largest = np.max(np.stack(extents_zyx), axis=0)
    if np.any(common < 0.8 * largest):
        logger.warning(
            "fields of view differ: every item is cropped to the common %s mm (largest %s mm)",
            np.round(common).astype(int).tolist(), np.round(largest).astype(int).tolist(),
        )
    s = float(np.median([sp.min() for sp in spacings_zyx]))
    s = max(s, float(common.max()) / MAX_DIM, float(np.prod(common) / MAX_VOXELS) ** (1.0 / 3.0))
    shape = tuple(int(max(1, round(e / s))) for e in common)
    while np.prod(shape) > MAX_VOXELS or max(shape) > MAX_DIM:  # rounding may overshoot by a voxel
        s *= 1.01
        shape = tuple(int(max(1, round(e / s))) for e in common)
    return DisplayGrid(shape=shape, spacing=s)  # type: ignore[arg-type]


def load_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume reoriented to LPS so that axial/coronal/sagittal views are anatomically right."""
    arr, geom = read_image(path)
    img = geom.apply_to(sitk.GetImageFromArray(arr))
    img = sitk.DICOMOrient(img, "LPS")
    out = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        logger.warning("%s: non-finite voxels replaced by 0 for display", path)
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out, np.asarray(img.GetSpacing()[::-1], dtype=float)


def _resample_axis(a: np.ndarray, axis: int, n_out: int, spacing_in: float, spacing_out: float) -> np.ndarray:
    """Linear resampling of one axis onto ``n_out`` centred samples (anti-aliased when shrinking)."""
    n_in = a.shape[axis]
    factor = spacing_out / spacing_in
    if factor > 1.25:
        a = gaussian_filter1d(a, sigma=0.4 * factor, axis=axis, mode="nearest")
    pos = n_in / 2.0 + (np.arange(n_out) + 0.5 - n_out / 2.0) * factor - 0.5
    pos = np.clip(pos, 0.0, n_in - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (pos - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i1, axis=axis) * w


def resample_to_grid(arr: np.ndarray, spacing_zyx: np.ndarray, grid: DisplayGrid) -> np.ndarray:
    """Centre-crop ``arr`` to the grid's field of view and resample it to the grid's shape."""
    out = arr.astype(np.float32, copy=False)
    for axis in range(3):
        out = _resample_axis(out, axis, grid.shape[axis], float(spacing_zyx[axis]), grid.spacing)
    return out


def mr_window(arr: np.ndarray) -> tuple[float, float]:
    """The foreground's 0.5th/99.5th percentiles (the MR auto-window)."""
    fg = arr[arr > arr.min()]
    if fg.size < 0.01 * arr.size:
        fg = arr.ravel()
    lo, hi = (float(v) for v in np.percentile(fg, MR_PERCENTILES))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def mr_normalise(arr: np.ndarray) -> np.ndarray:
    """Map the foreground's 0.5th/99.5th percentiles to 0/1 (MR has no absolute intensity unit)."""
    lo, hi = mr_window(arr)
    return (arr - lo) / (hi - lo)


def storage_step(arr: np.ndarray) -> float:
    """The lattice step the values are stored on (0.01 for PET saved at 0.01 SUV, 1 for integer MR/CT, the
    slope of a scaled integer file), or 0 for continuous values. At least 99% of the distinct values
    must sit on the lattice, so a few odd voxels do not hide it."""
    u = np.unique(arr[np.isfinite(arr)].astype(np.float64))
    if u.size < 3:
        return 0.0
    gaps = np.diff(u)
    step = float(gaps.min())
    span = float(u[-1] - u[0])
    if step <= 0 or span / step > 1e9:
        return 0.0
    step = span / round(span / step)  # refine: the float32 gap carries rounding error
    r = (u - u[0]) / step
    on_lattice = np.abs(r - np.rint(r)) < 0.01
    return step if on_lattice.mean() >= 0.99 else 0.0


def display_step(path: Path, modality: str) -> float:
    """Storage step of one source volume in display units (MR: after the auto-window)."""
    arr, _ = read_image(path)
    arr = np.asarray(arr, dtype=np.float32)
    step = storage_step(arr)
    if modality == "MR" and step > 0:
        lo, hi = mr_window(arr[np.isfinite(arr)])
        step /= hi - lo
    return step


def dither_sd(steps: list[float], modality: str) -> float:
    """One dither level for the whole study: the coarsest storage step of any item, at least one code."""
    sd = max([ENCODING[modality][1], *steps])
    width = min(float(p["width"]) for p in PRESETS[modality])  # type: ignore[arg-type]
    if sd > 0.01 * width:
        logger.warning("some volumes are stored at a coarse precision (%.3g %s); every item gets display noise of "
                       "that size so that the precision cannot tell real from synthetic", sd, UNITS[modality])
    return sd


def dither_field(grid: DisplayGrid, seed: int) -> np.ndarray:
    """Standard normal noise on the display grid; the same field is used for every item of a study."""
    return np.random.default_rng(seed).standard_normal(grid.shape, dtype=np.float32)


def encode(arr: np.ndarray, modality: str) -> np.ndarray:
    """Physical values to the study-wide uint16 code (clipped to its range)."""
    offset, scale = ENCODING[modality]
    code = np.rint((arr - offset) / scale)
    return np.clip(code, 0, 65535).astype("<u2")


def decode(code: np.ndarray, modality: str) -> np.ndarray:
    offset, scale = ENCODING[modality]
    return offset + scale * code.astype(np.float64)


def render_item(path: Path, grid: DisplayGrid, modality: str, dither: np.ndarray | None = None) -> np.ndarray:
    """One source volume to its display code array of shape ``grid.shape``.

    ``dither`` (display units, shape ``grid.shape``) is added before rounding; ``create_study`` passes the
    same field, scaled by :func:`dither_sd`, for every item, real or synthetic.
    """
    arr, spacing = load_lps(path)
    out = resample_to_grid(arr, spacing, grid)
    if modality == "MR":
        out = mr_normalise(out)
    if dither is not None:
        out = out + dither
    return encode(out, modality)


def header_extent(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Oriented extent and spacing read from the header only (for planning the grid cheaply)."""
    return oriented_extent_and_spacing(read_geometry(path))


def display_spec(grid: DisplayGrid, modality: str) -> dict[str, object]:
    """What the browser needs to decode and show any item of the study (identical for all items)."""
    offset, scale = ENCODING[modality]
    return {
        "modality": modality,
        "shape": list(grid.shape),
        "spacing_mm": grid.spacing,
        "dtype": "uint16le",
        "offset": offset,
        "scale": scale,
        "unit": UNITS[modality],
        "presets": PRESETS[modality],
        "colormaps": list(COLORMAPS),
    }


def context_spec(modality: str) -> dict[str, object]:
    """How the page decodes the source (context) volumes: the fused CT under PET, or the MR source shown
    beside an MR item. They are real in both classes, so they carry no class information."""
    offset, scale = ENCODING[modality]
    return {"modality": modality, "offset": offset, "scale": scale, "unit": UNITS[modality],
            "presets": PRESETS[modality]}
