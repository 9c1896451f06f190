"""``autotrans_predict`` on DICOM input with ``--dicom_out``: the identity test model (CBCT -> CT plan) maps an
input series to a CT series on the input's grid, in the input's study and Frame of Reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotrans.cli import predict
from autotrans.dataset.dicom import convert_series
from autotrans.dataset.dicom_export import load_reference, write_ct_series
from autotrans.inference.dicom_io import find_dicom_cases
from autotrans.io import read_image
from tests.inference.helpers import make_model

pydicom = pytest.importorskip("pydicom")


def test_predict_dicom_in_dicom_out(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path, one_thread: None) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}})
    src = next((cbct_plan.parents[1] / "autotrans_raw" / cbct_plan.name / "imagesTr").glob("*_0000.nii.gz"))
    arr, geometry = read_image(src)
    series_in = write_ct_series(np.rint(arr), tmp_path / "in" / "pat 1", geometry)  # the "scanner" series
    assert [c.case_id for c in find_dicom_cases(tmp_path / "in")] == ["pat_1"]
    assert [c.case_id for c in find_dicom_cases(tmp_path / "in" / "pat 1")] == ["pat_1"]

    out, dcm = tmp_path / "out", tmp_path / "dcm"
    assert predict.main(["-i", str(tmp_path / "in"), "-o", str(out), "--dicom_out", str(dcm), "-device", "cpu",
                         "-npp", "0", "-nps", "0", "--disable_tta"]) == 0
    assert (out / "pat_1.nii.gz").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the converted inputs are gone

    ref = load_reference(series_in.folder)
    sct = load_reference(dcm / "pat_1")
    assert sct.geometry is not None and ref.geometry is not None
    assert sct.geometry.mismatch(ref.geometry, atol=1e-4) is None
    for h, s in zip(sct.slices, ref.slices):
        assert list(h.ImagePositionPatient) == list(s.ImagePositionPatient)  # on the input's grid exactly
        assert h.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
    h = sct.header
    assert h.FrameOfReferenceUID == series_in.frame_of_reference_uid
    assert h.StudyInstanceUID == series_in.study_uid and h.SeriesInstanceUID != series_in.series_uid
    assert "test_identity" in h.SeriesDescription and "Dataset061_InfCBCT" in h.DerivationDescription
    convert_series(dcm / "pat_1", tmp_path / "back.nii.gz")
    y, g = read_image(tmp_path / "back.nii.gz")
    assert g.mismatch(geometry) is None
    body = arr > -500
    np.testing.assert_allclose(y[body], np.clip(np.rint(arr[body]), -1024, 3071), atol=1.0)  # identity, 1 HU steps


def test_dicom_out_refused_for_non_dicom_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a_0000.nii.gz").write_bytes(b"")
    rc = predict.main(["-i", str(inp), "-o", str(tmp_path / "o"), "--dicom_out", str(tmp_path / "d"),
                       "-device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--dicom_out needs DICOM input" in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_dicom_model_checks(tmp_path: Path) -> None:
    """--dicom_out writes CT only; a DICOM case is one series, so a multi-channel model cannot take it."""
    import json
    from types import SimpleNamespace

    from autotrans.errors import ConfigurationError
    from autotrans.inference.dicom_io import check_model_for_dicom

    spec = SimpleNamespace(folder=tmp_path / "m", dataset="Dataset009_X")
    spec.folder.mkdir()

    def dataset(channels: int, target: str) -> None:
        (spec.folder / "dataset.json").write_text(json.dumps({
            "source_channels": {str(i): {"name": "MR"} for i in range(channels)},
            "target": {"name": target, "modality": target}}))

    dataset(1, "MR")
    check_model_for_dicom(spec, writes_dicom=False)  # DICOM in, NIfTI out: any target
    with pytest.raises(ConfigurationError, match="predicts MR"):
        check_model_for_dicom(spec, writes_dicom=True)
    dataset(2, "CT")
    with pytest.raises(ConfigurationError, match="2 source channels"):
        check_model_for_dicom(spec, writes_dicom=True)
