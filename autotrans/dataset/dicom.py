"""DICOM series → NIfTI/MHA with correct geometry, and PET activity (Bq/ml) → SUVbw from the DICOM tags.

Pixel data and geometry come from SimpleITK/GDCM, which sorts slices along the normal and applies each
slice's rescale slope; the PET dose/time tags live in nested sequences that SimpleITK does not expose, so
pydicom reads the headers (``stop_before_pixels``, cheap) for ``--suv``.

SUVbw = C(t) [Bq/ml] × weight [g] / (injected dose [Bq] × 2^(−Δt / T½)), where Δt runs from the
radiopharmaceutical start to the time the image values refer to, given by DecayCorrection (0054,1102):

- ``START``: values are decay-corrected to the series start → Δt = series date/time − injection. If the
  series time is later than the earliest acquisition time (series re-created by post-processing), the
  earliest acquisition time is used instead, as the QIBA/UW SUV reference implementation does.
- ``ADMIN``: already decay-corrected to the administration time → no decay factor.
- ``NONE``: not decay-corrected → each slice uses its own acquisition date/time.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.errors import AutotransError
from autotrans.io import Geometry, file_ending, write_image
from autotrans.utils.lazy import LazyModule

sitk = LazyModule("SimpleITK")

logger = logging.getLogger(__name__)


class DicomError(AutotransError):
    """A DICOM folder cannot be converted as asked (no series, unreadable, missing SUV tags...)."""


@dataclass(frozen=True)
class DicomSeries:
    uid: str
    files: tuple[Path, ...]
    modality: str
    description: str

    def summary(self) -> str:
        return f"{self.uid} ({len(self.files)} files, {self.modality or '?'} '{self.description}')"


@dataclass
class DicomConversion:
    """What ``convert_series`` did: the series used, the ones passed over, and the SUV factors applied."""

    series: DicomSeries
    others: list[DicomSeries]
    geometry: Geometry
    suv_factors: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def list_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """All image series GDCM finds directly in ``folder``, largest (most files) first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: folder not found")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    out: list[DicomSeries] = []
    for uid in ids:
        files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        try:
            reader.ReadImageInformation()
            modality, desc = _tag(reader, "0008|0060"), _tag(reader, "0008|103e")
        except RuntimeError:
            modality, desc = "", ""
        out.append(DicomSeries(uid=uid, files=files, modality=modality, description=desc))
    out.sort(key=lambda s: (-len(s.files), s.uid))
    return out


def choose_series(folder: str | os.PathLike, uid: str | None = None) -> tuple[DicomSeries, list[DicomSeries]]:
    """Pick series ``uid`` or else the largest; return it and the others (which the caller lists)."""
    series = list_series(folder)
    if not series:
        raise DicomError(f"{folder}: no DICOM image series found")
    if uid is not None:
        match = [s for s in series if s.uid == uid]
        if not match:
            raise DicomError(f"{folder}: no series {uid} (found: {'; '.join(s.summary() for s in series)})")
        return match[0], [s for s in series if s.uid != uid]
    if len(series) > 1 and len(series[0].files) == len(series[1].files):
        logger.warning("%s: several series of %d files; taking %s", folder, len(series[0].files), series[0].uid)
    return series[0], series[1:]


def read_series(series: DicomSeries) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's own "non uniform sampling" note: checked by us
    try:
        return reader.Execute()
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else "reader error"
        raise DicomError(f"series {series.uid}: unreadable ({last})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)


# ------------------------------------------------------------------------------- slice positions

#: relative deviation of one slice step from the series' nominal step that counts as irregular
SPACING_RTOL = 0.05
#: absolute tolerance (mm) for rounded positions in the headers
SPACING_ATOL = 0.01


@dataclass(frozen=True)
class SliceLayout:
    """Where the slices of a single-frame series lie along the slice normal.

    ``files`` and ``positions`` (mm along ``normal``, from the ImagePositionPatient of each file) are sorted
    along the normal; ``step`` is the nominal (median) distance of neighbouring slices.
    """

    files: tuple[Path, ...]
    positions: np.ndarray
    normal: np.ndarray
    row: np.ndarray
    col: np.ndarray
    step: float

    def irregularities(self) -> list[str]:
        """One phrase per gap (missing slices) or irregular step, in mm and slice indices of the uniform grid."""
        out = []
        p, step = self.positions, self.step
        tol = max(SPACING_RTOL * step, SPACING_ATOL)
        for i, d in enumerate(np.diff(p)):
            if abs(d - step) <= tol:
                continue
            k0 = int(round((p[i] - p[0]) / step))
            if d > step + tol and abs(d / step - round(d / step)) * step <= tol:
                missing = int(round(d / step)) - 1
                out.append(f"{missing} slice(s) missing between {p[i]:.2f} and {p[i + 1]:.2f} mm "
                           f"(slice indices {k0 + 1}..{k0 + missing} of the {step:.4g} mm grid)")
            else:
                out.append(f"irregular slice step {d:.4g} mm between {p[i]:.2f} and {p[i + 1]:.2f} mm "
                           f"(after slice {i} of {len(p)}; nominal step {step:.4g} mm)")
        return out


def slice_layout(series: DicomSeries) -> SliceLayout | None:
    """Slice positions along the normal from each file's header; None when they cannot be checked (a single
    slice, multi-frame files, missing ImagePositionPatient/ImageOrientationPatient)."""
    if len(series.files) < 3:
        return None
    positions, orientation = [], None
    for f in series.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None
        ipp, iop = _tag(reader, "0020|0032"), _tag(reader, "0020|0037")
        frames = _tag(reader, "0028|0008")
        if not ipp or not iop or (frames and frames.strip() not in ("", "1")):
            return None
        try:
            pos = np.array([float(v) for v in ipp.split("\\")], dtype=float)
            ori = np.array([float(v) for v in iop.split("\\")], dtype=float)
        except ValueError:
            return None
        if pos.shape != (3,) or ori.shape != (6,):
            return None
        if orientation is None:
            orientation = ori
        elif not np.allclose(ori, orientation, atol=1e-4):
            raise DicomError(f"series {series.uid}: slices with different ImageOrientationPatient ({f.name}); "
                             "not one volume")
        positions.append(pos)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    along = np.array([float(np.dot(p, normal)) for p in positions])
    order = np.argsort(along, kind="stable")
    along = along[order]
    files = tuple(series.files[i] for i in order)
    d = np.diff(along)
    dup = np.flatnonzero(d <= SPACING_ATOL)
    if dup.size:
        i = int(dup[0])
        raise DicomError(f"series {series.uid}: {files[i].name} and {files[i + 1].name} lie at the same position "
                         f"{along[i]:.2f} mm along the slice normal (duplicated slices or several volumes in one "
                         "series); pick the files of one volume")
    return SliceLayout(files=files, positions=along, normal=normal, row=row, col=col, step=float(np.median(d)))


def resample_uniform(arr: np.ndarray, layout: SliceLayout) -> tuple[np.ndarray, float]:
    """``arr`` (slices in ``layout`` order) on a uniform grid from the first to the last slice, missing slices
    filled by linear interpolation between their neighbours along the normal; returns it and its step."""
    p = layout.positions - layout.positions[0]
    n = int(round(p[-1] / layout.step)) + 1
    step = float(p[-1] / (n - 1))
    t = np.arange(n) * step
    i = np.clip(np.searchsorted(p, t, side="right") - 1, 0, len(p) - 2)
    w = ((t - p[i]) / (p[i + 1] - p[i])).astype(np.float32)
    a = arr.astype(np.float32, copy=False)
    out = (1.0 - w)[:, None, None] * a[i] + w[:, None, None] * a[i + 1]
    return out.astype(np.float32), step


# ---------------------------------------------------------------------------------------- SUV


def _parse_da(text: str) -> date:
    text = text.strip()
    return date(int(text[0:4]), int(text[4:6]), int(text[6:8]))


def _parse_tm(text: str) -> timedelta:
    """DICOM TM ``HHMMSS.FFFFFF`` (minutes/seconds optional; old ``HH:MM:SS`` tolerated) as time of day."""
    text = text.strip().replace(":", "")
    frac = 0.0
    if "." in text:
        text, f = text.split(".", 1)
        frac = float("0." + f) if f else 0.0
    hh = int(text[0:2])
    mm = int(text[2:4]) if len(text) >= 4 else 0
    ss = int(text[4:6]) if len(text) >= 6 else 0
    return timedelta(hours=hh, minutes=mm, seconds=ss + frac)


def _parse_dt(text: str) -> datetime:
    """DICOM DT ``YYYYMMDDHHMMSS.FFFFFF`` (a UTC offset suffix is ignored: all times share one clock)."""
    text = text.strip()
    for sep in ("+", "-"):
        if sep in text[8:]:
            text = text[: 8 + text[8:].index(sep)]
    d = _parse_da(text[:8])
    return datetime.combine(d, datetime.min.time()) + (_parse_tm(text[8:]) if len(text) > 8 else timedelta())


def _need(ds: Any, keyword: str, tag: str, where: str) -> Any:
    value = getattr(ds, keyword, None) if ds is not None else None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DicomError(f"{where}: cannot compute SUVbw: DICOM tag {keyword} ({tag}) is missing or empty")
    return value


def suv_factors(headers: list[Any], where: str = "series") -> tuple[np.ndarray, list[str]]:
    """Per-slice factors turning Bq/ml into SUVbw, from pydicom headers in slice order; plus notes.

    Raises:
        DicomError: not PET, units other than BQML (or GML), or any needed tag missing/implausible.
    """
    if not headers:
        raise DicomError(f"{where}: no DICOM headers")
    ds = headers[0]
    notes: list[str] = []
    modality = str(getattr(ds, "Modality", "")).strip()
    if modality != "PT":
        raise DicomError(f"{where}: --suv needs a PET series (Modality PT), this one is {modality or 'unknown'}")
    units = str(_need(ds, "Units", "0054,1001", where)).strip().upper()
    if units == "GML":
        notes.append("Units GML: values are already SUVbw, left unchanged")
        return np.ones(len(headers)), notes
    if units != "BQML":
        raise DicomError(f"{where}: cannot compute SUVbw from Units {units!r} (needs BQML activity concentration)")
    weight_kg = float(_need(ds, "PatientWeight", "0010,1030", where))
    if not weight_kg > 0:
        raise DicomError(f"{where}: cannot compute SUVbw: PatientWeight (0010,1030) is {weight_kg}")
    seq = _need(ds, "RadiopharmaceuticalInformationSequence", "0054,0016", where)
    if len(seq) == 0:
        raise DicomError(f"{where}: cannot compute SUVbw: RadiopharmaceuticalInformationSequence (0054,0016) is empty")
    rph = seq[0]
    dose = float(_need(rph, "RadionuclideTotalDose", "0018,1074", where))
    half_life = float(_need(rph, "RadionuclideHalfLife", "0018,1075", where))
    if not (dose > 0 and half_life > 0):
        raise DicomError(f"{where}: cannot compute SUVbw: injected dose {dose} Bq / half-life {half_life} s not positive")
    series_date = _parse_da(str(_need(ds, "SeriesDate", "0008,0021", where)))
    if getattr(rph, "RadiopharmaceuticalStartDateTime", None):
        injection = _parse_dt(str(rph.RadiopharmaceuticalStartDateTime))
    else:
        start_tm = _parse_tm(str(_need(rph, "RadiopharmaceuticalStartTime", "0018,1072", where)))
        injection = datetime.combine(series_date, datetime.min.time()) + start_tm
    basis = str(_need(ds, "DecayCorrection", "0054,1102", where)).strip().upper()

    def acquisition(h: Any) -> datetime:
        d = _parse_da(str(getattr(h, "AcquisitionDate", "") or series_date.strftime("%Y%m%d")))
        return datetime.combine(d, datetime.min.time()) + _parse_tm(str(_need(h, "AcquisitionTime", "0008,0032", where)))

    def decay(t: datetime) -> float:
        dt = (t - injection).total_seconds()
        if dt < 0 and injection.date() == t.date() and not getattr(rph, "RadiopharmaceuticalStartDateTime", None):
            dt += 86400.0  # injection before midnight, scan after: only a time was recorded
            notes.append("injection time later than scan time on the same date: assumed injection the day before")
        if dt < 0:
            raise DicomError(f"{where}: cannot compute SUVbw: scan time {t} precedes injection {injection}")
        return 2.0 ** (-dt / half_life)

    weight_g = weight_kg * 1000.0
    if basis == "ADMIN":
        notes.append("DecayCorrection ADMIN: no decay factor")
        return np.full(len(headers), weight_g / dose), notes
    if basis == "NONE":
        notes.append("DecayCorrection NONE: decay from injection to each slice's acquisition time")
        return np.array([weight_g / (dose * decay(acquisition(h))) for h in headers]), notes
    if basis != "START":
        raise DicomError(f"{where}: cannot compute SUVbw: unknown DecayCorrection {basis!r} (START, ADMIN or NONE)")
    scan = datetime.combine(series_date, datetime.min.time()) + _parse_tm(str(_need(ds, "SeriesTime", "0008,0031", where)))
    try:
        earliest = min(acquisition(h) for h in headers)
    except DicomError:
        earliest = scan
    if earliest < scan:
        notes.append(f"series time {scan.time()} after earliest acquisition {earliest.time()}: using the latter")
        scan = earliest
    factor = weight_g / (dose * decay(scan))
    notes.append(
        f"SUVbw factor {factor:.6g} (weight {weight_kg:g} kg, dose {dose / 1e6:.6g} MBq at {injection.time()}, "
        f"reference {scan.time()}, half-life {half_life:g} s)"
    )
    return np.full(len(headers), factor), notes


def read_headers(files: tuple[Path, ...]) -> list[Any]:
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is an install requirement
        raise DicomError("--suv needs pydicom (pip install pydicom)") from None
    out = []
    for f in files:
        try:
            out.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as e:  # pydicom raises several unrelated types for corrupt files
            raise DicomError(f"{f}: unreadable DICOM header ({e})") from None
    return out


def convert_series(
    folder: str | os.PathLike, out: str | os.PathLike, suv: bool = False, series_uid: str | None = None,
    allow_gaps: bool = False,
) -> DicomConversion:
    """Convert one series of ``folder`` (the largest unless ``series_uid``) to ``out`` (.nii.gz/.mha/...).

    The slice positions along the slice normal are checked first: a series with missing slices or irregular
    steps would get one wrong uniform spacing (ITK averages over the gap), so it is refused, naming the gap in
    mm and slice indices, unless ``allow_gaps``: then it is resampled onto a uniform grid at the series' own
    step, the gap filled by linear interpolation across it, and a warning says so.
    """
    folder, out = Path(folder), Path(out)
    try:
        file_ending(out)
    except AutotransError as e:
        raise DicomError(str(e)) from None
    series, others = choose_series(folder, series_uid)
    for o in others:
        logger.info("other series in %s (not converted): %s", folder, o.summary())
    in_series = {f.resolve() for s in [series, *others] for f in s.files}
    stray = [p for p in sorted(folder.iterdir()) if p.is_file() and p.resolve() not in in_series]
    if stray:
        logger.info("%s: %d file(s) in no image series, ignored (e.g. %s)", folder, len(stray), stray[0].name)
    layout = slice_layout(series)
    gaps = layout.irregularities() if layout is not None else []
    if gaps:
        where = f"{folder} series {series.uid}"
        if not allow_gaps:
            raise DicomError(f"{where}: {'; '.join(gaps)}; a uniform spacing would be wrong (pass --allow_gaps to "
                             "resample onto a uniform grid, interpolating linearly across the gap)")
        series = DicomSeries(uid=series.uid, files=layout.files, modality=series.modality,
                             description=series.description)  # read in the order of the positions
    img = read_series(series)
    geometry = Geometry.from_sitk(img)
    arr = sitk.GetArrayFromImage(img)
    result = DicomConversion(series=series, others=others, geometry=geometry)
    if suv:
        factors, notes = suv_factors(read_headers(series.files), where=f"{folder} series {series.uid}")
        if len(factors) != arr.shape[0] and np.allclose(factors, factors[0]):
            factors = np.full(arr.shape[0], factors[0])  # multi-frame file: one header, one factor
        if len(factors) != arr.shape[0]:
            raise DicomError(f"{folder}: {len(factors)} headers for {arr.shape[0]} slices; cannot apply SUV per slice")
        arr = arr.astype(np.float32) * factors.astype(np.float32)[:, None, None]
        if not math.isfinite(float(arr.max(initial=0.0))):
            raise DicomError(f"{folder}: SUV conversion produced non-finite values")
        result.suv_factors, result.notes = factors, notes
        for n in notes:
            logger.info("%s", n)
    if gaps:
        assert layout is not None
        arr, step = resample_uniform(arr, layout)
        direction = np.stack([layout.row, layout.col, layout.normal], axis=1)  # columns: x, y, z axes
        first = _position(layout.files[0])
        geometry = Geometry(size=(geometry.size[0], geometry.size[1], int(arr.shape[0])),
                            spacing=(geometry.spacing[0], geometry.spacing[1], step),
                            origin=tuple(float(v) for v in first), direction=tuple(float(v) for v in direction.ravel()))
        result.geometry = geometry
        note = (f"{'; '.join(gaps)}: resampled onto a uniform {step:.4g} mm grid of {arr.shape[0]} slices, the gap "
                "filled by linear interpolation across it (those slices were not measured)")
        result.notes.append(note)
        logger.warning("%s: %s", folder, note)
    write_image(arr, geometry, out)
    return result


def _position(f: Path) -> np.ndarray:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(f))
    reader.ReadImageInformation()
    return np.array([float(v) for v in _tag(reader, "0020|0032").split("\\")])
