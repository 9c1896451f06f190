"""DICOM in and out for ``autotrans_predict``: ``-i`` may hold DICOM series, ``--dicom_out`` writes sCT series.

The prediction itself stays the NIfTI chain: each DICOM case is converted (``convert_series``: slice checks,
geometry from GDCM) to ``{CASE}_0000.nii.gz`` in a hidden temporary folder inside ``-o`` (named like our other
temporaries, so a killed run's leftover is cleaned by the next), predicted into ``-o`` as usual, and each
prediction (on its input's grid) is then written as a CT series under ``DIR/{CASE}/`` that joins its source
series' patient, study and Frame of Reference (``autotrans.dataset.dicom_export``).

Layouts of ``-i`` taken as DICOM (only when it holds no image in the raw naming): DICOM files directly in it
(one case named after the folder; its largest series unless several are meant) or one subfolder of DICOM files
per case (named after the subfolder). A DICOM file is recognised by its ``DICM`` preamble or a ``.dcm`` name.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from autotrans.errors import AutotransError, ConfigurationError, DatasetError
from autotrans.io import SUPPORTED_ENDINGS
from autotrans.utils.files import ensure_writable_dir, is_hidden, load_json

if TYPE_CHECKING:
    from autotrans.inference.models import ModelSpec

logger = logging.getLogger(__name__)

#: name of the converted inputs; predictions come out as ``{CASE}.nii.gz`` in ``-o``
CONVERTED_ENDING = ".nii.gz"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble; older ones are recognised by ``.dcm``."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _is_image(path: Path) -> bool:
    return any(path.name.lower().endswith(e) for e in SUPPORTED_ENDINGS)


def _holds_dicom(folder: Path) -> bool:
    return any(f.is_file() and not is_hidden(f) and is_dicom_file(f) for f in folder.iterdir())


@dataclass(frozen=True)
class DicomCase:
    """One case of a DICOM ``-i``: its name in the prediction folder and the folder of its series."""

    case_id: str
    folder: Path


def find_dicom_cases(in_dir: Path) -> list[DicomCase] | None:
    """The DICOM cases of ``in_dir``, or None when it is not a DICOM input (raw-named images, nothing DICOM)."""
    if not in_dir.is_dir():
        return None
    entries = [e for e in sorted(in_dir.iterdir()) if not is_hidden(e)]
    files = [e for e in entries if e.is_file()]
    if any(_is_image(f) for f in files):
        return None
    if any(is_dicom_file(f) for f in files):
        return [DicomCase(_case_name(in_dir.resolve().name), in_dir)]
    cases = [DicomCase(_case_name(d.name), d) for d in entries if d.is_dir() and _holds_dicom(d)]
    if not cases:
        return None
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise ConfigurationError(f"{in_dir}: case folders {seen[c.case_id].name!r} and {c.folder.name!r} give the "
                                     f"same case name {c.case_id!r}; rename one")
        seen[c.case_id] = c.folder
    return cases


def _case_name(name: str) -> str:
    """A folder name usable in ``{CASE}_0000.nii.gz`` and as an output folder name."""
    return _UNSAFE.sub("_", name).strip("._") or "case"


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


@dataclass
class PredictionInput:
    """``-i`` as the prediction sees it: the folder itself, or its DICOM cases converted to NIfTI."""

    in_dir: Path
    cases: list[DicomCase] | None
    dicom_out: Path | None
    series_uids: dict[str, str] = field(default_factory=dict)

    @property
    def is_dicom(self) -> bool:
        return self.cases is not None

    @contextmanager
    def prepared(self, out_dir: Path, spec: "ModelSpec") -> Iterator[Path]:
        """The folder to predict from: ``-i``, or a temporary folder of converted DICOM cases (removed after)."""
        if self.cases is None:
            yield self.in_dir
            return
        check_model_for_dicom(spec, self.dicom_out is not None)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".dicom_inputs.at{os.getpid()}.", dir=out_dir))
        try:
            self._convert(tmp)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _convert(self, tmp: Path) -> None:
        from autotrans.dataset.dicom import convert_series

        problems: list[tuple[str, str]] = []
        assert self.cases is not None
        for case in self.cases:
            try:
                result = convert_series(case.folder, tmp / f"{case.case_id}_0000{CONVERTED_ENDING}")
            except AutotransError as e:
                problems.append((case.case_id, str(e)))
                continue
            self.series_uids[case.case_id] = result.series.uid
            logger.info("%s: DICOM series %s of %s converted for prediction", case.case_id, result.series.uid,
                        case.folder)
        if problems:
            raise DatasetError(problems, header="DICOM input cases that cannot be converted")

    def write_dicom(self, out_dir: Path, spec: "ModelSpec", case_ids: list[str],
                    keep_existing: bool = False) -> list[str]:
        """Each prediction ``{CASE}.nii.gz`` of ``out_dir`` as a CT series in ``dicom_out/{CASE}``; returns the
        cases written. ``keep_existing`` (``--continue_prediction``) leaves a case's existing series alone."""
        if self.dicom_out is None or self.cases is None:
            return []
        from autotrans.dataset.dicom_export import load_reference, write_ct_series
        from autotrans.io import read_image

        folders = {c.case_id: c.folder for c in self.cases}
        model = f"{spec.dataset}/{spec.model}"
        details = f"Model folder {spec.dataset}/{spec.folder.name}."
        written, problems = [], []
        for case_id in case_ids:
            dest = self.dicom_out / case_id
            if keep_existing and dest.is_dir() and any(dest.iterdir()):
                logger.info("%s: DICOM series already in %s, kept (--continue_prediction)", case_id, dest)
                continue
            try:
                arr, geometry = read_image(out_dir / f"{case_id}{CONVERTED_ENDING}")
                reference = load_reference(folders[case_id], self.series_uids.get(case_id))
                write_ct_series(arr, dest, geometry, reference=reference, model=model, details=details,
                                overwrite=True)
            except (AutotransError, OSError) as e:
                problems.append((case_id, f"DICOM export failed: {e}"))
                continue
            written.append(case_id)
        if problems:
            raise DatasetError(problems, header="DICOM export failures",
                               summary=f"{len(problems)} case(s) predicted but not written as DICOM "
                                       f"(their NIfTI predictions are in {out_dir}):")
        return written


def open_prediction_input(in_dir: Path, dicom_out: str | os.PathLike | None) -> PredictionInput:
    """Look at ``-i`` (cheap: a folder listing) and check ``--dicom_out`` before any model is loaded.

    Raises:
        ConfigurationError: ``--dicom_out`` without DICOM input, or inside the input folder.
    """
    cases = find_dicom_cases(in_dir)
    out = Path(dicom_out) if dicom_out is not None else None
    if out is not None:
        if cases is None:
            raise ConfigurationError(f"--dicom_out needs DICOM input: {in_dir} holds no DICOM series (give a folder "
                                     "of DICOM files, or one subfolder of DICOM files per case)")
        if _inside(out, in_dir):
            raise ConfigurationError(f"--dicom_out {out} lies in the input folder {in_dir}; choose another folder")
        ensure_writable_dir(out, "--dicom_out")
    if cases is not None:
        logger.info("DICOM input: %d case(s) in %s (%s)", len(cases), in_dir, ", ".join(c.case_id for c in cases[:10]))
    return PredictionInput(in_dir=in_dir, cases=cases, dicom_out=out)


def check_model_for_dicom(spec: "ModelSpec", writes_dicom: bool) -> None:
    """DICOM cases give one series each: the model must take one source channel, and write CT for --dicom_out."""
    try:
        ds: Any = load_json(spec.folder / "dataset.json")
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"{spec.folder}: dataset.json unreadable ({e})") from None
    channels = len(ds.get("source_channels") or {}) or 1
    if channels != 1:
        raise ConfigurationError(f"{spec.folder.name}: the model takes {channels} source channels, a DICOM input "
                                 "gives one series per case; convert the series with autotrans_dicom2nifti instead")
    target = ds.get("target") or {}
    modality = str(target.get("modality") or target.get("name") or "").upper()
    if writes_dicom and modality != "CT":
        raise ConfigurationError(f"--dicom_out writes CT Image Storage series, but {spec.dataset}/{spec.folder.name} "
                                 f"predicts {modality or 'an unknown modality'}")
