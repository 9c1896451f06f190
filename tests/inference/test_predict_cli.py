"""``autotrans_predict`` end to end: model choice, bad inputs (one clear line each), continue, warnings."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.cli.predict import main
from tests.inference.conftest import smooth_ct
from tests.inference.helpers import make_model


def _case(folder: Path, name: str, arr: np.ndarray | None = None, spacing=(6.0, 6.0, 6.0), ending=".nii.gz") -> Path:
    img = sitk.GetImageFromArray(smooth_ct((20, 30, 28)) if arr is None else arr)
    img.SetSpacing(spacing)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{ending}"
    sitk.WriteImage(img, str(path))
    return path


def _errors(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.fixture
def model(roots: dict[str, Path], cbct_plan: Path) -> Path:
    return make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}, "1": {}})


def test_single_model_is_used_and_named(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _case(tmp_path / "in", "a_0000")
    _case(tmp_path / "in", "b_0000", ending=".mha")
    with caplog.at_level(logging.INFO):  # two cases: background preprocessing and export workers really run
        assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-npp", "2", "-nps", "2"]) == 0
    assert "using the only trained model" in caplog.text and model.name in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.mha", "timings.json"]


def test_continue_prediction_skips_finished_cases(model: Path, tmp_path: Path) -> None:
    _case(tmp_path / "in", "a_0000")
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "in"), "-o", str(out), "-npp", "0", "-nps", "0"]) == 0
    stamp = (out / "a.nii.gz").stat().st_mtime_ns
    assert main(["-i", str(tmp_path / "in"), "-o", str(out), "--continue_prediction", "-npp", "0", "-nps", "0"]) == 0
    assert (out / "a.nii.gz").stat().st_mtime_ns == stamp
    # asking for the uncertainty map makes the case unfinished again
    assert main(["-i", str(tmp_path / "in"), "-o", str(out), "--continue_prediction", "--save_uncertainty"]) == 0
    assert (out / "a_std.nii.gz").is_file()


def test_several_models_listed(model: Path, roots: dict[str, Path], cbct_plan: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_constant", {"0": {"value": 0.1}})
    _case(tmp_path / "in", "a_0000")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 1
    (err,) = _errors(capsys)
    assert "2 trained models" in err and "-m test_identity" in err and "-m test_constant" in err
    assert not (tmp_path / "out").exists()
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "test_constant", "-f", "0"]) == 0


def test_no_model(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _case(tmp_path / "in", "a_0000")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 1
    assert "no trained model" in _errors(capsys)[0]


def test_missing_fold_and_checkpoint(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _case(tmp_path / "in", "a_0000")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-f", "0", "3"]) == 1
    assert "fold(s) 3 have no checkpoint_final.pth" in _errors(capsys)[0]
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-chk", "checkpoint_best.pth"]) == 1
    assert "no fold holds checkpoint_best.pth" in _errors(capsys)[0]
    (model / "fold_1" / "checkpoint_final.pth").write_bytes(b"truncated")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 1
    assert "corrupt or unreadable checkpoint" in _errors(capsys)[0]
    assert not (tmp_path / "out" / "a.nii.gz").exists()


def test_bad_inputs_one_line_each(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["-o", str(tmp_path / "out")]
    (tmp_path / "empty").mkdir()
    assert main(["-i", str(tmp_path / "empty"), *args]) == 1
    assert "holds no cases" in _errors(capsys)[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("ignored with a warning")
    assert main(["-i", str(tmp_path / "in"), *args]) == 1
    assert "holds no cases" in _errors(capsys)[0]
    _case(tmp_path / "in", "a_0001")  # channel 1 for a one-channel model
    _case(tmp_path / "in", "b_0000")
    _case(tmp_path / "in", "c")  # no channel suffix
    assert main(["-i", str(tmp_path / "in"), *args]) == 1
    errs = _errors(capsys)
    assert any("a: channel 0001 but the model takes 1 source channel" in e for e in errs), errs
    assert any("c.nii.gz: not named {CASE}_XXXX" in e for e in errs), errs
    assert not (tmp_path / "out").exists()


def test_channel_geometry_mismatch(roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from autotrans.inference.cases import InputCase, check_headers
    from autotrans.errors import DatasetError

    a = _case(tmp_path / "in", "a_0000")
    b = _case(tmp_path / "in", "a_0001", spacing=(6.0, 6.0, 5.0))
    with pytest.raises(DatasetError, match="channel 0001 geometry differs from channel 0000: spacing"):
        check_headers([InputCase("a", (a, b), ".nii.gz")])


def test_missing_channel_file(roots: dict[str, Path], tmp_path: Path) -> None:
    from autotrans.errors import DatasetError
    from autotrans.inference.cases import discover_inputs

    _case(tmp_path / "in", "a_0000")
    _case(tmp_path / "in", "b_0001")
    with pytest.raises(DatasetError, match="b: missing source channel file"):
        discover_inputs(tmp_path / "in", 2)


def test_unwritable_output(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _case(tmp_path / "in", "a_0000")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["-i", str(tmp_path / "in"), "-o", str(blocker / "out")]) == 1
    assert "is not writable" in _errors(capsys)[0]


def test_ct_in_raw_scanner_values_warns_loudly(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _case(tmp_path / "in", "raw_0000", smooth_ct((20, 30, 28)) + 1024)  # 0..4095-style values
    _case(tmp_path / "in", "hu_0000")
    with caplog.at_level(logging.WARNING):
        assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-npp", "0", "-nps", "0"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "raw: channel 0000 (CBCT)" in warnings[0] and "do not look like HU" in warnings[0]


def test_unreadable_case_fails_after_others_are_written(model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    _case(tmp_path / "in", "good_0000")
    bad = _case(tmp_path / "in", "bad_0000", ending=".mha")
    bad.write_text(bad.read_text(errors="ignore").split("ElementDataFile")[0] + "ElementDataFile = missing.raw\n")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-npp", "0", "-nps", "0"]) == 1
    errs = _errors(capsys)
    assert any("bad:" in e for e in errs), errs
    # nothing half-written
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "timings.json"]
