"""Is learning real? Short CPU runs of each family on the real T2 -> FLAIR demo brains must beat the
copy-the-input baseline on the held-out fold, and each model's validation loss must fall.

For every family: install the bundled demo brains, plan them at 4 mm (small enough for a CPU), train fold 0
for a few epochs, and read the final whole-volume validation (``validation/summary.json``: masked MAE in the
plan's normalized MR scale, on the original grid). The baseline predicts FLAIR = T2, put through the same
per-case percentile normalization, scored by the same evaluator on the same cases.

    python benchmarks/learning_check.py [--epochs 10] [--iterations 30] [--families pix2pix cyclegan srgan
        autoencoder ldm ldm_controlnet bbdm flow_matching]

The latent models share the fold's autoencoder (list ``autoencoder`` first to time it on its own). Their
validation loss is the training loss at fixed timesteps and noise (``val/loss``); the autoencoder's is the
target reconstruction L1. The table shows it after the first and the last epoch.

Not run by CI (minutes on 2 cores). Prints one table; ``--out`` writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autotrans.dataset.demo import install_demo
from autotrans.dataset.format import discover_cases, load_dataset_json
from autotrans.dataset.integrity import load_case
from autotrans.evaluation import evaluate_case
from autotrans.planning.plans import Plans
from autotrans.utils.files import load_json

DATASET_ID = 61


def baseline_mae(raw: Path, plans: Plans, val_cases: list[str]) -> dict[str, float]:
    """Copy-the-input: the T2, normalized into the target's output scale with its own percentiles (and bounded
    like a generator output: through the target's network space); the reference is the unclipped output scale."""
    dj = load_dataset_json(raw)
    cases = discover_cases(raw, dj, "Tr").cases
    norm = plans.target_normalization
    out = {}
    for case in val_cases:
        a, _ = load_case(cases[case], dj)
        mask = a.mask > 0
        ref = norm.raw_to_output_scale(a.target, norm.fit_case(a.target[mask]))
        pred = norm.to_output_scale(norm.forward(a.source[0], norm.fit_case(a.source[0][mask])))
        r = evaluate_case(ref, pred, a.mask, None, modality="MR", standard="autotrans", case=case,
                          value_range=(-1.0, 1.0), range_source="plan")
        out[case] = r["metrics"]["mae"]
    return out


VAL_KEYS = ("val/loss", "val/loss_l1", "val/target/l1", "val/loss_content")


def val_loss_curve(fold_dir: Path) -> dict[str, float | str]:
    """The family's own validation loss after the first and the last epoch (from the final checkpoint)."""
    from autotrans.results import safe_torch_load  # weights only: never runs code from the file

    history = safe_torch_load(fold_dir / "checkpoint_final.pth")["history"]
    for key in VAL_KEYS:
        values = [v for v in history.get(key, []) if v is not None and np.isfinite(v)]
        if len(values) >= 2:
            return {"val_key": key, "val_first": float(values[0]), "val_last": float(values[-1])}
    return {}


def train_only(fam: str, a: argparse.Namespace, bindir: Path, roots: dict[str, Path]) -> dict[str, float | str]:
    """Families that do not translate (the autoencoder): time and validation loss only."""
    t0 = time.perf_counter()
    subprocess.run([str(bindir / "autotrans_train"), str(DATASET_ID), "3d_fullres", fam, "0", "--epochs", str(a.epochs),
                    "--iterations", str(a.iterations), "--val_iterations", "5", "-device", "cpu", "--seed", "0",
                    "-num_workers", "0"], check=True, capture_output=True)
    folder = roots["autotrans_results"] / f"Dataset{DATASET_ID:03d}_DemoT2toFLAIR" / f"{fam}__autotransPlans__3d_fullres"
    return {"train_seconds": time.perf_counter() - t0, **val_loss_curve(folder / "fold_0")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--families", nargs="+", default=["pix2pix", "cyclegan", "srgan"])
    p.add_argument("--spacing", type=float, default=4.0)
    p.add_argument("--gpu_memory_target", type=float, default=0.05,
                   help="GB; the tiny default plans a 24x28x24 patch and small networks a CPU can train in minutes")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        roots = {v: Path(d) / v for v in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results")}
        for v, path in roots.items():
            path.mkdir()
            os.environ[v] = str(path)
        install_demo({901: DATASET_ID}, simulate_cbct=False)
        bindir = Path(sys.executable).parent
        sp = str(a.spacing)
        subprocess.run([str(bindir / "autotrans_plan_and_preprocess"), "-d", str(DATASET_ID), "-np", "2",
                        "--overwrite_target_spacing", sp, sp, sp, "-gpu_memory_target", str(a.gpu_memory_target)],
                       check=True, capture_output=True)
        pre = roots["autotrans_preprocessed"] / f"Dataset{DATASET_ID:03d}_DemoT2toFLAIR"
        plans = Plans.load(pre / "autotransPlans.json")
        val_cases = load_json(pre / "splits_final.json")[0]["val"]
        base = baseline_mae(roots["autotrans_raw"] / f"Dataset{DATASET_ID:03d}_DemoT2toFLAIR", plans, val_cases)
        results = {"validation_cases": val_cases, "baseline_mae": base,
                   "baseline_mean": float(np.mean(list(base.values()))), "families": {}}
        for fam in a.families:
            if fam == "autoencoder":
                results["families"][fam] = train_only(fam, a, bindir, roots)
                continue
            t0 = time.perf_counter()
            subprocess.run([str(bindir / "autotrans_train"), str(DATASET_ID), "3d_fullres", fam, "0",
                            "--epochs", str(a.epochs), "--iterations", str(a.iterations), "--val_iterations", "5",
                            "-device", "cpu", "--seed", "0", "-num_workers", "0"], check=True, capture_output=True)
            wall = time.perf_counter() - t0
            folder = roots["autotrans_results"] / f"Dataset{DATASET_ID:03d}_DemoT2toFLAIR" / f"{fam}__autotransPlans__3d_fullres"
            summary = load_json(folder / "fold_0" / "validation" / "summary.json")
            results["families"][fam] = {"mae": summary["mean"]["mae"], "psnr": summary["mean"]["psnr"],
                                        "ssim": summary["mean"]["ssim"], "train_seconds": wall,
                                        **val_loss_curve(folder / "fold_0")}
        cfg = plans.configuration("3d_fullres")
        print(f"validation cases (fold 0): {', '.join(val_cases)}; {a.epochs} epochs x {a.iterations} iterations, "
              f"{a.spacing:g} mm, patch {cfg.patch_size}, CPU")
        print(f"{'model':<16}{'MAE (norm. MR)':>16}{'PSNR':>8}{'SSIM':>8}{'train s':>9}   val loss first -> last")
        print(f"{'copy input':<16}{results['baseline_mean']:>16.4f}")
        for fam, r in results["families"].items():
            curve = (f"   {r['val_key']}: {r['val_first']:.4f} -> {r['val_last']:.4f}"
                     f" ({'falls' if r['val_last'] < r['val_first'] else 'does NOT fall'})" if "val_key" in r else "")
            if "mae" not in r:
                print(f"{fam:<16}{'-':>16}{'-':>8}{'-':>8}{r['train_seconds']:>9.0f}{curve}")
                continue
            flag = "beats baseline" if r["mae"] < results["baseline_mean"] else "WORSE than baseline"
            print(f"{fam:<16}{r['mae']:>16.4f}{r['psnr']:>8.2f}{r['ssim']:>8.3f}{r['train_seconds']:>9.0f}  {flag}{curve}")
        if a.out:
            a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
