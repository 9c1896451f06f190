"""The U-Net part of the plan equals what nnU-Net v2 (the nnunetv2 package) plans for the same data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is a test dependency: pip install '.[test]'")

from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess  # noqa: E402
from autotrans.dataset.demo import build_brain_demo, build_petct_demo, demo_data_dir  # noqa: E402
from autotrans.dataset.format import DatasetJson  # noqa: E402
from autotrans.planning.planner import PlannerOptions, plan_experiment  # noqa: E402
from autotrans.utils.files import load_json  # noqa: E402
from tests.planning.nnunet_reference import nnunet_plans_for_fingerprint  # noqa: E402

DJ = DatasetJson.from_dict({"name": "P", "source_channels": {"0": {"name": "T2", "modality": "MR"}},
                            "target": {"name": "F", "modality": "MR"}, "file_ending": ".nii.gz"})

# (spacings, shapes_after_crop) in array order (z, y, x); chosen to exercise isotropic, anisotropic
# (few thick slices -> 10th-percentile rule and transposition), batch-size growth and 3d_lowres.
FINGERPRINTS = {
    "iso_brain_1mm": ([[1, 1, 1]] * 4, [[140, 170, 140]] * 4),
    "thick_slices": ([[3.3, 0.78, 0.78], [6.5, 0.78, 0.78], [5, 0.7, 0.7], [6.5, 0.8, 0.8]],
                     [[40, 256, 256], [25, 256, 256], [30, 300, 300], [23, 256, 256]]),
    "small_2mm": ([[2, 2, 2]] * 4, [[70, 85, 70], [72, 80, 66], [68, 90, 71], [75, 88, 70]]),
    "coarse_in_plane_first": ([[0.8, 0.8, 4.0]] * 3, [[300, 280, 60]] * 3),
    "large_ct_lowres": ([[1, 0.5, 0.5]] * 4, [[400, 512, 512]] * 4),
}


def _compare(ours: dict, ref: dict, name: str) -> None:
    o, r = ours["configurations"][name], ref[name]
    ak_o, ak_r = o["architecture"]["arch_kwargs"], r["architecture"]["arch_kwargs"]
    assert o["patch_size"] == list(r["patch_size"]), name
    assert o["batch_size"] == r["batch_size"], name
    assert np.allclose(o["spacing"], r["spacing"]), name
    assert ak_o["strides"] == [list(s) for s in ak_r["strides"]], name
    assert ak_o["kernel_sizes"] == [list(k) for k in ak_r["kernel_sizes"]], name
    assert ak_o["features_per_stage"] == list(ak_r["features_per_stage"]), name
    assert ak_o["n_stages"] == ak_r["n_stages"], name


@pytest.mark.parametrize("gb", [8.0, 4.0])
@pytest.mark.parametrize("key", sorted(FINGERPRINTS))
def test_parity_on_fingerprints(tmp_path: Path, key: str, gb: float) -> None:
    spacings, shapes = FINGERPRINTS[key]
    ref = nnunet_plans_for_fingerprint(tmp_path, spacings, shapes, n_channels=1, n_labels=2, gb=gb)
    fp = {"spacings": spacings, "shapes_after_crop": shapes,
          "foreground_intensity_properties_per_channel": {"0": {}}, "target_intensity_properties": None}
    # nnU-Net's memory estimate counts its output channels (2 labels here); give ours the same count
    ours = plan_experiment(fp, DJ, "Dataset001_P", PlannerOptions(gpu_memory_target_gb=gb, output_channels=2))
    expected = {c for c in ref if c in ("3d_fullres", "3d_lowres")}
    assert set(ours["configurations"]) == expected
    for name in expected:
        _compare(ours, ref, name)


def _to_nnunet(raw: Path, dest: Path) -> None:
    """Same images in nnU-Net's format: source channels as inputs, the brain mask as the label."""
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    dj = json.loads((raw / "dataset.json").read_text())
    for f in sorted((raw / "imagesTr").iterdir()):
        shutil.copy(f, dest / "imagesTr" / f.name)
    for f in sorted((raw / "masksTr").iterdir()):
        shutil.copy(f, dest / "labelsTr" / f.name)
    (dest / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": dj["source_channels"]["0"]["name"]}, "labels": {"background": 0, "body": 1},
        "numTraining": dj["numTraining"], "file_ending": ".nii.gz"}))


def _nnunet_plan_dataset(tmp: Path, raw: Path, dataset_id: int) -> dict:
    env = dict(os.environ, nnUNet_raw=str(tmp / "nn_raw"), nnUNet_preprocessed=str(tmp / "nn_pre"),
               nnUNet_results=str(tmp / "nn_res"), nnUNet_n_proc_DA="1")
    _to_nnunet(raw, tmp / "nn_raw" / f"Dataset{dataset_id:03d}_Same")
    subprocess.run([sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints"],
                   check=False, capture_output=True)  # import check only
    code = ("from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments;"
            f"extract_fingerprints([{dataset_id}], num_processes=2, check_dataset_integrity=False);"
            f"plan_experiments([{dataset_id}])")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return load_json(tmp / "nn_pre" / f"Dataset{dataset_id:03d}_Same" / "nnUNetPlans.json")["configurations"]


@pytest.mark.parametrize("which", [
    "brain_2mm",  # the bundled demo brains: runs on every clone
    # the originals at full resolution (1 mm brains, the PET/CT on its 3 mm grid): the sizes of real datasets
    pytest.param("brain_1mm", marks=pytest.mark.full_data), pytest.param("petct_3mm", marks=pytest.mark.full_data),
])
def test_parity_end_to_end_on_real_images(tmp_path: Path, roots, request: pytest.FixtureRequest, which: str) -> None:
    """Real images (the bundled demo, and the full-resolution originals when the shared data is there):
    autotrans_plan_and_preprocess writes everything (twice: no work the second time), and its plan equals
    nnU-Net's own fingerprint + plan of the same images."""
    raw = roots["autotrans_raw"] / "Dataset021_Same"
    if which == "brain_2mm":  # MS 07/19 + both TCGA-LGG, T2->FLAIR, 2 mm, brain masks
        shutil.copytree(demo_data_dir() / "Dataset901_DemoT2toFLAIR", raw)
    elif which == "brain_1mm":
        build_brain_demo(request.getfixturevalue("shared_data"), raw, spacing=None)  # the same brains at 1 mm
    else:
        build_petct_demo(request.getfixturevalue("shared_data"), raw, spacing=None, n_slabs=2)  # shared 3 mm grid
    assert main_plan_and_preprocess(["-d", "21", "-np", "2"]) == 0
    pre = roots["autotrans_preprocessed"] / "Dataset021_Same"
    data = pre / "autotransPlans_3d_fullres"
    n_cases = len(list((raw / "imagesTr").iterdir()))
    assert len(list(data.glob("*.json"))) == n_cases and (pre / "splits_final.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert main_plan_and_preprocess(["-d", "21", "-np", "2"]) == 0  # a second run redoes nothing
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamps
    ours = load_json(pre / "autotransPlans.json")
    ref = _nnunet_plan_dataset(tmp_path, raw, 21)
    if which == "brain_1mm":
        # skull-stripped MR on its native grid: the brain mask equals nnU-Net's non-zero crop, so shapes agree exactly
        fp = load_json(roots["autotrans_preprocessed"] / "Dataset021_Same" / "dataset_fingerprint.json")
        nn_fp = load_json(tmp_path / "nn_pre" / "Dataset021_Same" / "dataset_fingerprint.json")
        assert fp["shapes_after_crop"] == nn_fp["shapes_after_crop"]
        _compare(ours, ref, "3d_fullres")
    else:
        # CT air is -1024, not 0: nnU-Net's non-zero crop keeps the whole field of view while we crop to
        # the body mask; the demo's 2 mm brains were smoothed before resampling, so a faint rim of non-zero
        # voxels lies just outside their brain masks. The planning rules agree when given the same shapes: check that.
        nn_fp = load_json(tmp_path / "nn_pre" / "Dataset021_Same" / "dataset_fingerprint.json")
        fp = {"spacings": nn_fp["spacings"], "shapes_after_crop": nn_fp["shapes_after_crop"],
              "foreground_intensity_properties_per_channel": {"0": {}}, "target_intensity_properties": None}
        same = plan_experiment(fp, DJ, "Dataset021_Same", PlannerOptions(output_channels=2))
        _compare(same, ref, "3d_fullres")
        assert ours["configurations"]["3d_fullres"]["spacing"] == same["configurations"]["3d_fullres"]["spacing"]
