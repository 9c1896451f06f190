"""Planning, preprocessing and dataset commands on bad or changed input: one clear line, exit 1, nothing lost.

Every test is named after the symptom it guards against. Data: the bundled demo datasets (``petct_demo``,
``brain_demo``) and tiny synthetic volumes / DICOM series written here.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.cli import convert as convert_cli
from autotrans.cli import dicom2nifti as dicom_cli
from autotrans.cli import simulate_cbct as cbct_cli
from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess, main_plan_experiment
from autotrans.errors import ConfigurationError
from autotrans.io import read_image
from autotrans.planning.planner import PlannerOptions, check_upsampling, validate_options
from autotrans.preprocessing.store import PreprocessedCase, case_ids
from autotrans.utils.files import load_json
from tests.conftest import write_dataset_json, write_volume

DEMO_CT = "CCTH-A01-slab0"


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if ": error:" in line]


def _tiny_dataset(raw: Path, shape: tuple[int, int, int], dataset_id: int = 20, ct_to_pet: bool = False,
                  ct_offset: float = 0.0, pet_scale: float = 1.0) -> Path:
    """Two cases of ``shape`` voxels at 1 mm: MR->MR, or CT->PET with the given unit mistakes."""
    folder = raw / f"Dataset{dataset_id:03d}_Tiny"
    if ct_to_pet:
        write_dataset_json(folder, source_channels={"0": {"name": "CT", "modality": "CT"}},
                           target={"name": "PET", "modality": "PET"}, numTraining=2)
    else:
        write_dataset_json(folder, numTraining=2)
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        if ct_to_pet:
            src = np.full(shape, -1000.0, np.float32)
            src[1:-1, 1:-1, 1:-1] = rng.normal(40.0, 20.0, tuple(s - 2 for s in shape))
            tgt = np.zeros(shape, np.float32)
            tgt[1:-1, 1:-1, 1:-1] = rng.uniform(0.5, 3.0, tuple(s - 2 for s in shape))
            src, tgt = src + ct_offset, tgt * pet_scale
        else:
            src = (rng.random(shape) * 100 + 10).astype(np.float32)
            tgt = (rng.random(shape) * 100 + 10).astype(np.float32)
        write_volume(folder / "imagesTr" / f"{case}_0000.nii.gz", src.astype(np.float32))
        write_volume(folder / "targetsTr" / f"{case}.nii.gz", tgt.astype(np.float32))
    return folder


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder nobody may create files in. Root ignores permission bits, so for root the OS's answer
    (PermissionError naming the path) is emulated at the calls that create files and folders."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        deny = folder.resolve()

        def inside(p: object) -> bool:
            return p is not None and Path(str(p)).resolve().is_relative_to(deny)

        def guard(fn, creates_path: bool):
            def wrapper(*args, **kwargs):
                if creates_path:  # os.mkdir(path): an existing folder still answers "exists"
                    target = Path(args[0] if args else kwargs["path"])
                    if inside(target.parent) and not target.exists():
                        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
                elif inside(kwargs.get("dir")):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(kwargs["dir"]))
                return fn(*args, **kwargs)
            return wrapper

        for name in ("mkstemp", "mkdtemp", "TemporaryFile"):
            monkeypatch.setattr(tempfile, name, guard(getattr(tempfile, name), False))
        monkeypatch.setattr(os, "mkdir", guard(os.mkdir, True))
    yield folder
    folder.chmod(0o755)


# ------------------------------------------------------------------------------------------------ item 2


def test_changed_raw_target_is_preprocessed_again_although_the_plan_is_unchanged(petct_demo: Path, roots, caplog):
    caplog.set_level(logging.INFO)
    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0
    assert "do not look like" not in caplog.text  # real CT in HU and PET in SUV: no unit warning
    data = roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET" / "autotransPlans_3d_fullres"
    plans_before = (data.parent / "autotransPlans.json").read_text()
    before = PreprocessedCase(data, "CCTH-A01-slab1").load("target")
    stamps = {c: (data / f"{c}.json").stat().st_mtime_ns for c in case_ids(data)}
    # flip one target left-right: same size, same intensity statistics, so the plan cannot change
    f = petct_demo / "targetsTr" / "CCTH-A01-slab1.nii.gz"
    img = sitk.ReadImage(str(f))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, :, ::-1].copy())
    flipped.CopyInformation(img)
    sitk.WriteImage(flipped, str(f))
    caplog.clear()
    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0
    assert json.loads((data.parent / "autotransPlans.json").read_text())["configurations"] == \
        json.loads(plans_before)["configurations"]
    assert "2 of 3 cases already preprocessed" in caplog.text and "redoing: CCTH-A01-slab1" in caplog.text
    after = PreprocessedCase(data, "CCTH-A01-slab1")
    assert not np.array_equal(after.load("target"), before)
    assert after.properties["input_sha1"] == load_json(data.parent / "dataset_fingerprint.json")["case_signatures"]["CCTH-A01-slab1"]
    assert {c: (data / f"{c}.json").stat().st_mtime_ns for c in ("CCTH-A01-slab0", "CCTH-A01-slab2")} == \
        {c: stamps[c] for c in ("CCTH-A01-slab0", "CCTH-A01-slab2")}


# ------------------------------------------------------------------------------------------------ item 4

def _write_series(folder: Path, n: int, step: float, drop: range = range(0)) -> None:
    """A CT series of ``n`` axial slices ``step`` mm apart (slice i holds i * 10 + the rescale intercept),
    slices ``drop`` left out."""
    pydicom = pytest.importorskip("pydicom", reason="pydicom writes the synthetic DICOM series")
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    for i in range(n):
        if i in drop:
            continue
        ds = base.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series, generate_uid(), i + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, 10.0 + i * step]
        ds.SliceLocation = 10.0 + i * step
        ds.PixelData = np.full((128, 128), i * 10, dtype=np.int16).tobytes()
        ds.save_as(str(folder / f"slice{i:03d}.dcm"))


def test_dicom_series_with_missing_slices_is_refused_not_given_a_wrong_uniform_spacing(tmp_path, capsys, caplog):
    complete, gappy = tmp_path / "complete", tmp_path / "gappy"
    _write_series(complete, 12, 3.27)
    _write_series(gappy, 30, 3.27, drop=range(10, 20))
    assert dicom_cli.main([str(complete), str(tmp_path / "complete.nii.gz")]) == 0
    assert read_image(tmp_path / "complete.nii.gz")[1].spacing[2] == pytest.approx(3.27, abs=1e-4)
    out = tmp_path / "gappy.nii.gz"
    capsys.readouterr()
    assert dicom_cli.main([str(gappy), str(out)]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "10 slice(s) missing between 39.43 and 75.40 mm" in err[0]
    assert "slice indices 10..19" in err[0] and "--allow_gaps" in err[0]
    assert not out.exists()
    # --allow_gaps: the uniform 3.27 mm grid, the gap filled by linear interpolation, and a warning saying so
    caplog.set_level(logging.WARNING)
    assert dicom_cli.main([str(gappy), str(out), "--allow_gaps"]) == 0
    arr, geo = read_image(out)
    assert geo.size[2] == 30 and geo.spacing[2] == pytest.approx(3.27, abs=1e-4)
    assert geo.origin == pytest.approx((-100.0, -100.0, 10.0))
    ramp = arr[:, 0, 0] - arr[0, 0, 0]
    np.testing.assert_allclose(ramp, np.arange(30) * 10.0, atol=1e-3)
    assert "linear interpolation" in caplog.text and "10 slice(s) missing" in caplog.text


# ------------------------------------------------------------------------------------------------ item 7


@pytest.mark.parametrize("flags, words", [
    (["-gpu_memory_target", "-5"], "-gpu_memory_target -5: must be a positive"),
    (["-gpu_memory_target", "0"], "-gpu_memory_target 0: must be a positive"),
    (["--overwrite_target_spacing", "0", "0", "0"], "--overwrite_target_spacing 0 0 0: needs three positive"),
    (["--overwrite_target_spacing", "-1", "1", "1"], "--overwrite_target_spacing -1 1 1: needs three positive"),
    (["--ct_window", "100", "-100"], "--ct_window 100 -100"),
    (["--pet_ceiling", "0"], "--pet_ceiling 0: must be a positive"),
    (["-np", "0"], "-np 0: needs at least 1"),
])
def test_bad_planner_flags_give_one_line_instead_of_endless_loop_or_traceback(brain_demo, roots, capsys, flags, words):
    assert main_plan_and_preprocess(["-d", "11", *flags]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and words in err[0]
    assert not (roots["autotrans_preprocessed"] / "Dataset011_DemoT2toFLAIR").exists()  # checked before any work
    if flags[0] != "-np":
        assert main_plan_experiment(["-d", "11", *flags]) == 1
        assert words in capsys.readouterr().err


def test_absurd_target_spacing_is_refused_and_large_upsampling_warned(roots, capsys, caplog):
    with pytest.raises(ConfigurationError, match="2.16e\\+08x larger"):
        check_upsampling([[41, 62, 79]], [[41 * 600, 62 * 600, 79 * 600]], np.array([0.01] * 3), np.array([6.0] * 3))
    caplog.set_level(logging.WARNING)
    assert check_upsampling([[41, 62, 79]], [[123, 186, 237]], np.array([2.0] * 3), np.array([6.0] * 3)) == 27.0
    assert "27x larger than the raw ones" in caplog.text
    with pytest.raises(ConfigurationError, match="gpu_memory_target nan"):
        validate_options(PlannerOptions(gpu_memory_target_gb=float("nan")))
    # end to end: 0.01 mm on 1 mm data is refused with one line, before any planning work
    _tiny_dataset(roots["autotrans_raw"], (8, 8, 8))
    assert main_plan_and_preprocess(["-d", "20", "-np", "1", "--no_pp", "--overwrite_target_spacing",
                                     "0.01", "0.01", "0.01"]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "at most 1000x is accepted" in err[0]
    assert not (roots["autotrans_preprocessed"] / "Dataset020_Tiny" / "autotransPlans.json").exists()


# ------------------------------------------------------------------------------------------------ item 8


def test_convert_and_simulate_cbct_refuse_a_dataset_id_another_dataset_uses(brain_demo, roots, tmp_path, capsys):
    src = tmp_path / "brats" / "BraTS2021_00002"
    vol = np.zeros((10, 12, 14), np.float32)
    vol[2:8, 3:9, 3:11] = 50
    for key in ("t2", "flair"):
        write_volume(src / f"BraTS2021_00002_{key}.nii.gz", vol)
    assert convert_cli.main(["brats", str(src.parent), "-d", "11"]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "dataset id 11 is already used by" in err[0] and "Dataset011_DemoT2toFLAIR" in err[0]
    ct = tmp_path / "ct.nii.gz"
    write_volume(ct, np.full((2, 16, 16), -1000, np.float32))
    assert cbct_cli.main([str(ct), "-d", "11", "--n-projections", "8"]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "Dataset011_DemoT2toFLAIR" in err[0]
    assert sorted(p.name for p in roots["autotrans_raw"].iterdir()) == ["Dataset011_DemoT2toFLAIR"]
    assert convert_cli.main(["brats", str(src.parent), "-d", "13"]) == 0  # a free id still converts


# ------------------------------------------------------------------------------------------------ item 9


def test_tiny_images_are_refused_at_planning_instead_of_crashing_training(roots, capsys):
    from autotrans.networks import build_planned_unet
    from autotrans.planning.plans import Plans
    import torch

    _tiny_dataset(roots["autotrans_raw"], (6, 5, 4))
    assert main_plan_and_preprocess(["-d", "20", "-np", "1"]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "6 x 5 x 4 voxels" in err[0] and "smallest supported image is 8x8x8 voxels" in err[0]
    pre = roots["autotrans_preprocessed"] / "Dataset020_Tiny"
    assert not (pre / "autotransPlans.json").exists()
    # the smallest supported size plans a U-Net with a pooling step that builds and runs
    shutil.rmtree(roots["autotrans_raw"] / "Dataset020_Tiny")
    _tiny_dataset(roots["autotrans_raw"], (8, 8, 8))
    assert main_plan_and_preprocess(["-d", "20", "-np", "1", "--no_pp", "--clean"]) == 0
    cfg = Plans.load(pre / "autotransPlans.json").configuration("3d_fullres")
    assert cfg.architecture["arch_kwargs"]["n_stages"] >= 2
    net = build_planned_unet(cfg.architecture, 1, 1)
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 1, *cfg.patch_size)).shape) == (1, 1, *cfg.patch_size)


# ------------------------------------------------------------------------------------------------ item 10


def test_configuration_generated_by_an_earlier_plan_is_not_kept_as_a_user_configuration(roots, caplog):
    _tiny_dataset(roots["autotrans_raw"], (8, 8, 8))
    assert main_plan_and_preprocess(["-d", "20", "-np", "1", "--no_pp"]) == 0
    plans_file = roots["autotrans_preprocessed"] / "Dataset020_Tiny" / "autotransPlans.json"
    plans = load_json(plans_file)
    assert plans["generated_configurations"] == ["3d_fullres"]
    # an earlier plan generated 3d_lowres (e.g. with a smaller -gpu_memory_target); the user added their own
    for legacy in (False, True):
        lowres = dict(plans["configurations"]["3d_fullres"], data_identifier="autotransPlans_3d_lowres")
        plans["configurations"]["3d_lowres"] = lowres
        plans["configurations"]["mine"] = {"inherits_from": "3d_fullres", "batch_size": 4}
        plans["generated_configurations"] = ["3d_fullres", "3d_lowres"]
        if legacy:  # plans written before the list existed: 3d_lowres still counts as generated
            del plans["generated_configurations"]
        plans_file.write_text(json.dumps(plans))
        caplog.clear()
        caplog.set_level(logging.INFO)
        assert main_plan_experiment(["-d", "20"]) == 0
        plans = load_json(plans_file)
        assert set(plans["configurations"]) == {"3d_fullres", "mine"}, legacy
        assert plans["generated_configurations"] == ["3d_fullres"]
        assert "dropped configuration '3d_lowres'" in caplog.text and "kept user configuration 'mine'" in caplog.text


# ------------------------------------------------------------------------------------------------ item 13


def test_read_only_output_folders_give_one_line_for_plan_convert_dicom2nifti_simulate_cbct(
        petct_demo, roots, tmp_path, read_only, monkeypatch, capsys):
    ct = petct_demo / "imagesTr" / f"{DEMO_CT}_0000.nii.gz"
    series = tmp_path / "series"
    _write_series(series, 4, 2.0)
    src = tmp_path / "brats" / "BraTS2021_00002"
    for key in ("t2", "flair"):
        write_volume(src / f"BraTS2021_00002_{key}.nii.gz", np.ones((4, 5, 6), np.float32))
    runs = [
        (dicom_cli.main, [str(series), str(read_only / "ct.nii.gz")], None),
        (cbct_cli.main, [str(ct), "-o", str(read_only / "cbct.nii.gz"), "--n-projections", "8"], None),
        (cbct_cli.main, [str(ct), "-d", "40", "--n-projections", "8"], "autotrans_raw"),
        (convert_cli.main, ["brats", str(src.parent), "-d", "41"], "autotrans_raw"),
        (main_plan_and_preprocess, ["-d", "12", "-np", "1"], "autotrans_preprocessed"),
    ]
    for main, argv, root in runs:
        with monkeypatch.context() as m:
            if root == "autotrans_raw":
                m.setenv("autotrans_raw", str(read_only))
            elif root == "autotrans_preprocessed":
                m.setenv("autotrans_preprocessed", str(read_only))
            assert main(argv) == 1, argv
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and str(read_only) in err[0], (argv, err)
        assert "Permission denied" in err[0] or "Read-only" in err[0]
    assert list(read_only.iterdir()) == []


def test_disk_full_during_preprocess_gives_one_line_and_keeps_finished_cases(roots, monkeypatch, capsys):
    import blosc2

    from autotrans.preprocessing import store

    _tiny_dataset(roots["autotrans_raw"], (8, 8, 8))
    _tiny_dataset(roots["autotrans_raw"], (8, 8, 8), dataset_id=21)
    real = blosc2.asarray

    def full_at_case_b(arr, urlpath=None, **kw):  # what blosc2 raises when the disk is full
        if urlpath is not None and Path(urlpath).name.startswith(".b_"):
            raise RuntimeError("Error while creating the NDArray")
        return real(arr, urlpath=urlpath, **kw)

    monkeypatch.setattr(blosc2, "asarray", full_at_case_b)
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9, free=0))
    for dataset, n in (("20", "1"), ("21", "2")):  # in this process, and in worker processes
        assert main_plan_and_preprocess(["-d", dataset, "-np", n]) == 1
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and "No space left on device" in err[0] and "b_source.b2nd" in err[0], err
        data = roots["autotrans_preprocessed"] / f"Dataset0{dataset}_Tiny" / "autotransPlans_3d_fullres"
        assert not [p.name for p in data.iterdir() if p.name.startswith(".")]  # no temporaries left
        assert "b" not in case_ids(data)
    assert case_ids(roots["autotrans_preprocessed"] / "Dataset020_Tiny" / "autotransPlans_3d_fullres") == ["a"]


def test_simulate_cbct_refuses_nan_ct_naming_the_case(petct_demo, roots, tmp_path, capsys):
    ct, _ = read_image(petct_demo / "imagesTr" / f"{DEMO_CT}_0000.nii.gz")
    bad = tmp_path / "patient7.mha"
    ct = ct[:2, :16, :16].copy()
    ct[1, 3, 4] = np.nan
    write_volume(bad, ct)
    for argv in ([str(bad), "-o", str(tmp_path / "out.nii.gz")], [str(bad), "-d", "42"]):
        assert cbct_cli.main([*argv, "--n-projections", "8"]) == 1
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and "patient7" in err[0] and "1 NaN" in err[0], err
    assert not (tmp_path / "out.nii.gz").exists()
    assert not any(p.name.startswith("Dataset042") for p in roots["autotrans_raw"].iterdir())


# ------------------------------------------------------------------------------------------------ item 17


def test_ct_not_in_hu_and_pet_in_bq_per_ml_are_warned_at_planning_and_in_simulate_cbct(roots, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    _tiny_dataset(roots["autotrans_raw"], (8, 8, 8), ct_to_pet=True, ct_offset=1024.0, pet_scale=4000.0)
    assert main_plan_and_preprocess(["-d", "20", "-np", "1", "--no_pp"]) == 0
    assert "source channel 0000 (CT, CT): 2 of 2 case(s) (a, b): CT values" in caplog.text
    assert "do not look like HU" in caplog.text
    assert "target (PET, PET): 2 of 2 case(s) (a, b): PET foreground median" in caplog.text
    assert "do not look like SUV" in caplog.text
    caplog.clear()
    ct = np.full((2, 16, 16), 24.0, np.float32)  # 0..4095 scanner values: air is 24, not -1000
    ct[:, 4:12, 4:12] = 1064.0
    write_volume(tmp_path / "raw_ct.mha", ct)
    assert cbct_cli.main([str(tmp_path / "raw_ct.mha"), "-o", str(tmp_path / "c.mha"), "--n-projections", "8"]) == 0
    assert "raw_ct" in caplog.text and "do not look like HU" in caplog.text
