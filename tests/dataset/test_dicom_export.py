"""CT volume → DICOM CT series (``write_ct_series``, ``autotrans_nifti2dicom``) and back (``autotrans_dicom2nifti``).

The real CT crop (pelvis_ct.nii.gz, integer HU) is written as a series that joins the shipped PET series' patient,
study and Frame of Reference (its grid differs: fine), read back, and compared voxel for voxel; the PET series'
own grid checks the "on the reference grid" path. ``dciodvfy`` (Debian's dicom3tools) validates one file when
it is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.cli import dicom2nifti, nifti2dicom
from autotrans.dataset.dicom import convert_series
from autotrans.dataset.dicom_export import (CT_IMAGE_STORAGE, DicomExportError, load_reference, same_grid,
                                            write_ct_series)
from autotrans.io import Geometry, read_image
from tests.paths import fixture_file

pydicom = pytest.importorskip("pydicom")

PET_DIR = fixture_file("ccth_a01/pet_dicom")
CT = fixture_file("ccth_a01/pelvis_ct.nii.gz")


def _headers(folder: Path) -> list:
    return [pydicom.dcmread(str(f)) for f in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def pet_reference():
    return load_reference(PET_DIR)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, pet_reference):
    """pelvis_ct.nii.gz as a series in the PET series' study, and its read-back through autotrans_dicom2nifti."""
    tmp = tmp_path_factory.mktemp("sct")
    arr, geometry = read_image(CT)
    out = tmp / "sct"
    result = write_ct_series(arr, out, geometry, reference=PET_DIR, model="Dataset001_X/pix2pix")
    back = tmp / "back.nii.gz"
    assert dicom2nifti.main([str(out), str(back)]) == 0
    return arr, geometry, result, back


def test_round_trip_same_voxels_and_geometry(written) -> None:
    arr, geometry, result, back = written
    assert np.array_equal(arr, np.rint(arr))  # integer HU: the round trip is exact
    arr2, geometry2 = read_image(back)
    assert geometry2.size == geometry.size
    np.testing.assert_allclose(geometry2.spacing, geometry.spacing, atol=1e-4)
    np.testing.assert_allclose(geometry2.origin, geometry.origin, atol=1e-4)
    np.testing.assert_allclose(geometry2.direction, geometry.direction, atol=1e-4)
    np.testing.assert_array_equal(arr2, arr)
    assert result.clipped == 0 and not result.on_reference_grid  # the PET grid is another one


def test_identity_copied_uids_new(written, pet_reference) -> None:
    _, geometry, result, _ = written
    ref = pet_reference.header
    ref_sops = {str(h.SOPInstanceUID) for h in pet_reference.slices}
    headers = _headers(result.folder)
    assert len(headers) == geometry.size[2] == len(result.files)
    sops = [str(h.SOPInstanceUID) for h in headers]
    assert len(set(sops)) == len(sops) and not set(sops) & ref_sops
    for h in headers:
        assert h.SeriesInstanceUID == result.series_uid != ref.SeriesInstanceUID
        assert h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID
        assert h.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert h.SOPClassUID == h.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert h.FrameOfReferenceUID == ref.FrameOfReferenceUID
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                   "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
            assert h.get(kw) == ref.get(kw), kw
        assert list(h.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert h.Modality == "CT" and h.Manufacturer == "autotrans" and h.SoftwareVersions.startswith("autotrans")
        assert (float(h.RescaleSlope), float(h.RescaleIntercept), h.RescaleType) == (1.0, 0.0, "HU")
        assert (h.BitsAllocated, h.BitsStored, h.PixelRepresentation) == (16, 16, 1)
        assert (float(h.WindowCenter), float(h.WindowWidth)) == (40.0, 400.0)
        assert h.SeriesDescription == "autotrans synthetic CT (Dataset001_X/pix2pix)"
        assert "Synthetic CT" in h.DerivationDescription and ref.SeriesInstanceUID in h.DerivationDescription
    assert [int(h.InstanceNumber) for h in headers] == list(range(1, len(headers) + 1))
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    np.testing.assert_allclose(np.diff(z), 3.0, atol=1e-6)
    assert float(headers[0].SliceThickness) == float(headers[0].SpacingBetweenSlices) == 3.0


def test_on_the_reference_grid_reuses_its_positions(tmp_path: Path, pet_reference) -> None:
    """A volume on the source series' grid (a prediction) gets the source's position strings, slice by slice."""
    nifti = tmp_path / "pet.nii.gz"
    convert_series(PET_DIR, nifti)
    arr, geometry = read_image(nifti)
    assert pet_reference.geometry is not None and same_grid(pet_reference.geometry, geometry)
    hu = np.clip(arr / 10.0, -1000, 3000)  # any values: the grid is what is checked
    result = write_ct_series(hu, tmp_path / "sct", geometry, reference=pet_reference)
    assert result.on_reference_grid
    for h, src in zip(_headers(result.folder), pet_reference.slices):
        assert list(h.ImagePositionPatient) == list(src.ImagePositionPatient)
        assert list(h.ImageOrientationPatient) == list(src.ImageOrientationPatient)
        assert h.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    back = tmp_path / "back.nii.gz"
    convert_series(result.folder, back)
    arr2, geometry2 = read_image(back)
    assert geometry.mismatch(geometry2) is None
    np.testing.assert_array_equal(arr2, np.rint(hu))


def test_oblique_and_left_handed_geometry(tmp_path: Path) -> None:
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rng = np.random.default_rng(0)
    arr = rng.integers(-1024, 2000, size=(6, 7, 9)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-123.25, 17.5, 1001.125))
    img.SetDirection(tuple((rz @ rx).ravel()))
    write_ct_series(img, tmp_path / "obl", reference=PET_DIR)
    convert_series(tmp_path / "obl", tmp_path / "obl.nii.gz")
    arr2, g2 = read_image(tmp_path / "obl.nii.gz")
    assert Geometry.from_sitk(img).mismatch(g2, rtol=1e-5, atol=1e-4) is None
    np.testing.assert_array_equal(arr2, arr)

    flip = sitk.GetImageFromArray(arr)  # slice axis -z: left-handed, written with its slices reversed
    flip.SetSpacing((1.0, 1.0, 2.0))
    flip.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    write_ct_series(flip, tmp_path / "lh", reference=PET_DIR)
    convert_series(tmp_path / "lh", tmp_path / "lh.nii.gz")
    arr3, g3 = read_image(tmp_path / "lh.nii.gz")
    np.testing.assert_array_equal(arr3, arr[::-1])
    np.testing.assert_allclose(g3.origin, (0.0, 0.0, -2.0 * (arr.shape[0] - 1)), atol=1e-6)
    np.testing.assert_allclose(g3.direction, (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-9)


def test_out_of_range_values_clipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arr = np.zeros((3, 4, 5), np.float32)
    arr[0, 0, 0], arr[1, 1, 1], arr[2, 2, 2] = 40000.0, -50000.0, 12.6
    geometry = Geometry((5, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    caplog.set_level("WARNING")
    result = write_ct_series(arr, tmp_path / "s", geometry, reference=PET_DIR)
    assert result.clipped == 2
    assert "2 voxel(s) outside the storable range" in caplog.text
    convert_series(tmp_path / "s", tmp_path / "s.nii.gz")
    back, _ = read_image(tmp_path / "s.nii.gz")
    assert (back[0, 0, 0], back[1, 1, 1], back[2, 2, 2]) == (32767, -32768, 13)
    arr[0, 0, 0] = np.nan
    with pytest.raises(DicomExportError, match="1 voxel"):
        write_ct_series(arr, tmp_path / "nan", geometry)
    assert not (tmp_path / "nan").exists()


def test_no_reference_anonymous_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, pet_reference) -> None:
    arr = np.full((2, 3, 4), -1000, np.int16)
    geometry = Geometry((4, 3, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    caplog.set_level("WARNING")
    result = write_ct_series(arr, tmp_path / "anon", geometry)
    assert "no reference series" in caplog.text
    h = _headers(result.folder)[0]
    assert h.PatientID == "ANONYMOUS" and str(h.PatientName).startswith("ANONYMOUS")
    assert h.FrameOfReferenceUID != pet_reference.header.FrameOfReferenceUID
    assert h.StudyInstanceUID == result.study_uid != pet_reference.header.StudyInstanceUID
    new = write_ct_series(arr, tmp_path / "newframe", geometry, reference=pet_reference, new_frame=True)
    assert new.frame_of_reference_uid != pet_reference.header.FrameOfReferenceUID
    assert new.study_uid == pet_reference.header.StudyInstanceUID


def test_atomic_write_leaves_nothing_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.zeros((5, 4, 3), np.int16)
    geometry = Geometry((3, 4, 5), (1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = tmp_path / "series"
    out.mkdir()
    (out / "old.dcm").write_text("the previous series")
    real, calls = pydicom.dataset.Dataset.save_as, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", failing)
    with pytest.raises(OSError):
        write_ct_series(arr, out, geometry, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no temporary sibling left
    assert [p.name for p in out.iterdir()] == ["old.dcm"]  # the previous content untouched
    with pytest.raises(Exception, match="already exists and is not empty"):
        write_ct_series(arr, out, geometry)
    monkeypatch.undo()
    with pytest.raises(DicomExportError, match="2D array"):
        write_ct_series(arr[0], tmp_path / "flat", geometry)


def test_cli_writes_series_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert nifti2dicom.main([str(CT), str(out), "-ref", str(PET_DIR), "--model", "m1", "--series_number", "77"]) == 0
    h = _headers(out)[0]
    assert h.SeriesNumber == 77 and h.SeriesDescription == "autotrans synthetic CT (m1)"
    assert nifti2dicom.main([str(CT), str(out)]) == 1  # non-empty without --overwrite

    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    not_dicom = tmp_path / "notdicom"
    not_dicom.mkdir()
    (not_dicom / "readme.txt").write_text("hello")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))
    capsys.readouterr()
    for argv, text in (([str(garbage), str(tmp_path / "a")], "garbage.nii.gz"),
                       ([str(CT), str(tmp_path / "b"), "-ref", str(not_dicom)], "no DICOM image series"),
                       ([str(flat), str(tmp_path / "c")], "2D image, expected 3D"),
                       ([str(CT), str(tmp_path / "d"), "-ref", str(tmp_path / "missing")], "folder not found")):
        assert nifti2dicom.main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("autotrans_nifti2dicom: error: ") and text in err[0], err
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_dciodvfy_finds_no_errors(written) -> None:
    """Debian's DICOM validator (dicom3tools) on one written file: warnings allowed, no "Error" line."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not on PATH (apt-get install dicom3tools)")
    result = written[2]
    proc = subprocess.run(["dciodvfy", str(result.files[len(result.files) // 2])], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LC_ALL": "C"})
    report = (proc.stdout + proc.stderr).splitlines()
    assert any("CTImage" in line for line in report), report  # it recognised the IOD
    errors = [line for line in report if line.startswith("Error")]
    assert not errors, "\n".join(report)
