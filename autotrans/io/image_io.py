"""Volume I/O through SimpleITK, which reads every format we accept with one geometry model.

Arrays are numpy in SimpleITK's memory order ``(z, y, x)``; ``Geometry`` keeps ITK's ``(x, y, z)``
conventions (size, spacing, origin, 3x3 direction in row-major order) so an exported image gets the
input's exact header. nibabel is not needed here: SimpleITK reads and writes NIfTI faithfully
(qform/sform to LPS direction). One exception: ITK's NIfTI reader silently turns NaN and Inf voxels into 0,
which would hide corrupt data from the integrity check, so NIfTI voxel values are read with nibabel
(same voxel order as ITK's index order, same scl_slope/scl_inter) while the geometry still comes from ITK.
Writing NIfTI "like" an input reuses that input's header for the same reason in reverse (``write_image``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.errors import AutotransError
from autotrans.utils.files import atomic_dir_for, atomic_path
from autotrans.utils.lazy import LazyModule

sitk = LazyModule("SimpleITK")

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


class ImageReadError(AutotransError):
    """A volume could not be read or is not a 3D scalar image."""


def file_ending(path: str | os.PathLike) -> str:
    """Return the supported ending of ``path`` (``.nii.gz`` counts as one) or raise."""
    name = Path(path).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    raise ImageReadError(f"{path}: unsupported file ending (supported: {', '.join(SUPPORTED_ENDINGS)})")


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of a 3D image in ITK convention (x, y, z order, LPS world)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Geometry":
        return cls(
            size=tuple(int(s) for s in img.GetSize()),
            spacing=tuple(float(s) for s in img.GetSpacing()),
            origin=tuple(float(o) for o in img.GetOrigin()),
            direction=tuple(float(d) for d in img.GetDirection()),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(
            size=tuple(int(s) for s in d["size"]),
            spacing=tuple(float(s) for s in d["spacing"]),
            origin=tuple(float(o) for o in d["origin"]),
            direction=tuple(float(x) for x in d["direction"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape of this image in numpy (z, y, x) order."""
        return self.size[::-1]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.spacing[::-1]

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def mismatch(self, other: "Geometry", rtol: float = 1e-4, atol: float = 1e-3) -> str | None:
        """Describe how ``other`` differs from this geometry, or ``None`` when they match.

        Tolerances absorb float32 header round-off (NIfTI stores float32 affines): spacing within
        ``rtol``, origin within ``atol`` mm plus ``rtol`` of its magnitude, direction cosines within 1e-4.
        """
        if self.size != other.size:
            return f"size {other.size} != {self.size}"
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=0):
            return f"spacing {_fmt(other.spacing)} != {_fmt(self.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=rtol, atol=atol):
            return f"origin {_fmt(other.origin)} != {_fmt(self.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=1e-4):
            return f"direction {_fmt(other.direction)} != {_fmt(self.direction)}"
        return None


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _read_sitk(path: str | os.PathLike) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    file_ending(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK reports unreadable files as RuntimeError
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reader error"
        raise ImageReadError(f"{path}: unreadable ({first})") from None


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Read only the header (fast: no voxel data is decoded)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    file_ending(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ImageReadError(f"{path}: unreadable header") from None
    if reader.GetDimension() != 3:
        raise ImageReadError(f"{path}: {reader.GetDimension()}D image, expected 3D")
    if reader.GetNumberOfComponents() != 1:
        raise ImageReadError(f"{path}: {reader.GetNumberOfComponents()} components per voxel, expected 1")
    return Geometry(
        size=tuple(int(s) for s in reader.GetSize()),
        spacing=tuple(float(s) for s in reader.GetSpacing()),
        origin=tuple(float(o) for o in reader.GetOrigin()),
        direction=tuple(float(d) for d in reader.GetDirection()),
    )


def _read_nifti_values(path: Path, geometry: Geometry) -> np.ndarray:
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 else data
    if data.shape != tuple(geometry.size):
        raise ImageReadError(f"{path}: voxel data shape {data.shape} does not match header size {geometry.size}")
    return np.ascontiguousarray(data.T)


def read_image(path: str | os.PathLike, dtype: Any = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar volume as a ``(z, y, x)`` array plus its geometry.

    Raises:
        ImageReadError: missing, unreadable, not 3D (2D and 4D are refused), or multi-component.
    """
    if file_ending(path) in (".nii.gz", ".nii"):
        geometry = read_geometry(path)
        arr = _read_nifti_values(Path(path), geometry)
        return (arr.astype(dtype, copy=False) if dtype is not None else arr), geometry
    img = _read_sitk(path)
    dim = img.GetDimension()
    if dim != 3:
        raise ImageReadError(f"{path}: {dim}D image, expected 3D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel, expected 1")
    arr = sitk.GetArrayFromImage(img)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr, Geometry.from_sitk(img)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True,
                reference: str | os.PathLike | None = None) -> None:
    """Write a ``(z, y, x)`` array with ``geometry`` atomically (temp files, then rename).

    ``reference``: the NIfTI file the array belongs to (e.g. the input of a prediction). NIfTI stores the
    rotation twice in float32 and ITK re-derives the direction on every read, so an oblique image written
    back by ITK drifts by up to ~5e-8 in its direction cosines (measured on the ReMIND head). When both
    files are NIfTI, the reference's header is reused byte for byte instead (only data type and scaling
    change), so the output overlays its input exactly.
    """
    path = Path(path)
    ending = file_ending(path)
    if tuple(array.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"{path}: array shape {array.shape} does not match geometry {geometry.shape_zyx}")
    if reference is not None and ending in _NIFTI and file_ending(reference) in _NIFTI:
        if _write_with_nifti_header(array, geometry, path, Path(reference), ending):
            return
    img = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    with atomic_dir_for(path) as tmp_dir:
        sitk.WriteImage(img, str(tmp_dir / path.name), useCompression=compress)


_NIFTI = (".nii.gz", ".nii")


def _write_with_nifti_header(array: np.ndarray, geometry: Geometry, path: Path, reference: Path, ending: str) -> bool:
    """Header copy; False (the caller falls back to ITK) when the reference does not fit the array."""
    import nibabel as nib

    try:
        ref = nib.load(str(reference))
        header, image_class = ref.header.copy(), type(ref)  # NIfTI-1 or NIfTI-2, as the reference
    except Exception:  # nibabel raises many types for unreadable headers
        return False
    if tuple(int(d) for d in header.get_data_shape()[:3]) != tuple(geometry.size):
        return False
    header.set_data_shape(tuple(geometry.size))
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # the reference's display window means nothing here
    data = np.ascontiguousarray(array, dtype=np.float32).T  # (z, y, x) -> NIfTI's (x, y, z) voxel order
    with atomic_path(path, suffix=ending) as tmp:
        nib.save(image_class(data, None, header=header), str(tmp))
        diff = geometry.mismatch(read_geometry(tmp))
        if diff is not None:  # never write a header that disagrees with the geometry we were given
            raise ValueError(f"{path}: reused NIfTI header does not match the geometry ({diff})")
    return True
