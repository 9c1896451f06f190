"""Sampling speed of the latent models: seconds per patch and per whole volume vs sampler steps.

Weights are random (speed does not depend on training); networks are the ones the planner sizes for the
given image patch (``plan_latent``), so ``--patch 128 128 128`` times the issue's target setting: one 128^3
image patch = a 4 x 32^3 latent, default steps (ldm/ldm_controlnet/bbdm 50, flow_matching 25), bf16 on CUDA.
Target on one H100: <= 1 s per 128^3 patch at default steps (anchor: 50 diffusion-U-Net steps at 4 x 32^3
took 0.68 s; KL encode/decode 31/42 ms).

    python benchmarks/sampling.py --patch 128 128 128 --volume 160 192 160 --steps 10 25 50 -device cuda
    python benchmarks/sampling.py --patch 32 32 32 --volume 48 56 48 --steps 5 10 -device cpu   # a CPU smoke run

Prints one table; ``--out`` writes JSON. Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import autotrans.families  # noqa: F401  (registers the families)
from autotrans.dataset.demo import install_demo
from autotrans.families.base import get_family
from autotrans.inference.latent import predict_latent_volume
from autotrans.planning.families import plan_families
from autotrans.planning.planner import UNetMemoryModel, plan_configuration
from autotrans.planning.plans import Plans
from autotrans.utils.files import load_json

MODELS = ("ldm", "ldm_controlnet", "bbdm", "flow_matching")


def demo_plans(patch: list[int]) -> Plans:
    """The bundled T2 -> FLAIR demo's plan (installed and planned in a temporary folder) with its latent
    section re-planned for ``patch``: real normalization records, the planner's network sizes."""
    with tempfile.TemporaryDirectory() as d:
        for v in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
            os.environ[v] = str(Path(d) / v)
            (Path(d) / v).mkdir()
        install_demo({901: 998}, simulate_cbct=False)
        plan_experiment_for(998)
        data = load_json(Path(d) / "autotrans_preprocessed" / "Dataset998_DemoT2toFLAIR" / "autotransPlans.json")
    # the configuration the planner gives an isotropic dataset whose images are this patch (80 GB: not shrunk)
    cfg = plan_configuration(np.ones(3), np.array(patch, dtype=float), 1e12, UNetMemoryModel(1, 1), 80.0, "sampling")
    cfg["resampling"] = data["configurations"]["3d_fullres"]["resampling"]
    cfg["families"] = plan_families(cfg, 1, 1, 1e12, 80.0)
    data["configurations"]["3d_fullres"] = cfg
    return Plans(data)


def plan_experiment_for(dataset_id: int) -> None:
    from autotrans.cli.plan_and_preprocess import main_extract_fingerprint, main_plan_experiment

    if main_extract_fingerprint(["-d", str(dataset_id), "-np", "1"]) or main_plan_experiment(["-d", str(dataset_id)]):
        raise SystemExit("planning the demo failed")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (cuDNN autotuning, lazy allocations)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32], help="image patch (default 32^3: CPU)")
    p.add_argument("--volume", type=int, nargs=3, default=None, help="whole volume to time (default: none)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="default: each model's planned steps")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    plans = demo_plans(a.patch)
    cfg = plans.configuration("3d_fullres")
    rows: list[dict[str, Any]] = []
    x = torch.rand(1, 1, *cfg.data["families"]["latent"]["autoencoder"]["patch_size"], device=device) * 2 - 1
    bf16 = device.type == "cuda"
    for name in a.models:
        torch.manual_seed(0)
        fam = get_family(name)(plans, cfg, {}, device)
        fam.build()
        fam.autocast_dtype = torch.bfloat16 if bf16 else None
        fam.eval()
        with torch.inference_mode():
            enc = timed(lambda: fam.encode_source(x), device, a.repeats)
            z = fam.encode_source(x)
            dec = timed(lambda: fam.decode_target(z), device, a.repeats)
            for steps in a.steps or [fam.sampling_steps]:
                fam.overrides["sampling_steps"] = steps
                g = torch.Generator(device=device).manual_seed(0)
                row = {"model": name, "steps": steps, "latent": list(z.shape[1:]), "encode_s": enc, "decode_s": dec,
                       "patch_s": timed(lambda: fam.predict_patch(x, g), device, a.repeats)}
                if a.volume:
                    vol = torch.rand(1, *a.volume, device=device) * 2 - 1
                    t0 = time.perf_counter()
                    _, timing = predict_latent_volume(vol, fam, device=device, generator=g, bf16=bf16)
                    sync(device)
                    row.update(volume_s=time.perf_counter() - t0, volume_tiles=timing["tiles"])
                rows.append(row)
                print(f"{name:<16} steps {steps:>4}  latent {row['latent']}  encode {enc * 1e3:7.1f} ms  "
                      f"decode {dec * 1e3:7.1f} ms  patch {row['patch_s']:7.3f} s"
                      + (f"  volume {row['volume_s']:7.2f} s ({row['volume_tiles']} latent tiles)" if a.volume else ""),
                      flush=True)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "patch": a.patch, "volume": a.volume, "bf16": bf16, "rows": rows}
    if a.out:
        a.out.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
