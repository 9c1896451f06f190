"""Every bad input gives one clear line naming the case, a non-zero exit, and nothing in autotrans_preprocessed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
from tests.conftest import write_volume

CASE = "MS-patient07"
OTHER = "TCGA-DU-7294"
THIRD = "TCGA-FG-6692"


def _run(capsys: pytest.CaptureFixture, roots: dict[str, Path]) -> tuple[int, list[str]]:
    rc = main_plan_and_preprocess(["-d", "11", "-np", "1"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("autotrans_plan_and_preprocess: error:")]
    assert list(roots["autotrans_preprocessed"].iterdir()) == [], "nothing may be written on bad input"
    return rc, err


def _rewrite(path: Path, fn) -> None:
    img = sitk.ReadImage(str(path))
    new = fn(img)
    sitk.WriteImage(new, str(path))


def _problem_lines(err: list[str]) -> list[str]:
    return [l for l in err if "problem(s) found" not in l]


def test_geometry_mismatch(brain_demo: Path, roots, capsys) -> None:
    def shift(img):
        img.SetOrigin(tuple(o + 5.0 for o in img.GetOrigin()))
        return img
    _rewrite(brain_demo / "targetsTr" / f"{CASE}.nii.gz", shift)
    rc, err = _run(capsys, roots)
    lines = _problem_lines(err)
    assert rc == 1 and len(lines) == 1
    assert CASE in lines[0] and "geometry mismatch" in lines[0] and "origin" in lines[0]


def test_nan_and_inf(brain_demo: Path, roots, capsys) -> None:
    def poison(img):
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        a[5, 5, 5] = np.nan
        a[6, 6, 6] = np.inf
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(img)
        return out
    _rewrite(brain_demo / "imagesTr" / f"{CASE}_0000.nii.gz", poison)
    rc, err = _run(capsys, roots)
    lines = _problem_lines(err)
    assert rc == 1 and len(lines) == 1
    assert CASE in lines[0] and "1 NaN and 1 Inf" in lines[0]


def test_wrong_dimensionality(brain_demo: Path, roots, capsys) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 10), np.float32)), str(brain_demo / "targetsTr" / f"{CASE}.nii.gz"))
    four_d = sitk.GetImageFromArray(np.zeros((2, 4, 5, 6), np.float32), isVector=False)
    sitk.WriteImage(four_d, str(brain_demo / "imagesTr" / f"{OTHER}_0000.nii.gz"))
    vector = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32))  # 3D, 3 components per voxel
    sitk.WriteImage(vector, str(brain_demo / "targetsTr" / f"{THIRD}.nii.gz"))
    rc, err = _run(capsys, roots)
    lines = _problem_lines(err)
    assert rc == 1
    assert any(CASE in l and "2D image, expected 3D" in l for l in lines)
    assert any(OTHER in l and "4D image, expected 3D" in l for l in lines)
    assert any(THIRD in l and "3 components per voxel" in l for l in lines)


def test_missing_pair_and_missing_channel(brain_demo: Path, roots, capsys) -> None:
    (brain_demo / "targetsTr" / f"{CASE}.nii.gz").unlink()
    (brain_demo / "imagesTr" / f"{OTHER}_0000.nii.gz").unlink()
    rc, err = _run(capsys, roots)
    lines = _problem_lines(err)
    assert rc == 1
    assert any(CASE in l and "no target" in l for l in lines)
    assert any(OTHER in l and "no source" in l for l in lines)


def test_unreadable_file(brain_demo: Path, roots, capsys) -> None:
    (brain_demo / "imagesTr" / f"{CASE}_0000.nii.gz").write_bytes(b"\x1f\x8bgarbage")
    rc, err = _run(capsys, roots)
    lines = _problem_lines(err)
    assert rc == 1 and any(CASE in l and "unreadable" in l for l in lines)


def test_unknown_modality(brain_demo: Path, roots, capsys) -> None:
    dj = json.loads((brain_demo / "dataset.json").read_text())
    dj["target"]["modality"] = "XRAY"
    (brain_demo / "dataset.json").write_text(json.dumps(dj))
    rc, err = _run(capsys, roots)
    assert rc == 1 and len(err) == 1
    assert "unknown modality 'XRAY'" in err[0] and "CT, CBCT, MR, PET" in err[0]


def test_mask_not_binary_and_empty(brain_demo: Path, roots, capsys) -> None:
    def twos(img):
        a = sitk.GetArrayFromImage(img)
        a[a > 0] = 2
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(img)
        return out

    def empty(img):
        out = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
        out.CopyInformation(img)
        return out
    _rewrite(brain_demo / "masksTr" / f"{CASE}.nii.gz", twos)
    _rewrite(brain_demo / "masksTr" / f"{OTHER}.nii.gz", empty)
    rc, err = _run(capsys, roots)
    lines = _problem_lines(err)
    assert rc == 1 and len(lines) == 2  # every problem of every case, reported together
    assert any(CASE in l and "mask is not binary" in l for l in lines)
    assert any(OTHER in l and "mask is empty" in l for l in lines)


def test_unset_root_is_one_line(monkeypatch, capsys) -> None:
    for v in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
        monkeypatch.delenv(v, raising=False)
    rc = main_plan_and_preprocess(["-d", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "export autotrans_raw=" in err[0]


def test_unknown_dataset(roots, capsys) -> None:
    rc = main_plan_and_preprocess(["-d", "42"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "dataset '42' not found" in err[0]


def test_wrong_file_ending_named(brain_demo: Path, roots, capsys) -> None:
    write_volume(brain_demo / "imagesTr" / "extra_0000.mha", np.zeros((4, 4, 4), np.float32))
    rc, err = _run(capsys, roots)
    assert rc == 1 and any("extra_0000.mha" in l and "expected {CASE}_XXXX.nii.gz" in l for l in err)
