"""Writing predictions whose header is bit-identical to the input's.

``write_image`` rebuilds a header from the geometry. For MHA/NRRD that round-trips exactly, but NIfTI stores
the rotation twice in float32 (quaternion and sform) and ITK re-derives the direction from them on every
read: an oblique input written back by ITK comes back with direction cosines off by up to ~5e-8 (measured on
the ReMIND head). A prediction must overlay its input exactly, so when input and output are both NIfTI the
input's header is reused verbatim (nibabel), with only the data type, scaling and display range changed.
Everything else goes through the foundation's ``write_image``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from autotrans.io import Geometry, read_geometry, write_image
from autotrans.utils.files import atomic_path

logger = logging.getLogger(__name__)

NIFTI_ENDINGS = (".nii.gz", ".nii")


def _nifti_ending(path: Path) -> str | None:
    name = path.name.lower()
    return next((e for e in NIFTI_ENDINGS if name.endswith(e)), None)


def write_prediction(array: np.ndarray, geometry: Geometry, path: Path, reference: Path | None = None) -> None:
    """Write ``(z, y, x)`` ``array`` atomically with ``geometry``; reuse ``reference``'s NIfTI header if possible."""
    path = Path(path)
    ending = _nifti_ending(path)
    if reference is not None and ending is not None and _nifti_ending(Path(reference)) is not None:
        if _write_nifti_like(array, geometry, path, Path(reference), ending):
            return
    write_image(array, geometry, path)


def _write_nifti_like(array: np.ndarray, geometry: Geometry, path: Path, reference: Path, ending: str) -> bool:
    """Header copy; False (caller falls back to ``write_image``) when the reference does not fit the array."""
    import nibabel as nib

    try:
        ref = nib.load(str(reference))
        header, image_class = ref.header.copy(), type(ref)  # NIfTI-1 or NIfTI-2, as the input
    except Exception as e:  # nibabel raises many types for unreadable headers
        logger.debug("%s: cannot reuse the NIfTI header (%s)", reference, e)
        return False
    if tuple(int(d) for d in header.get_data_shape()[:3]) != tuple(geometry.size) or array.shape != geometry.shape_zyx:
        return False
    header.set_data_shape(tuple(geometry.size))
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # the input's display window means nothing for the output
    data = np.ascontiguousarray(array, dtype=np.float32).T  # (z, y, x) -> NIfTI's (x, y, z) voxel order
    with atomic_path(path, suffix=ending) as tmp:
        nib.save(image_class(data, None, header=header), str(tmp))
        diff = geometry.mismatch(read_geometry(tmp))
        if diff is not None:  # never write a header that disagrees with the geometry we were given
            raise ValueError(f"{path}: reused NIfTI header does not match the input geometry ({diff})")
    return True
