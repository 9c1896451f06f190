"""Run nnU-Net v2's own ExperimentPlanner on a given fingerprint (in a subprocess: nnunetv2 reads its env
vars at import time). Test-only: nnunetv2 is a test dependency, never a runtime one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

_SCRIPT = r"""
import json, sys, warnings
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners as resenc
args = json.loads(sys.argv[1])
warnings.simplefilter("ignore")
out = {}
for name in args["planners"]:
    cls = ExperimentPlanner if name == "ExperimentPlanner" else getattr(resenc, name)
    kw = {} if args["gb"] is None else {"gpu_memory_target_in_gb": args["gb"]}
    planner = cls(args["dataset"], overwrite_target_spacing=args["overwrite"], **kw)
    with torch.device("meta"):  # its VRAM estimate counts feature maps: shapes only, no weight initialisation
        plans = planner.plan_experiment()
    out[name] = {"plans_name": plans["plans_name"], "configurations": plans["configurations"]}
print("@@PLANS@@" + json.dumps(out))
"""


def nnunet_plans_for_fingerprint(tmp: Path, spacings: list[list[float]], shapes: list[list[int]],
                                 n_channels: int = 1, n_labels: int = 2, gb: float = 8.0,
                                 overwrite: list[float] | None = None, dataset_id: int = 777) -> dict:
    """Write a minimal nnU-Net raw folder + fingerprint and return nnU-Net's planned configurations."""
    return nnunet_plans_by_planner(tmp, spacings, shapes, ["ExperimentPlanner"], n_channels, n_labels, gb, overwrite,
                                   dataset_id)["ExperimentPlanner"]["configurations"]


def nnunet_plans_by_planner(tmp: Path, spacings: list[list[float]], shapes: list[list[int]], planners: list[str],
                            n_channels: int = 1, n_labels: int = 2, gb: float | None = None,
                            overwrite: list[float] | None = None, dataset_id: int = 777) -> dict:
    """nnU-Net's plans (``plans_name`` and ``configurations``) per planner class name (``ExperimentPlanner``,
    ``nnUNetPlannerResEncM/L/XL``), all from one subprocess; ``gb`` None: each planner's own target."""
    name = f"Dataset{dataset_id:03d}_Parity"
    raw = tmp / "nnUNet_raw" / name
    pre = tmp / "nnUNet_preprocessed" / name
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    pre.mkdir(parents=True, exist_ok=True)
    tiny = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    for i in range(len(spacings)):
        for c in range(n_channels):
            sitk.WriteImage(tiny, str(raw / "imagesTr" / f"c{i:03d}_{c:04d}.nii.gz"))
        sitk.WriteImage(sitk.Cast(tiny, sitk.sitkUInt8), str(raw / "labelsTr" / f"c{i:03d}.nii.gz"))
    labels = {"background": 0, **{f"l{k}": k for k in range(1, n_labels)}}
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): "MRI" for c in range(n_channels)}, "labels": labels,
        "numTraining": len(spacings), "file_ending": ".nii.gz"}))
    props = {"mean": 1.0, "median": 1.0, "std": 1.0, "min": 0.0, "max": 2.0,
             "percentile_99_5": 2.0, "percentile_00_5": 0.0}
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": spacings, "shapes_after_crop": shapes,
        "foreground_intensity_properties_per_channel": {str(c): props for c in range(n_channels)},
        "median_relative_size_after_cropping": 1.0}))
    env = dict(os.environ, nnUNet_raw=str(tmp / "nnUNet_raw"), nnUNet_preprocessed=str(tmp / "nnUNet_preprocessed"),
               nnUNet_results=str(tmp / "nnUNet_results"))
    arg = json.dumps({"dataset": name, "gb": gb, "overwrite": overwrite, "planners": planners})
    out = subprocess.run([sys.executable, "-c", _SCRIPT, arg], env=env, capture_output=True, text=True, check=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("@@PLANS@@")][-1]
    return json.loads(line[len("@@PLANS@@"):])
