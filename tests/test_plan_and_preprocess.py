"""End-to-end: autotrans_plan_and_preprocess on the bundled real demo datasets."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli.plan_and_preprocess import (main_extract_fingerprint, main_plan_and_preprocess,
                                               main_plan_experiment, main_preprocess)
from autotrans.planning.plans import Plans
from autotrans.preprocessing.store import PreprocessedCase, case_ids
from autotrans.utils.files import load_json


def _outputs(pre: Path) -> dict[str, Path]:
    return {"fingerprint": pre / "dataset_fingerprint.json", "plans": pre / "autotransPlans.json",
            "splits": pre / "splits_final.json", "data": pre / "autotransPlans_3d_fullres"}


def test_brain_t2_to_flair(brain_demo: Path, roots, caplog) -> None:
    assert main_plan_and_preprocess(["-d", "11", "-np", "2"]) == 0
    pre = roots["autotrans_preprocessed"] / "Dataset011_DemoT2toFLAIR"
    out = _outputs(pre)
    assert all(p.exists() for p in out.values())
    fp = load_json(out["fingerprint"])
    assert fp["num_cases"] == 4 and fp["has_lesions"] and fp["has_masks"]
    assert set(fp["cases"]) == {"MS-patient07", "MS-patient19", "TCGA-DU-7294", "TCGA-FG-6692"}
    plans = Plans.load(out["plans"])
    cfg = plans.configuration("3d_fullres")
    assert cfg.spacing == [2.0, 2.0, 2.0]
    assert plans.target_normalization.scheme == "percentile"
    fams = cfg.data["families"]
    models = {"regression", "pix2pix", "cyclegan", "srgan", "autoencoder", "ldm", "ldm_prior", "ldm_controlnet",
              "bbdm", "flow_matching"}
    assert set(fams) == models | {"latent", "budget"}
    # the plan says what each family got (one rule: the U-Net's budget, one memory model, parameter parity)
    unet = fams["budget"]["unet_parameters"]
    for name in models:
        sec = fams[name]
        assert sec["batch_size"] >= 1 and sec["estimated_memory_gb"] > 0 and sec["activation_bytes_per_sample"] > 0
        assert sec["parameters"] and all(v > 0 for v in sec["parameters"].values()), name
        generator = sec["parameters"].get("generator", sec["parameters"].get("denoiser"))
        if generator is not None:
            assert 0.25 <= generator / unet <= 4, (name, generator, unet)
    assert case_ids(out["data"]) == sorted(fp["cases"])
    case = PreprocessedCase(out["data"], "MS-patient07")
    src, tgt, mask, les = (case.load(k) for k in ("source", "target", "mask", "lesions"))
    assert src.shape[0] == 1 and tgt.shape == src.shape and mask.shape == src.shape[1:]
    assert np.isfinite(src).all() and -1.0 <= tgt.min() and tgt.max() <= 1.0
    # the planned headroom keeps every FLAIR voxel (bright lesions included) unclipped, in every case
    assert plans.target_normalization.headroom > 1.0
    for c in fp["cases"]:
        clipped = PreprocessedCase(out["data"], c).properties["clipped_voxels"]
        assert sum(clipped["target"].values()) == 0 and sum(clipped["source"][0].values()) == 0, c
    assert les.sum() > 0 and "lesions" in case.locations()
    props = case.properties
    raw_size = list(reversed(props["shape_before_crop"]))
    assert props["geometry"]["size"] == raw_size and props["crop_bbox"][0][1] <= props["shape_before_crop"][0]
    # random access decompresses only what is read
    patch = case.array("source")[:, 10:26, 10:26, 10:26]
    assert patch.shape == (1, 16, 16, 16)
    splits = load_json(out["splits"])
    assert len(splits) == 4 and all(len(f["val"]) == 1 for f in splits)  # leave-one-out with 4 cases
    assert "leave-one-out" in caplog.text


def test_second_run_does_no_work_and_replanning_keeps_user_config(petct_demo: Path, roots, caplog) -> None:
    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0
    pre = roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET"
    out = _outputs(pre)
    plans = load_json(out["plans"])
    assert plans["normalization"]["target"]["scheme"] == "suv"
    assert plans["normalization"]["target"]["transform"] == "log1p"
    assert plans["normalization"]["source"][0]["window"] == [-1024.0, 3071.0]
    for case in case_ids(out["data"]):  # the ceiling lies above the hottest training voxel: nothing clipped
        assert sum(PreprocessedCase(out["data"], case).properties["clipped_voxels"]["target"].values()) == 0
    # a user adds a configuration (nnU-Net style inheritance) and their own split
    plans["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    out["plans"].write_text(json.dumps(plans))
    stamps = {p.name: p.stat().st_mtime_ns for p in out["data"].iterdir()}
    fp_stamp = out["fingerprint"].stat().st_mtime_ns
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out["data"].iterdir()} == stamps
    assert out["fingerprint"].stat().st_mtime_ns == fp_stamp
    assert "already preprocessed" in caplog.text and "fingerprint is up to date" in caplog.text
    assert "clipped foreground voxels" not in caplog.text
    again = Plans.load(out["plans"])
    assert again.configuration("3d_fullres_bs4").batch_size == 4
    assert again.configuration("3d_fullres_bs4").patch_size == again.configuration("3d_fullres").patch_size


def test_user_split_file_is_respected(petct_demo: Path, roots) -> None:
    user = [{"train": ["CCTH-A01-slab0", "CCTH-A01-slab1"], "val": ["CCTH-A01-slab2"]}]
    (petct_demo / "splits_final.json").write_text(json.dumps(user))
    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0
    assert load_json(roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET" / "splits_final.json") == user


def test_separate_steps_and_gpu_memory_target(brain_demo: Path, roots) -> None:
    assert main_extract_fingerprint(["-d", "Dataset011_DemoT2toFLAIR"]) == 0
    assert main_plan_experiment(["-d", "DemoT2toFLAIR", "-gpu_memory_target", "2",
                                 "--overwrite_target_spacing", "3", "3", "3"]) == 0
    plans = Plans.load(roots["autotrans_preprocessed"] / "Dataset011_DemoT2toFLAIR" / "autotransPlans.json")
    cfg = plans.configuration("3d_fullres")
    assert cfg.spacing == [3.0, 3.0, 3.0]
    assert main_preprocess(["-d", "11", "-np", "1"]) == 0
    case = PreprocessedCase(roots["autotrans_preprocessed"] / "Dataset011_DemoT2toFLAIR" / cfg.data_identifier, "TCGA-DU-7294")
    geom = case.properties["geometry"]
    expected = [round(s * 2.0 / 3.0) for s in case.properties["shape_after_crop"]]
    assert case.properties["shape_after_resampling"] == expected and len(geom["size"]) == 3


def test_changed_files_after_fingerprint_are_detected(petct_demo: Path, roots, capsys) -> None:
    assert main_extract_fingerprint(["-d", "12", "-np", "1"]) == 0
    assert main_plan_experiment(["-d", "12"]) == 0
    f = petct_demo / "targetsTr" / "CCTH-A01-slab0.nii.gz"
    # touching a file changes nothing (the fingerprint keys on content, not modification times)...
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10_000_000_000))
    # ...changing its content does, even with the size and modification time kept (cp -p, rsync -t)
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size
    assert main_preprocess(["-d", "12", "-np", "1"]) == 1
    assert "changed since the fingerprint" in capsys.readouterr().err


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".nii"])
def test_other_file_endings(petct_demo: Path, roots, ending: str) -> None:
    import SimpleITK as sitk

    for f in list(petct_demo.rglob("*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(f)), str(f.with_name(f.name[: -len(".nii.gz")] + ending)))
        f.unlink()
    dj = json.loads((petct_demo / "dataset.json").read_text())
    dj["file_ending"] = ending
    (petct_demo / "dataset.json").write_text(json.dumps(dj))
    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0
    data = roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET" / "autotransPlans_3d_fullres"
    assert case_ids(data) == ["CCTH-A01-slab0", "CCTH-A01-slab1", "CCTH-A01-slab2"]
