"""Dose evaluation cost and separation: per-case time and memory (photons, protons) and gamma pass rates of three
synthetic CTs of known quality against the real CT.

Cases: the bundled CT->PET demo's CT slabs (real FDG PET/CT CT, CC-BY; see its ATTRIBUTION.md) and, with
``--full``, the whole 3 mm CT of that patient from ../shared. Synthetic CTs (not from a trained model):

- ``identical``: the real CT itself (control: 100 % gamma, zero DVH difference);
- ``cbct_calibrated``: the simulated CBCT (autotrans' simulator, documentation/cbct_simulation.md; simulated from
  the real CT, not real CBCT) after a linear HU calibration fitted inside the body, as a clinic calibrates CBCT;
- ``cbct_raw``: the simulated CBCT as reconstructed (shading, scatter, HU offset).

    python benchmarks/dose_demo.py -o /tmp/dose_demo --dose_grid 6             # the demo's 6 mm slabs
    python benchmarks/dose_demo.py -o /tmp/dose_full --full --no_demo          # the whole 3 mm CT, 3 mm grid

Writes dose_demo.md (a table) and the dose.json of each synthetic CT under -o.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _calibrated(cbct: np.ndarray, ct: np.ndarray, body: np.ndarray) -> np.ndarray:
    m = body > 0
    a, b = np.polyfit(cbct[m].astype(np.float64), ct[m].astype(np.float64), 1)
    return (a * cbct + b).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", required=True, type=Path)
    p.add_argument("--full", action="store_true", help="also the whole 3 mm CT from ../shared (minutes per plan)")
    p.add_argument("--no_demo", action="store_true", help="leave out the demo slabs (with --full: only the full CT)")
    p.add_argument("--dose_grid", type=float, default=3.0)
    p.add_argument("--modality", nargs="+", default=["photons", "protons"])
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from autotrans.dataset.cbct import case_rng, simulate_cbct
    from autotrans.dataset.demo import demo_data_dir
    from autotrans.io import read_image, write_image

    demo = demo_data_dir() / "Dataset902_DemoCTtoPET"
    cases = [(f.name.replace("_0000.nii.gz", ""), f, demo / "masksTr" / f.name.replace("_0000", ""))
             for f in sorted((demo / "imagesTr").glob("*_0000.nii.gz"))] if not a.no_demo else []
    if a.full:
        shared = REPO.parent / "shared" / "data" / "petct_tcia_ccth_a01"
        cases.append(("CCTH-A01-full", shared / "ct_hu_3mm.nii.gz", shared / "body_mask_3mm.nii.gz"))
    folders = {k: a.o / k for k in ("ref", "mask", "identical", "cbct_calibrated", "cbct_raw")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for case, ct_path, mask_path in cases:
        ct, geo = read_image(ct_path)
        body = read_image(mask_path, dtype=np.uint8)[0]
        cbct = simulate_cbct(ct, geo.spacing_zyx, case_rng(0, case))
        write_image(ct, geo, folders["ref"] / f"{case}.nii.gz")
        write_image(body, geo, folders["mask"] / f"{case}.nii.gz")
        write_image(ct, geo, folders["identical"] / f"{case}.nii.gz")
        write_image(cbct, geo, folders["cbct_raw"] / f"{case}.nii.gz")
        write_image(_calibrated(cbct, ct, body), geo, folders["cbct_calibrated"] / f"{case}.nii.gz")
    results = {}
    for name in ("identical", "cbct_calibrated", "cbct_raw"):
        t0 = time.time()
        cmd = [sys.executable, "-m", "autotrans.cli.dose", "-ref", str(folders["ref"]), "-pred", str(folders[name]),
               "-mask", str(folders["mask"]), "--modality", *a.modality, "--dose_grid", str(a.dose_grid),
               "--plan_cache", str(a.o / "plans"), "-o", str(a.o / f"{name}.json")]
        subprocess.run(cmd, check=True)
        results[name] = json.loads((a.o / f"{name}.json").read_text())
        logging.info("%s done in %.0f s", name, time.time() - t0)
    load = os.getloadavg()
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.processor() or 'CPU'}, "
             f"{os.cpu_count()} cores, load average {load[0]:.1f}; dose grid {a.dose_grid:g} mm.", "",
             "| case | beams | sCT | γ 3%/3mm | γ 2%/2mm | γ 1%/1mm | target ΔD95 (% Rx) | plan s (first) | "
             "recompute s | peak RSS MiB (process so far) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for case, _, _ in cases:
        for beam in a.modality:
            for name, res in results.items():
                d = res["case_details"][case][beam]
                m, s = d["metrics"], d["seconds"]
                plan_s = results["identical"]["case_details"][case][beam]["seconds"]
                first = plan_s.get("dose_influence", 0) + plan_s.get("optimisation", 0) + plan_s.get("steering", 0)
                lines.append(f"| {case} | {beam} | {name} | {m['gamma_3%3mm']:.2f} | {m['gamma_2%2mm']:.2f} | "
                             f"{m['gamma_1%1mm']:.2f} | {m['target_D95_diff_pct']:+.2f} | {first:.0f} | "
                             f"{s['recompute']:.0f} | {d['peak_rss_mib']:.0f} |")
    (a.o / "dose_demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
