"""Segmentation consistency: HD95/Dice definitions by hand, and the pipeline with a tiny nnU-Net v2 model.

The model is trained here (one epoch of a few iterations, a 3-stage U-Net with 8-32 features on 32^3 patches)
on labels derived from the bundled CT crops (soft tissue: HU > -300, bone: HU > 200). It need not be good: the
tests check the plumbing (identical volumes agree exactly, a simulated CBCT agrees less, outputs, caching).
nnU-Net reads its paths from environment variables at import time, so training runs in a subprocess.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autotrans.errors import ConfigurationError
from autotrans.evaluation.segmentation import (NnUNetSegmenter, consistency, hd95, make_segmenter,
                                               segmentation_aggregates)
from tests.paths import fixture_file

pytest.importorskip("nnunetv2")

TRAIN_SCRIPT = r"""
import json, os, sys
from pathlib import Path
import numpy as np
import SimpleITK as sitk

fixtures, iters = Path(sys.argv[1]), int(sys.argv[2])
raw = Path(os.environ["nnUNet_raw"]) / "Dataset901_TinyCT"
(raw / "imagesTr").mkdir(parents=True); (raw / "labelsTr").mkdir()
for name in ("pelvis", "column"):
    img = sitk.ReadImage(str(fixtures / f"{name}_ct.nii.gz"))
    a = sitk.GetArrayFromImage(img)
    lab = sitk.GetImageFromArray(np.where(a > 200, 2, np.where(a > -300, 1, 0)).astype(np.uint8))
    lab.CopyInformation(img)
    sitk.WriteImage(img, str(raw / "imagesTr" / f"{name}_0000.nii.gz"))
    sitk.WriteImage(lab, str(raw / "labelsTr" / f"{name}.nii.gz"))
(raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "numTraining": 2,
    "labels": {"background": 0, "soft_tissue": 1, "bone": 2}, "file_ending": ".nii.gz"}))
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
extract_fingerprints([901], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
plan_experiments([901])
pre = Path(os.environ["nnUNet_preprocessed"]) / "Dataset901_TinyCT"
plans = json.loads((pre / "nnUNetPlans.json").read_text())
cfg = plans["configurations"]["3d_fullres"]
arch = cfg["architecture"]["arch_kwargs"]
cfg["patch_size"], cfg["batch_size"] = [32, 32, 32], 2
arch.update(n_stages=3, features_per_stage=[8, 16, 32], kernel_sizes=[[3, 3, 3]] * 3,
            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])
(pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
preprocess([901], configurations=("3d_fullres",), num_processes=(1,))
os.environ["nnUNet_n_proc_DA"] = "0"  # augment in this process (planning needs >= 1)
import torch
from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import nnUNetTrainer_1epoch
plans["continue_training"] = False  # nnU-Net's run_training puts this in; the trainer pops it
trainer = nnUNetTrainer_1epoch(plans, "3d_fullres", "all", json.loads((pre / "dataset.json").read_text()),
                               device=torch.device("cpu"))
trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = iters, 1
trainer.run_training()
"""
ITERATIONS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results folder of a tiny nnU-Net v2 model (plans.json, dataset.json, fold_all/checkpoint_final.pth)."""
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"), nnUNet_n_proc_DA="1", nnUNet_compile="f", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(fixture_file("ccth_a01")), str(ITERATIONS)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = root / "res" / "Dataset901_TinyCT" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"
    assert (folder / "fold_all" / "checkpoint_final.pth").is_file()
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """REF: two CT crops; PRED ``same``: copies; PRED ``cbct``: simulated CBCTs of them (a degraded "sCT")."""
    from autotrans.dataset.cbct import case_rng, simulate_cbct
    from autotrans.io import read_image, write_image

    root = tmp_path_factory.mktemp("cases")
    dirs = {k: root / k for k in ("ref", "same", "cbct")}
    for d in dirs.values():
        d.mkdir()
    crops = {"pelvis": (slice(8, 32), slice(8, 64), slice(16, 80)),
             "column": (slice(30, 62), slice(0, 40), slice(0, 40))}
    for case, crop in crops.items():
        ct, geo = read_image(fixture_file(f"ccth_a01/{case}_ct.nii.gz"))
        ct = np.ascontiguousarray(ct[crop])
        geo = replace(geo, size=ct.shape[::-1])  # the origin shift of the crop does not matter here
        write_image(ct, geo, dirs["ref"] / f"{case}.nii.gz")
        shutil.copy(dirs["ref"] / f"{case}.nii.gz", dirs["same"] / f"{case}.nii.gz")
        write_image(simulate_cbct(ct, geo.spacing_zyx, case_rng(0, case)), geo, dirs["cbct"] / f"{case}.nii.gz")
    return dirs


def _fast(model: Path) -> NnUNetSegmenter:
    return NnUNetSegmenter(model, device="cpu", use_mirroring=False, tile_step_size=1.0, modality="CT")


# ------------------------------------------------------------------------------------------- definitions


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """Independent reference: boundary by explicit 6-neighbour test, all pairwise distances."""
    def surface_points(m: np.ndarray) -> np.ndarray:
        p = np.pad(m, 1)
        inner = p[1:-1, 1:-1, 1:-1]
        full = np.ones_like(m)
        for ax in range(3):
            for s in (-1, 1):
                full &= np.roll(p, s, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(inner & ~full) * np.asarray(spacing_zyx)

    pa, pb = surface_points(a), surface_points(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


def test_hd95_hand_cases() -> None:
    a, b = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    a[5, 5, 5], b[5, 5, 9] = True, True  # single voxels 4 apart along x (2 mm)
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(8.0)
    a[:], b[:] = False, False
    a[3], b[7] = True, True  # parallel plates 4 slices apart (3 mm): every distance is 12 mm
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(12.0)
    assert hd95(a, a, (3.0, 1.0, 1.0)) == 0.0
    a, b = np.zeros((20, 20, 26), bool), np.zeros((20, 20, 26), bool)
    a[5:15, 5:15, 5:15], b[5:15, 5:15, 8:18] = True, True  # cubes offset by 3 voxels along x
    sp = (1.5, 1.0, 2.0)
    got = hd95(a, b, sp)
    assert got == pytest.approx(_brute_hd95(a, b, sp))
    assert 0 < got <= 3 * 2.0  # never more than the offset


def test_consistency_empty_cases_and_dice() -> None:
    ref = np.zeros((8, 8, 8), np.int32)
    pred = np.zeros_like(ref)
    ref[1:5, 1:5, 1:5], pred[1:5, 1:5, 2:6] = 1, 1  # overlap 4*4*3 of 64 each
    ref[6, 6, 6] = 2  # label 2 only in REF, label 3 nowhere
    res = consistency(ref, pred, (1.0, 1.0, 1.0), {1: "a", 2: "b", 3: "c"})
    assert res["a"]["dice"] == pytest.approx(2 * 48 / 128) and res["a"]["hd95"] == pytest.approx(1.0)
    assert res["b"]["dice"] == 0.0 and math.isnan(res["b"]["hd95"]) and res["b"]["note"] == "absent in prediction"
    assert math.isnan(res["c"]["dice"]) and res["c"]["note"] == "absent in both"


# ------------------------------------------------------------------------------------------- pipeline


def test_identical_degraded_outputs_and_cache(model: Path, folders: dict[str, Path], tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from autotrans.evaluation.folders import evaluate_folders

    seg = _fast(model)
    assert seg.labels == {1: "soft_tissue", 2: "bone"} and seg.folds == ["all"]
    out = tmp_path / "same.json"
    res = evaluate_folders(folders["ref"], folders["same"], modality="CT", out_json=out, segmenter=seg)
    section = res["segmentation"]
    assert set(section) == {"version", "segmenter", "labels", "label_maps", "cases", "case_mean", "aggregate",
                            "mean_over_labels", "overall"}
    for case, labels in section["cases"].items():
        assert set(labels) == {"soft_tissue", "bone"}
        present = [r for r in labels.values() if r["ref_voxels"] > 0]
        assert present, f"{case}: the model found no label at all"
        for row in present:
            assert row["dice"] == 1.0 and row["hd95"] == 0.0
    agg = section["aggregate"]["soft_tissue"]
    assert set(agg) == {"dice", "hd95", "n_absent_in_one", "n_absent_in_both"} and agg["dice"]["n"] == 2
    ref_maps = Path(section["label_maps"]["reference"])
    assert sorted(p.name for p in ref_maps.glob("*.nii.gz")) == ["column.nii.gz", "pelvis.nii.gz"]
    assert (Path(section["label_maps"]["prediction"]) / "pelvis.nii.gz").is_file()
    stamp = (ref_maps / "pelvis.nii.gz").stat().st_mtime_ns

    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-6:] == ["seg_dice_soft_tissue", "seg_hd95_soft_tissue", "seg_dice_bone", "seg_hd95_bone",
                            "seg_dice_mean", "seg_hd95_mean"] and len(rows) == 3
    saved = json.loads(out.read_text())
    assert saved["segmentation"]["cases"]["pelvis"]["bone"].keys() == {"dice", "hd95", "ref_voxels", "pred_voxels",
                                                                        "note"}

    caplog.set_level(logging.INFO, logger="autotrans.evaluation.segmentation")
    out2 = tmp_path / "cbct.json"
    res2 = evaluate_folders(folders["ref"], folders["cbct"], modality="CT", out_json=out2, segmenter=seg)
    assert (ref_maps / "pelvis.nii.gz").stat().st_mtime_ns == stamp  # cached reference reused
    assert sum("reusing cached reference" in r.message for r in caplog.records) == 2
    assert res2["segmentation"]["label_maps"]["reference"] == str(ref_maps)
    assert res2["segmentation"]["overall"]["dice"]["mean"] < 1.0

    summary = segmentation_aggregates(out2)
    assert summary is not None and set(summary) == {"segmenter", "labels", "mean_over_labels", "overall"}
    assert summary["mean_over_labels"]["dice"] == pytest.approx(
        np.nanmean([summary["labels"][n]["dice"]["mean"] for n in ("soft_tissue", "bone")]))
    assert segmentation_aggregates({"cases": {}}) is None


# ------------------------------------------------------------------------------------------- errors


def _fake_model(root: Path, channels: dict[str, str]) -> Path:
    root.mkdir()
    (root / "plans.json").write_text("{}")
    (root / "dataset.json").write_text(json.dumps({"channel_names": channels, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "x": 1}}))
    (root / "fold_0").mkdir()
    (root / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return root


def _one_line(excinfo: pytest.ExceptionInfo[ConfigurationError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_errors_are_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError) as e:
        make_segmenter(str(tmp_path / "nope"))
    assert "no such folder" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError) as e:
        make_segmenter(str(tmp_path / "empty"))
    assert "not an nnU-Net v2 results folder" in _one_line(e)
    multi = _fake_model(tmp_path / "multi", {"0": "T1", "1": "T2"})
    with pytest.raises(ConfigurationError) as e:
        make_segmenter(str(multi))
    assert "2 input channels" in _one_line(e)
    single = _fake_model(tmp_path / "single", {"0": "T1"})
    with pytest.raises(ConfigurationError) as e:
        make_segmenter(str(single), folds=["3"])
    assert "fold(s) 3" in _one_line(e) and "available: 0" in str(e.value)
    caplog.set_level(logging.WARNING)
    make_segmenter(str(single), modality="CT")  # a T1 model asked to judge sCTs: allowed, with a warning
    assert any("does not look like CT" in r.message for r in caplog.records)
    if importlib.util.find_spec("totalsegmentator") is None:  # the only TotalSegmentator check possible offline
        with pytest.raises(ConfigurationError) as e:
            make_segmenter("totalsegmentator:total")
        assert "pip install TotalSegmentator" in _one_line(e)


def test_cli_reports_segmenter_errors(tmp_path: Path, folders: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from autotrans.cli.evaluate import main

    rc = main(["-ref", str(folders["ref"]), "-pred", str(folders["same"]), "-modality", "CT",
               "--segmenter", str(tmp_path / "missing"), "-o", str(tmp_path / "e.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no such folder" in err[0]
    assert not (tmp_path / "e.json").exists()


def test_cli_segmenter_end_to_end(model: Path, folders: dict[str, Path], tmp_path: Path) -> None:
    from autotrans.cli.evaluate import main

    out = tmp_path / "cli.json"
    rc = main(["-ref", str(folders["ref"] / "column.nii.gz"), "-pred", str(folders["cbct"] / "column.nii.gz"),
               "-modality", "CT", "--segmenter", str(model), "--segmenter_folds", "all",
               "--segmenter_no_mirroring", "-o", str(out)])
    assert rc == 0
    section = json.loads(out.read_text())["segmentation"]
    assert section["segmenter"]["folds"] == ["all"] and section["segmenter"]["mirroring"] is False
    assert list(section["cases"]) == ["column"]
    with open(out.with_suffix(".csv"), newline="") as f:
        header = next(csv.reader(f))
    assert "seg_dice_bone" in header and "seg_hd95_soft_tissue" in header


def test_benchmark_segmentation_section(model: Path, cbct_roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``autotrans_benchmark --segmenter``: every model (here the two baselines) gets segmentation.json with
    rankable per-case metrics, the reference segmentations are made once and shared, the report has its section."""
    import json

    from autotrans.cli.benchmark import main as benchmark_main
    from tests.benchmark.conftest import TINY_PLAN

    out = cbct_roots / "bench"
    argv = ["-d", "31", "-m", "identity", "intensity_map", "-f", "0", "1", "-device", "cpu", *TINY_PLAN,
            "--disable_tta", "--segmenter", str(model), "-o", str(out)]
    with caplog.at_level(logging.INFO, logger="autotrans"):
        assert benchmark_main(argv) == 0
    task = out / "tasks" / "Dataset031_SimCBCTPelvis" / "identity__autotransPlans__3d_fullres" / "fold_0"
    assert json.loads((task / "result.json").read_text())["segmentation"] == "segmentation.json"
    seg = json.loads((task / "segmentation.json").read_text())
    (case,) = seg["cases"]
    assert {"seg_dice_mean", "seg_hd95_mean"} <= set(seg["cases"][case])
    refs = list((out / "segmentation" / "Dataset031_SimCBCTPelvis").glob("segmentations/*/reference/*.nii.gz"))
    assert len(refs) == 2  # one per case, made by the first model and reused by the second
    assert caplog.text.count("reusing cached reference segmentation") == 2
    report = (out / "report.md").read_text()
    assert "Segmentation consistency" in report and "mean Dice ↑" in report
