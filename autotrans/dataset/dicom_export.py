"""A CT volume in HU (e.g. a synthetic CT) → a DICOM CT Image Storage series that joins a reference series' study.

Why each choice:

- **Pixels**: one single-frame CT Image Storage (1.2.840.10008.5.1.4.1.1.2) file per axial slice, Explicit VR
  Little Endian, signed 16-bit stored values with RescaleSlope 1 and RescaleIntercept 0, so stored value = HU
  exactly for integer HU and every viewer shows HU. Values are rounded to 1 HU; values outside the int16 range
  are clipped and counted (logged), NaN/Inf refuse the volume.
- **Geometry**: ImageOrientationPatient, ImagePositionPatient (per slice), PixelSpacing, SliceThickness and
  SpacingBetweenSlices come from the volume's ITK geometry (LPS, which is DICOM's patient frame). When the
  volume has the reference series' grid (a prediction written in its input's geometry), the reference's own
  position/orientation/spacing strings are reused slice by slice, so the two series overlay exactly, and each
  slice names its source slice (SourceImageSequence). A left-handed volume (slice axis = −row × column) is
  written with its slices reversed: DICOM readers sort along row × column, so the read-back then has the
  right-handed direction (same voxels in space, other index order).
- **Identity**: Patient (name, ID, issuer, birth date, sex, de-identification flags) and Study (UID, date/time,
  accession number, study ID, referring physician, description, procedure code, patient age/size/weight) are
  copied from the reference, so PACS files the series into the source's study and the study entity of both
  series agrees; Series and SOP Instance UIDs are always new. PatientPosition, BodyPartExamined and (Image)
  Laterality are copied when present; without any of them Laterality is sent empty (type 2C: unknown).
- **Frame of Reference**: the reference's FrameOfReferenceUID is kept, also when the volume's grid differs from
  the reference's (then written on the volume's own grid, with a log line): a NIfTI carries no frame UID, and a
  volume produced from the reference (predictions are written in their input's geometry) or converted from the
  same study lies in the same patient coordinates. A volume that is not in those coordinates must not claim
  them: ``new_frame=True`` (``--new_frame``) gives it a new Frame of Reference UID.
- **Without a reference**: new patient/study/frame UIDs, an anonymous identity, and a warning.
- **Atomic**: the whole series is written into a hidden temporary sibling folder that is renamed into place.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.dataset.dicom import DicomError, choose_series
from autotrans.io import Geometry
from autotrans.utils.files import atomic_directory, ensure_replaceable

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: HU range of the stored values (signed int16, slope 1, intercept 0)
HU_MIN, HU_MAX = -32768, 32767
#: soft-tissue display window (center, width) in HU
SOFT_TISSUE_WINDOW = (40, 400)
DEFAULT_DESCRIPTION = "autotrans synthetic CT"
#: tolerance (mm) for reusing the reference's grid
GRID_ATOL = 1e-3

PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
PATIENT_OPTIONAL = ("IssuerOfPatientID", "PatientIdentityRemoved", "DeidentificationMethod",
                    "DeidentificationMethodCodeSequence")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                  "ReferringPhysicianName")
#: copied when present: the study entity of both series must agree (dcentvfy compares them)
STUDY_OPTIONAL = ("StudyDescription", "ProcedureCodeSequence", "PatientAge", "PatientSize", "PatientWeight")


class DicomExportError(DicomError):
    """A volume cannot be written as a DICOM CT series as asked (not 3D, non-finite, unusable reference...)."""


@dataclass(frozen=True)
class ReferenceSeries:
    """What the export takes from a source series: its first header (identity) and its slice grid."""

    folder: Path
    uid: str
    header: Any  # pydicom Dataset of the first slice, without pixels
    geometry: Geometry | None  # None when the series has no usable single-frame slice grid
    slices: tuple[Any, ...] = ()  # headers sorted along the slice normal (for the grid strings, SOP UIDs)


@dataclass
class CtSeriesExport:
    """What ``write_ct_series`` wrote."""

    folder: Path
    series_uid: str
    frame_of_reference_uid: str
    study_uid: str
    files: list[Path]
    clipped: int = 0
    on_reference_grid: bool = False
    notes: list[str] = field(default_factory=list)


def _pydicom() -> Any:
    import pydicom

    return pydicom


def _quiet(fn: Any, *args: Any) -> Any:
    """Call ``fn`` with ITK's console warnings off: a folder without series is our one-line error, not ITK's."""
    from autotrans.dataset.dicom import sitk

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return fn(*args)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _floats(value: Any) -> np.ndarray:
    return np.array([float(v) for v in value], dtype=float)


def load_reference(folder: str | os.PathLike, series_uid: str | None = None) -> ReferenceSeries:
    """Headers of one series of ``folder`` (the largest unless ``series_uid``) and its slice grid, if regular.

    Raises:
        DicomError: no folder, no DICOM series (e.g. not a DICOM folder), unreadable header.
    """
    pydicom = _pydicom()
    folder = Path(folder)
    series, _ = _quiet(choose_series, folder, series_uid)
    headers = []
    for f in series.files:
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as e:  # pydicom raises several unrelated types for corrupt files
            raise DicomExportError(f"{f}: unreadable DICOM header ({e})") from None
    return _with_grid(folder, series.uid, headers)


def _with_grid(folder: Path, uid: str, headers: list[Any]) -> ReferenceSeries:
    """Sort the slices along row × column and derive the ITK geometry when the grid is regular."""
    first = headers[0]
    try:
        iop = _floats(first.ImageOrientationPatient)
        spacing = _floats(first.PixelSpacing)
        rows, cols = int(first.Rows), int(first.Columns)
        positions = [_floats(h.ImagePositionPatient) for h in headers]
        orientations = [_floats(h.ImageOrientationPatient) for h in headers]
    except (AttributeError, TypeError, ValueError):
        return ReferenceSeries(folder, uid, first, None, tuple(headers))
    if (int(getattr(first, "NumberOfFrames", 1) or 1) != 1 or iop.shape != (6,) or spacing.shape != (2,)
            or any(not np.allclose(o, iop, atol=1e-4) for o in orientations)):
        return ReferenceSeries(folder, uid, first, None, tuple(headers))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    along = np.array([float(np.dot(p, normal)) for p in positions])
    order = np.argsort(along, kind="stable")
    slices = tuple(headers[i] for i in order)
    along = along[order]
    steps = np.diff(along)
    if len(headers) > 1 and (steps.min() <= 0 or not np.allclose(steps, steps.mean(), rtol=1e-3, atol=GRID_ATOL)):
        return ReferenceSeries(folder, uid, first, None, slices)  # gaps or duplicates: no single grid
    step = float(steps.mean()) if len(headers) > 1 else float(getattr(first, "SliceThickness", 1.0) or 1.0)
    direction = np.stack([row, col, normal], axis=1)
    geometry = Geometry(size=(cols, rows, len(headers)), spacing=(float(spacing[1]), float(spacing[0]), step),
                        origin=tuple(float(v) for v in positions[order[0]]),
                        direction=tuple(float(v) for v in direction.ravel()))
    return ReferenceSeries(folder, uid, first, geometry, slices)


def same_grid(a: Geometry, b: Geometry) -> bool:
    """Whether two geometries are one voxel grid (size exact; spacing, origin, direction within round-off)."""
    return (a.size == b.size and np.allclose(a.spacing, b.spacing, rtol=1e-5, atol=0)
            and np.allclose(a.origin, b.origin, rtol=0, atol=GRID_ATOL)
            and np.allclose(a.direction, b.direction, rtol=0, atol=1e-5))


def _ds(value: float) -> Any:
    """A DS value that fits the 16-character limit with as many digits as possible."""
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def _as_array(volume: Any, geometry: Geometry | None, where: str) -> tuple[np.ndarray, Geometry]:
    if hasattr(volume, "GetSize") and hasattr(volume, "GetDirection"):  # a SimpleITK image
        import SimpleITK as sitk

        if volume.GetDimension() != 3 or volume.GetNumberOfComponentsPerPixel() != 1:
            raise DicomExportError(f"{where}: {volume.GetDimension()}D image with "
                                   f"{volume.GetNumberOfComponentsPerPixel()} component(s), "
                                   "expected a 3D scalar volume")
        return sitk.GetArrayFromImage(volume), Geometry.from_sitk(volume)
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise DicomExportError(f"{where}: {arr.ndim}D array, expected a 3D (z, y, x) volume")
    if geometry is None:
        raise DicomExportError(f"{where}: a numpy volume needs its geometry")
    if tuple(arr.shape) != tuple(geometry.shape_zyx):
        raise DicomExportError(f"{where}: array shape {arr.shape} does not match the geometry {geometry.shape_zyx}")
    return arr, geometry


def _quantise(arr: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """Round to integer HU and clip to int16; returns the stored values and how many voxels were clipped."""
    a = np.asarray(arr, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise DicomExportError(f"{where}: {bad} voxel(s) are NaN or infinite; cannot store them as HU")
    a = np.rint(a)
    clipped = int(np.count_nonzero((a < HU_MIN) | (a > HU_MAX)))
    return np.clip(a, HU_MIN, HU_MAX).astype(np.int16), clipped


def _now() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _series_description(description: str | None, model: str | None) -> str:
    text = description or (f"{DEFAULT_DESCRIPTION} ({model})" if model else DEFAULT_DESCRIPTION)
    if len(text) > 64:  # LO holds 64 characters
        logger.info("series description shortened to 64 characters: %r", text)
        text = text[:61] + "..."
    return text


def _base_dataset(ref: ReferenceSeries | None, series_uid: str, new_frame: bool, description: str,
                  derivation: str, series_number: int | None) -> tuple[Any, list[str]]:
    """Everything the slices share; returns it and notes on what was copied or made up."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    import autotrans

    notes: list[str] = []
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: copied names keep their characters
    date, time = _now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # CT Image module: value 3 AXIAL or LOCALIZER
    ds.Modality = "CT"
    if ref is not None:
        h = ref.header
        for kw in PATIENT_KEYWORDS + STUDY_KEYWORDS:
            setattr(ds, kw, getattr(h, kw, "") or "")
        for kw in PATIENT_OPTIONAL + STUDY_OPTIONAL:
            if kw in h:
                setattr(ds, kw, getattr(h, kw))
        if new_frame:
            ds.FrameOfReferenceUID = generate_uid()
            ds.PositionReferenceIndicator = ""
            notes.append("new Frame of Reference UID (new_frame)")
        else:
            frame = str(getattr(h, "FrameOfReferenceUID", "") or "")
            if not frame:
                frame = generate_uid()
                notes.append("reference series has no Frame of Reference UID: a new one was made")
            ds.FrameOfReferenceUID = frame
            ds.PositionReferenceIndicator = getattr(h, "PositionReferenceIndicator", "") or ""
        ds.PatientPosition = getattr(h, "PatientPosition", "") or ""
        for kw in ("BodyPartExamined", "Laterality", "ImageLaterality"):
            if getattr(h, kw, ""):
                setattr(ds, kw, getattr(h, kw))
        if not any(kw in ds for kw in ("BodyPartExamined", "Laterality", "ImageLaterality")):
            ds.Laterality = ""  # type 2C: empty = unknown (nothing says whether the body part is paired)
        number = series_number if series_number is not None else _derived_series_number(h)
    else:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "ANONYMOUS^", "ANONYMOUS", "", ""
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
        ds.StudyDate, ds.StudyTime = date, time.split(".")[0]
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "", ""
        ds.PositionReferenceIndicator, ds.PatientPosition, ds.Laterality = "", "", ""
        number = series_number if series_number is not None else 1
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesDescription = description
    ds.DerivationDescription = derivation[:1024]  # ST
    ds.Manufacturer = "autotrans"
    ds.SoftwareVersions = f"autotrans {autotrans.__version__}"
    ds.AcquisitionNumber = ""
    ds.KVP = ""
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = SOFT_TISSUE_WINDOW
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    return ds, notes


def _derived_series_number(header: Any) -> int:
    """The source's series number + 1000 (a common convention for derived series), or 1000."""
    try:
        return int(header.SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def write_ct_series(
    volume: Any, out_dir: str | os.PathLike, geometry: Geometry | None = None,
    reference: str | os.PathLike | ReferenceSeries | None = None, reference_series_uid: str | None = None,
    model: str | None = None, description: str | None = None, details: str | None = None,
    series_number: int | None = None, new_frame: bool = False, overwrite: bool = False,
) -> CtSeriesExport:
    """Write ``volume`` (HU; a ``(z, y, x)`` array with ``geometry``, or a SimpleITK image) as a CT series.

    ``reference``: a DICOM series folder (its largest series unless ``reference_series_uid``) whose patient,
    study and Frame of Reference the series joins; None makes an anonymous new study (with a warning).
    ``model`` names the model in the description; ``details`` is added to DerivationDescription.
    ``out_dir`` is replaced as a whole (refused when non-empty unless ``overwrite``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    out_dir = Path(out_dir)
    where = str(out_dir)
    arr, geometry = _as_array(volume, geometry, where)
    if min(geometry.size) < 1:
        raise DicomExportError(f"{where}: empty volume of size {geometry.size}")
    ensure_replaceable(out_dir, overwrite)
    if out_dir.exists() and not out_dir.is_dir():
        raise DicomExportError(f"{where}: exists and is not a folder")
    ref = reference if isinstance(reference, ReferenceSeries) or reference is None else load_reference(
        reference, reference_series_uid)

    d = np.array(geometry.direction, dtype=float).reshape(3, 3)
    row, col, axis = d[:, 0], d[:, 1], d[:, 2]
    if np.dot(np.cross(row, col), axis) < 0:  # left-handed: DICOM readers sort along row x column
        arr = arr[::-1]
        origin = np.array(geometry.origin) + (geometry.size[2] - 1) * geometry.spacing[2] * axis
        axis = -axis
        geometry = Geometry(size=geometry.size, spacing=geometry.spacing, origin=tuple(float(v) for v in origin),
                            direction=tuple(float(v) for v in np.stack([row, col, axis], axis=1).ravel()))
        logger.info("%s: left-handed volume written with its slices reversed (same voxels in space)", where)
    stored, clipped = _quantise(arr, where)
    if clipped:
        logger.warning("%s: %d voxel(s) outside the storable range [%d, %d] HU were clipped", where, clipped,
                       HU_MIN, HU_MAX)

    series_uid = generate_uid()
    on_grid = ref is not None and ref.geometry is not None and same_grid(ref.geometry, geometry)
    source = f" from series {ref.uid}" if ref is not None else ""
    derivation = (f"Synthetic CT computed by autotrans{' model ' + model if model else ''}{source}; not acquired "
                  f"by a scanner, not for clinical use without validation.{' ' + details if details else ''}")
    base, notes = _base_dataset(ref, series_uid, new_frame, _series_description(description, model), derivation,
                                series_number)
    if ref is None:
        logger.warning("%s: no reference series: new patient, study and Frame of Reference UIDs with an anonymous "
                       "identity (the series will not join any existing study)", where)
    elif not on_grid:
        why = "has no regular slice grid" if ref.geometry is None else (
            f"differs ({ref.geometry.mismatch(geometry) or 'within round-off of its size'})")
        notes.append(f"written on the volume's own grid{'' if new_frame else ' in the reference Frame of Reference'}; "
                     f"the reference series' grid {why}")
    for n in notes:
        logger.info("%s: %s", where, n)

    spacing = geometry.spacing
    if on_grid:
        base.ImageOrientationPatient = list(ref.slices[0].ImageOrientationPatient)
        base.PixelSpacing = list(ref.slices[0].PixelSpacing)
    else:
        base.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        base.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (y), then column spacing (x)
    base.SliceThickness = _ds(spacing[2])
    base.SpacingBetweenSlices = _ds(spacing[2])
    base.Rows, base.Columns = int(geometry.size[1]), int(geometry.size[0])

    files: list[Path] = []
    n = geometry.size[2]
    with atomic_directory(out_dir) as tmp:
        for k in range(n):
            ds = base
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            position = np.array(geometry.origin) + k * spacing[2] * axis
            if on_grid:
                src = ref.slices[k]
                ds.ImagePositionPatient = list(src.ImagePositionPatient)
                item = Dataset()
                item.ReferencedSOPClassUID = src.SOPClassUID
                item.ReferencedSOPInstanceUID = src.SOPInstanceUID
                ds.SourceImageSequence = Sequence([item])
            else:
                ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(float(np.dot(position, axis)))
            ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2", copy=False).tobytes()
            name = f"CT{k + 1:05d}.dcm"
            ds.save_as(str(tmp / name), enforce_file_format=True)
            files.append(out_dir / name)
    logger.info("wrote %d CT slice(s) to %s: series %s%s", n, out_dir, series_uid,
                f", on the grid of reference series {ref.uid}" if on_grid else "")
    return CtSeriesExport(folder=out_dir, series_uid=series_uid, frame_of_reference_uid=str(base.FrameOfReferenceUID),
                          study_uid=str(base.StudyInstanceUID), files=files, clipped=clipped, on_reference_grid=on_grid,
                          notes=notes)
