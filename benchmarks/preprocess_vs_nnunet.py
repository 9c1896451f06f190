"""Wall time and peak RSS: autotrans_plan_and_preprocess vs nnUNetv2_plan_and_preprocess, same images, 2 processes.

Both tools get the same full-resolution real images from ../shared/data: the four T2 -> FLAIR brains at
1 mm (nnU-Net sees the T2 as its input channel and the brain mask as its label) and the PET/CT patient
on its 3 mm grid (two slabs). Both run from scratch (fingerprint, plan, 3d_fullres preprocessing), with
``-np 2``; RSS is summed over each tool's whole process tree and sampled every 50 ms.

    python benchmarks/preprocess_vs_nnunet.py [--shared ../shared/data] [--repeats 2] [--out results.json]

Not run by CI. Needs nnunetv2 (pip install '.[test]').
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import measure  # noqa: E402

from autotrans.dataset.demo import build_brain_demo, build_petct_demo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def to_nnunet(raw: Path, dest: Path) -> None:
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    dj = json.loads((raw / "dataset.json").read_text())
    for f in (raw / "imagesTr").iterdir():
        shutil.copy(f, dest / "imagesTr" / f.name)
    for f in (raw / "masksTr").iterdir():
        shutil.copy(f, dest / "labelsTr" / f.name)
    (dest / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT" if dj["source_channels"]["0"]["modality"] == "CT" else "MRI"},
        "labels": {"background": 0, "body": 1}, "numTraining": dj["numTraining"], "file_ending": ".nii.gz"}))


def run_once(work: Path, shared: Path, dataset_ids: dict[str, int]) -> dict[str, dict[str, float]]:
    raw, nn_raw = work / "raw", work / "nn_raw"
    builders = {"brain_1mm": lambda p: build_brain_demo(shared, p, spacing=None),
                "petct_3mm": lambda p: build_petct_demo(shared, p, spacing=None, n_slabs=2)}
    for name, ds in dataset_ids.items():
        folder = raw / f"Dataset{ds:03d}_{name}"
        builders[name](folder)
        to_nnunet(folder, nn_raw / f"Dataset{ds:03d}_{name}")
    bindir = Path(sys.executable).parent
    results: dict[str, dict[str, float]] = {}
    for name, ds in dataset_ids.items():
        env_at = dict(os.environ, autotrans_raw=str(raw), autotrans_preprocessed=str(work / "pre"),
                      autotrans_results=str(work / "res"))
        wall, rss = measure([str(bindir / "autotrans_plan_and_preprocess"), "-d", str(ds), "-np", "2", "-c", "3d_fullres"],
                            env_at, work / f"autotrans_{name}.log")
        env_nn = dict(os.environ, nnUNet_raw=str(nn_raw), nnUNet_preprocessed=str(work / "nn_pre"),
                      nnUNet_results=str(work / "nn_res"))
        wall_nn, rss_nn = measure([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(ds), "-np", "2", "-npfp", "2",
                                   "-c", "3d_fullres"], env_nn, work / f"nnunet_{name}.log")
        results[name] = {"autotrans_s": wall, "autotrans_peak_rss_mib": rss, "nnunet_s": wall_nn, "nnunet_peak_rss_mib": rss_nn}
        print(f"{name}: autotrans {wall:.1f} s / {rss:.0f} MiB   nnU-Net {wall_nn:.1f} s / {rss_nn:.0f} MiB", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    runs = []
    for r in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            runs.append(run_once(Path(d), a.shared, {"brain_1mm": 51, "petct_3mm": 52}))
    summary = {}
    for name in runs[0]:
        summary[name] = {k: statistics.median(run[name][k] for run in runs) for k in runs[0][name]}
        s = summary[name]
        s["speedup"] = s["nnunet_s"] / s["autotrans_s"]
        s["rss_ratio"] = s["autotrans_peak_rss_mib"] / s["nnunet_peak_rss_mib"]
        print(f"[median of {a.repeats}] {name}: autotrans {s['autotrans_s']:.1f} s, {s['autotrans_peak_rss_mib']:.0f} MiB | "
              f"nnU-Net {s['nnunet_s']:.1f} s, {s['nnunet_peak_rss_mib']:.0f} MiB | speed-up {s['speedup']:.2f}x, "
              f"memory ratio {s['rss_ratio']:.2f}")
    if a.out:
        a.out.write_text(json.dumps({"runs": runs, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
