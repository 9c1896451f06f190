"""DICOM → NIfTI and PET SUVbw on real DICOM: the TCIA CCTH-A01 PET series and pydicom's test files.

Ten slices of the PET series (1-001..1-010, byte for byte, with the stray RWV object of another series) and
their reference SUV volume ship in tests/data (see its ATTRIBUTION.md); the whole 234-slice series is checked
too when the full-resolution shared data is present (full_data)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from autotrans.cli import dicom2nifti as cli
from autotrans.dataset.dicom import DicomError, convert_series, list_series, suv_factors
from autotrans.io import read_image

pydicom = pytest.importorskip("pydicom", reason="pydicom is needed for the SUV tags and its test files")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from tests.paths import fixture_file  # noqa: E402

PET_DIR = fixture_file("ccth_a01/pet_dicom")  # slices 1-001..1-010 of the series
PET_REFERENCE = fixture_file("ccth_a01/pet_dicom_suv_reference.nii.gz")  # the same slices of pet_suv_native
N_SLICES = 10
OTHER = "1.2.276.0.7230010.3.1.4.0.7020.1725320646.717921.dcm"  # an RWV object of another series


@pytest.mark.parametrize("series", ["shipped_slices", pytest.param("whole_series", marks=pytest.mark.full_data)])
def test_pet_series_to_suv_matches_reference(tmp_path, caplog, request, series):
    caplog.set_level("INFO")
    if series == "whole_series":  # all 234 slices and the reference on the native grid, from the shared data
        petct = request.getfixturevalue("shared_data") / "petct_tcia_ccth_a01"
        folder, reference, n_slices = petct / "pet_dicom", petct / "pet_suv_native.nii.gz", 234
    else:
        folder, reference, n_slices = PET_DIR, PET_REFERENCE, N_SLICES
    out = tmp_path / "pet_suv.nii.gz"
    assert cli.main([str(folder), str(out), "--suv"]) == 0
    suv, geo = read_image(out)
    ref, ref_geo = read_image(reference)
    assert ref_geo.mismatch(geo) is None
    assert geo.size == (128, 128, n_slices)
    # the reference is rounded to 0.01 SUV
    assert np.abs(suv - ref).max() <= 0.0051
    hot = ref > 1.0
    assert abs(np.median(suv[hot] / ref[hot]) - 1.0) < 1e-3
    assert "0.000255" in caplog.text  # SOURCE.md: Bq/ml x 2.557e-4
    assert OTHER in caplog.text  # the stray file of another series is reported, not read


def test_suv_factor_from_the_tags():
    files = sorted(PET_DIR.glob("1-00*.dcm"))
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    factors, notes = suv_factors(headers)
    expected = 69000.0 / (394.092e6 * 2 ** (-3602.0 / 6588.0))
    np.testing.assert_allclose(factors, expected, rtol=1e-6)


def test_largest_series_chosen_and_others_listed(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in sorted(PET_DIR.glob("1-0*.dcm")):  # the 10 PET slices
        (folder / f.name).symlink_to(f)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    series = list_series(folder)
    assert [len(s.files) for s in series] == [N_SLICES, 1, 1]
    assert series[0].modality == "PT"
    result = convert_series(folder, tmp_path / "pet.mha")
    assert result.series.uid == series[0].uid and len(result.others) == 2
    assert sum(o.uid in caplog.text for o in series[1:]) == 2
    img, geo = read_image(tmp_path / "pet.mha")
    assert geo.size == (128, 128, N_SLICES)
    assert cli.main([str(folder), "--list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_single_ct_slice_geometry_and_values(tmp_path):
    """pydicom's CT_small.dcm: one 128x128 slice; geometry and rescaled values must survive."""
    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    folder = tmp_path / "ct"
    folder.mkdir()
    shutil.copy(src, folder / "ct.dcm")
    assert cli.main([str(folder), str(tmp_path / "ct.nii.gz")]) == 0
    arr, geo = read_image(tmp_path / "ct.nii.gz")
    assert arr.shape == (1, 128, 128)
    np.testing.assert_allclose(geo.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], rtol=1e-5)
    np.testing.assert_allclose(geo.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-3)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(arr[0], expected)


def test_suv_refused_for_ct_and_bad_output(tmp_path, capsys):
    folder = tmp_path / "ct"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    assert cli.main([str(folder), str(tmp_path / "x.nii.gz"), "--suv"]) == 1
    err = capsys.readouterr().err
    assert "PET series" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.nii.gz").exists()
    assert cli.main([str(folder), str(tmp_path / "x.png")]) == 1
    assert "unsupported file ending" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "empty_nonexistent"), str(tmp_path / "x.nii.gz")]) == 1
    assert "not found" in capsys.readouterr().err


def test_missing_weight_refused_with_clear_message(tmp_path, capsys):
    folder = tmp_path / "pet"
    folder.mkdir()
    for f in sorted(PET_DIR.glob("1-00*.dcm")):  # 9 slices are enough
        ds = pydicom.dcmread(str(f))
        del ds.PatientWeight
        ds.save_as(str(folder / f.name))
    assert cli.main([str(folder), str(tmp_path / "x.nii.gz"), "--suv"]) == 1
    err = capsys.readouterr().err.strip()
    assert "PatientWeight (0010,1030)" in err and len(err.splitlines()) == 1
    # without --suv the same series converts fine (Bq/ml)
    assert cli.main([str(folder), str(tmp_path / "bq.nii.gz")]) == 0


def _pet_header(**overrides: object) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.Units, ds.PatientWeight, ds.DecayCorrection = "PT", "BQML", "80", "START"
    ds.SeriesDate, ds.SeriesTime, ds.AcquisitionDate, ds.AcquisitionTime = "20240101", "101000", "20240101", "101000"
    rph = Dataset()
    rph.RadionuclideTotalDose, rph.RadionuclideHalfLife, rph.RadiopharmaceuticalStartTime = "300000000", "6586.2", "090000"
    ds.RadiopharmaceuticalInformationSequence = Sequence([rph])
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds


def test_decay_correction_bases():
    start, _ = suv_factors([_pet_header()])
    np.testing.assert_allclose(start, 80000 / (3e8 * 2 ** (-4200 / 6586.2)), rtol=1e-9)
    admin, _ = suv_factors([_pet_header(DecayCorrection="ADMIN")])
    np.testing.assert_allclose(admin, 80000 / 3e8, rtol=1e-9)
    # NONE: each slice decays to its own acquisition time
    none, _ = suv_factors([_pet_header(DecayCorrection="NONE", AcquisitionTime=t) for t in ("101000", "102000")])
    assert none[1] > none[0]
    np.testing.assert_allclose(none[1] / none[0], 2 ** (600 / 6586.2), rtol=1e-9)
    # series time rewritten after the acquisition: the earliest acquisition time is used
    late, notes = suv_factors([_pet_header(SeriesTime="120000")])
    np.testing.assert_allclose(late, start, rtol=1e-9)
    # already SUV
    gml, _ = suv_factors([_pet_header(Units="GML")])
    assert gml[0] == 1.0
    with pytest.raises(DicomError, match="Units 'CNTS'"):
        suv_factors([_pet_header(Units="CNTS")])
    with pytest.raises(DicomError, match="RadionuclideHalfLife"):
        h = _pet_header()
        del h.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife
        suv_factors([h])
    with pytest.raises(DicomError, match="precedes injection"):
        suv_factors([_pet_header(RadiopharmaceuticalInformationSequence=Sequence([_dt_rph("20240102090000")]))])


def _dt_rph(dt: str) -> Dataset:
    rph = Dataset()
    rph.RadionuclideTotalDose, rph.RadionuclideHalfLife, rph.RadiopharmaceuticalStartDateTime = "3e8", "6586.2", dt
    return rph
