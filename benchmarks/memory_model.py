"""Does the one memory model count every family alike? Measured ÷ estimated activation memory per family, beside
the U-Net's own ratio, on three fingerprints.

For each fingerprint (isotropic 1 mm brain, anisotropic 2.5 x 1 x 1 mm pelvis-like, 3 mm PET/CT) the planner
plans a configuration at ``--gpu_memory_target`` GB; every family's networks are built as planned, one training
step at batch 1 runs on the CPU (fp32, the second step: the first allocates the optimizer moments) and the
profiler's allocation timeline gives its peak beyond the persistent state (weights, their gradients and the
optimizer moments, all allocated by the first step). The U-Net row is a plain regression step of the planned
U-Net (forward, masked L1, backward, Adam): the reference the budget is calibrated on. Goal: every family's
ratio within +-35 % of the U-Net's (what tests/planning/test_memory_model.py pins on a tiny plan).

    python benchmarks/memory_model.py [--gpu_memory_target 1] [--families pix2pix cyclegan ...] [--planning_only]

At the default 8 GB target a 128^3 step of CycleGAN needs ~10 GB in fp32 and minutes on 2 cores; the default
target here is 1 GB (64^3-class patches). ``--planning_only`` prints the planning table (parameters, receptive
field, batch size, estimated memory) without measuring. Not run by CI.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

import autotrans.families  # noqa: F401  (registers the families)
from autotrans.families.base import get_family
from autotrans.networks import build_planned_unet
from autotrans.planning.families import FAMILY_ORDER, plan_families, summary_rows
from autotrans.planning.memory import measure_family_step, measured_peak_bytes, persistent_gradients
from autotrans.planning.planner import UNetMemoryModel, plan_configuration
from autotrans.planning.plans import Plans
from autotrans.preprocessing.normalization import PercentileNormalization

#: (name, spacing z, y, x in mm, median shape after cropping, cases)
FINGERPRINTS = (
    ("brain 1 mm", (1.0, 1.0, 1.0), (140, 170, 140), 40),
    ("pelvis 2.5x1x1 mm", (2.5, 1.0, 1.0), (60, 300, 400), 40),
    ("PET/CT 3 mm", (3.0, 3.0, 3.0), (300, 200, 200), 40),
)


def plan_for(spacing: tuple[float, ...], median: tuple[int, ...], cases: int, gb: float) -> Plans:
    """A minimal plans object holding one planned configuration (MR -> MR; the networks do not depend on units)."""
    n_vox = float(np.prod(median)) * cases
    cfg = plan_configuration(np.array(spacing), np.array(median, dtype=float), n_vox, UNetMemoryModel(1, 1), gb,
                             "memory_model")
    cfg["families"] = plan_families(cfg, 1, 1, n_vox, gb)
    norm = PercentileNormalization().to_dict()
    return Plans({"configurations": {"3d_fullres": cfg}, "source_channels": [{"name": "s", "modality": "MR"}],
                  "target": {"name": "t", "modality": "MR"}, "normalization": {"source": [norm], "target": norm},
                  "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]})


def unet_step_bytes(plans: Plans, batch: int = 1) -> dict[str, int]:
    """The reference: a regression step of the planned U-Net (forward, masked L1, backward, Adam), per sample."""
    cfg = plans.configuration("3d_fullres")
    torch.manual_seed(0)
    net = build_planned_unet(cfg.architecture, 1, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x, y = torch.rand(batch, 1, *cfg.patch_size), torch.rand(batch, 1, *cfg.patch_size)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (net(x) - y).abs().mean().backward()
        opt.step()

    step()
    with persistent_gradients():
        peak = measured_peak_bytes(step)
    return {"peak": peak, "activations": peak // batch}


#: overrides that put each family in its most expensive phase (the GAN phase of SRGAN, the adversarial term of
#: the autoencoder)
PHASE = {"srgan": {"pretrain_fraction": 0}, "autoencoder": {"adversarial_start": 0}}


def measure(plans: Plans, families: list[str], batch: int = 1) -> list[dict[str, Any]]:
    cfg = plans.configuration("3d_fullres")
    fams = cfg.data["families"]
    rows = []
    t0 = time.perf_counter()
    ref = unet_step_bytes(plans, batch)
    ref_est = fams["budget"]["unet_activation_bytes_per_sample"]
    rows.append({"family": "U-Net (reference)", "estimated": ref_est, **ref, "ratio": ref["activations"] / ref_est,
                 "seconds": time.perf_counter() - t0})
    for name in families:
        t0 = time.perf_counter()
        m = measure_family_step(get_family(name), plans, cfg, PHASE.get(name), batch=batch)
        est = fams[name]["activation_bytes_per_sample"]
        rows.append({"family": name, "estimated": est, **m, "ratio": m["activations"] / est,
                     "seconds": time.perf_counter() - t0})
    for r in rows:
        r["relative_to_unet"] = r["ratio"] / rows[0]["ratio"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu_memory_target", type=float, default=1.0)
    p.add_argument("--families", nargs="+", default=[f for f in FAMILY_ORDER])
    p.add_argument("--planning_only", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="samples per measured step (the table is per sample)")
    p.add_argument("--fingerprints", nargs="+", default=[f[0] for f in FINGERPRINTS],
                   help="which fingerprints (by name)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name, spacing, median, cases in (f for f in FINGERPRINTS if f[0] in a.fingerprints):
        plans = plan_for(spacing, median, cases, a.gpu_memory_target)
        cfg = plans.configuration("3d_fullres")
        print(f"\n## {name}: patch {cfg.patch_size}, U-Net batch {cfg.batch_size}, "
              f"GPU memory target {a.gpu_memory_target:g} GB")
        print("| family | parameters | receptive field | batch size | estimated memory (GB) |")
        print("|---|---|---|---|---|")
        for row in summary_rows(cfg.data["families"]):
            print("| " + " | ".join(row) + " |")
        if a.planning_only:
            continue
        print(f"\n| step, per sample at batch {a.batch} | estimated MB | measured MB | measured / estimated "
              "| relative to the U-Net | s |")
        print("|---|---|---|---|---|---|")
        for r in measure(plans, a.families, a.batch):
            print(f"| {r['family']} | {r['estimated'] / 1e6:.0f} | {r['activations'] / 1e6:.0f} | {r['ratio']:.2f} "
                  f"| {r['relative_to_unet']:.2f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
