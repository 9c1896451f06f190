"""One command for every GPU figure of documentation/performance.md: training steps, memory, inference, sampling.

Measures, per family, on one device:

1. **Training step** at a planned patch (default 128^3: the families' networks are planned for that patch, as
   ``benchmarks/sampling.py`` does), bf16 on CUDA, without and with ``torch.compile``, fed by the real
   loader (workers read regions of the preprocessed demo brains; on CUDA they are augmented on the device,
   ``--gpu_augmentation``), with the **data-wait fraction** (time blocked on the loader / iteration time).
2. **Peak memory** of that step (``max_memory_allocated``) against the planner's ``estimated_memory_gb``.
3. **Sliding-window seconds per volume** (default 256x256x192) for the GAN/regression families.
4. **Sampling seconds per volume** of the latent families at their default steps, and the autoencoder's
   encode/decode milliseconds per patch.

Weights are random: speed and memory do not depend on training. Writes a markdown table (``--md``) and JSON.

    python benchmarks/gpu_suite.py --demo /tmp/gpu_suite --md gpu_suite.md           # one GPU, <= 8 minutes
    python benchmarks/gpu_suite.py --demo /tmp/gpu_suite --tiny --md gpu_suite.md    # CPU fallback (CI: tiny plan)

``--tiny`` (automatic without CUDA) plans the demo at 4 mm with a tiny memory target (24x28x24 patches),
keeps its planned patch, times 2 iterations without compile, a 40x48x40 volume and 2 sampling steps: the whole
path runs end to end in CI (tests/training/test_gpu_suite.py), the figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _demo import prepare_demo  # noqa: E402

logger = logging.getLogger("benchmark.gpu_suite")

TRAIN_FAMILIES = ("regression", "pix2pix", "cyclegan", "srgan", "autoencoder", "ldm", "ldm_controlnet", "bbdm",
                  "flow_matching")
WINDOW_FAMILIES = ("regression", "pix2pix", "cyclegan", "srgan")
LATENT_FAMILIES = ("ldm", "ldm_controlnet", "bbdm", "flow_matching")


def plans_for_patch(plans: Any, patch: list[int] | None) -> Any:
    """The dataset's plan with ``3d_fullres`` re-planned for ``patch`` (networks and families as the planner sizes
    them at 80 GB, so nothing is shrunk); its data identifier is kept, so the loader reads the same arrays."""
    from autotrans.planning.families import plan_families
    from autotrans.planning.planner import UNetMemoryModel, plan_configuration
    from autotrans.planning.plans import Plans

    if not patch:
        return plans
    data = json.loads(json.dumps(plans.data))
    old = data["configurations"]["3d_fullres"]
    n_in = len(plans.source_modalities)
    cfg = plan_configuration(np.ones(3), np.array(patch, dtype=float), 1e12, UNetMemoryModel(n_in, 1), 80.0, "suite")
    for key in ("resampling", "data_identifier", "spacing"):
        if key in old:
            cfg[key] = old[key]
    cfg["patch_size"] = list(patch)
    cfg["families"] = plan_families(cfg, n_in, 1, 1e12, 80.0)
    data["configurations"]["3d_fullres"] = cfg
    return Plans(data)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_row(name: str, plans: Any, fold: Any, device: torch.device, compile_: bool, iterations: int, warmup: int,
              workers: int) -> dict[str, Any]:
    """Median step time, data-wait fraction and peak memory of ``iterations`` steps fed by the real loader."""
    from autotrans.families.base import get_family
    from autotrans.training.augment import AugmentationSettings
    from autotrans.training.data import device_augmentation, make_train_augmenter
    from autotrans.training.settings import mixed_precision

    cfg = plans.configuration("3d_fullres")
    cls = get_family(name)
    batch = int(cls.planned_batch_size(cfg) or cfg.batch_size)
    torch.manual_seed(0)
    fam = cls(plans, cfg, {"num_epochs": 10}, device)
    fam.autocast_dtype, scaler = mixed_precision(device)
    fam.scaler = torch.amp.GradScaler("cuda") if scaler else None
    fam.build()
    fam.configure_optimizers()
    if compile_:
        fam.wrap_networks(torch.compile)
    settings = AugmentationSettings(on_device=device.type == "cuda")
    fold.plans, fold.configuration = plans, cfg  # the device augmentation reads the patch from here
    stream = make_train_augmenter(fold, batch, 0, fam.paired_batches, 0, workers, settings,
                                  patch_size=list(cfg.patch_size))
    aug = device_augmentation(fold, settings, 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waits, steps = [], []
    try:
        for it in range(warmup + iterations):
            t0 = time.perf_counter()
            raw = next(stream)
            keys = ("source", "target", "mask", "target_mask", "lesions")
            if aug is not None:  # the GPU path's workers send per-sample boxes and the parameters they drew
                b = aug.to_device(raw, device)
            else:
                b = {k: torch.from_numpy(np.ascontiguousarray(raw[k])).to(device) for k in keys if k in raw}
            sync(device)
            t1 = time.perf_counter()
            if aug is not None:
                b = aug(b, int(raw["batch_index"]))
            b.pop("lesions", None)
            fam.train_step(b, it)
            sync(device)
            t2 = time.perf_counter()
            if it >= warmup:
                waits.append(t1 - t0)
                steps.append(t2 - t0)
    finally:
        if hasattr(stream, "_finish"):
            stream._finish()
    est = (cfg.data.get("families", {}).get(name) or {}).get("estimated_memory_gb")
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"family": name, "batch": batch, "compile": compile_, "step_ms": 1e3 * float(np.median(steps)),
            "data_wait": sum(waits) / sum(steps), "peak_gb": peak, "estimated_gb": est}


def window_row(name: str, plans: Any, device: torch.device, volume: list[int]) -> dict[str, Any]:
    from autotrans.families.base import get_family
    from autotrans.inference.windows import sliding_window

    cfg = plans.configuration("3d_fullres")
    fam = get_family(name)(plans, cfg, {"num_epochs": 10}, device)
    fam.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    fam.build()
    fam.eval()
    vol = torch.rand(len(plans.source_modalities), *volume) * 2 - 1

    def predict(x: torch.Tensor) -> torch.Tensor:
        with fam.autocast():
            return fam.predict_patch(x)

    with torch.inference_mode():
        sliding_window(vol[:, :cfg.patch_size[0], :cfg.patch_size[1], :cfg.patch_size[2]], predict, cfg.patch_size,
                       device=device)  # warm-up (cuDNN autotuning)
        sync(device)
        t0 = time.perf_counter()
        sliding_window(vol, predict, cfg.patch_size, device=device)
        sync(device)
    return {"family": name, "volume": volume, "seconds": time.perf_counter() - t0}


def latent_row(name: str, plans: Any, device: torch.device, volume: list[int], steps: int | None = None
               ) -> dict[str, Any]:
    from autotrans.families.base import get_family
    from autotrans.inference.latent import predict_latent_volume

    cfg = plans.configuration("3d_fullres")
    torch.manual_seed(0)
    fam = get_family(name)(plans, cfg, {"num_epochs": 10, **({"sampling_steps": steps} if steps else {})}, device)
    bf16 = device.type == "cuda"
    fam.autocast_dtype = torch.bfloat16 if bf16 else None
    fam.build()
    fam.eval()
    ae_patch = cfg.data["families"]["latent"]["autoencoder"]["patch_size"]
    x = torch.rand(1, len(plans.source_modalities), *ae_patch, device=device) * 2 - 1
    with torch.inference_mode():
        fam.encode_source(x)
        sync(device)
        t0 = time.perf_counter()
        z = fam.encode_source(x)
        sync(device)
        t1 = time.perf_counter()
        fam.decode_target(z)
        sync(device)
        t2 = time.perf_counter()
        vol = torch.rand(len(plans.source_modalities), *volume) * 2 - 1
        g = torch.Generator(device=device).manual_seed(0)
        t3 = time.perf_counter()
        _, timing = predict_latent_volume(vol, fam, device=device, generator=g, bf16=bf16)
        sync(device)
    return {"family": name, "steps": int(fam.sampling_steps), "volume": volume, "seconds": time.perf_counter() - t3,
            "tiles": timing.get("tiles"), "encode_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)}


def markdown(report: dict[str, Any]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    out = [f"Device: {report['device']}; torch {report['torch']}; patch {report['patch']}; {report['date']}.", "",
           "| family | batch | step ms (eager) | step ms (compile) | data wait | peak GB | estimated GB |",
           "|---|---|---|---|---|---|---|"]
    by = {}
    for r in report["train"]:
        by.setdefault(r["family"], {})[r["compile"]] = r
    for name, rs in by.items():
        e, c = rs.get(False), rs.get(True)
        base = e or c
        out.append(f"| {name} | {base['batch']} | {f(e and e['step_ms'], '.1f')} | {f(c and c['step_ms'], '.1f')} | "
                   f"{100 * base['data_wait']:.0f} % | {f(base['peak_gb'], '.2f')} | "
                   f"{f(base['estimated_gb'], '.2f')} |")
    out += ["", "| family | sliding window s / volume |", "|---|---|"]
    out += [f"| {r['family']} | {r['seconds']:.2f} ({'x'.join(map(str, r['volume']))}) |" for r in report["window"]]
    out += ["", "| family | steps | sampling s / volume | encode ms / patch | decode ms / patch |",
            "|---|---|---|---|---|"]
    out += [f"| {r['family']} | {r['steps']} | {r['seconds']:.2f} ({'x'.join(map(str, r['volume']))}) | "
            f"{r['encode_ms']:.1f} | {r['decode_ms']:.1f} |" for r in report["latent"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, default=Path("/tmp/autotrans_gpu_suite"), help="where the demo is planned")
    p.add_argument("-d", "--dataset", default=None, help="a planned, preprocessed dataset instead of the demo")
    p.add_argument("-device", "--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="CPU fallback: tiny plan, planned patch, 2 iterations")
    p.add_argument("--patch", type=int, default=128, help="cubic patch the families are planned for (128)")
    p.add_argument("--volume", type=int, nargs=3, default=[256, 256, 192])
    p.add_argument("--families", nargs="+", default=list(TRAIN_FAMILIES))
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=min(max((os.cpu_count() or 2) - 1, 1), 12))
    p.add_argument("--no_compile", action="store_true")
    p.add_argument("--md", type=Path, default=Path("gpu_suite.md"))
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(a.device)
    tiny = a.tiny or device.type != "cuda"
    if tiny:
        a.iterations, a.warmup, a.no_compile, a.volume = min(a.iterations, 2), 1, True, [40, 48, 40]
        a.workers = min(a.workers, 1)
    import autotrans.families  # noqa: F401  (registers the families)
    from autotrans.training.data import locate_fold_data

    dataset = a.dataset or prepare_demo(a.demo, tiny)
    fold = locate_fold_data(dataset, "3d_fullres", "all")
    plans = plans_for_patch(fold.plans, None if tiny else [a.patch] * 3)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "patch": "x".join(map(str, plans.configuration("3d_fullres").patch_size)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": tiny, "train": [], "window": [],
        "latent": []}
    t_start = time.perf_counter()
    for name in a.families:
        for compile_ in (False,) if a.no_compile else (False, True):
            report["train"].append(train_row(name, plans, fold, device, compile_, a.iterations, a.warmup, a.workers))
            logger.info("train %s compile=%s: %s", name, compile_, report["train"][-1])
    for name in (n for n in WINDOW_FAMILIES if n in a.families):
        report["window"].append(window_row(name, plans, device, a.volume))
        logger.info("window %s: %.2f s", name, report["window"][-1]["seconds"])
    for name in (n for n in LATENT_FAMILIES if n in a.families):
        report["latent"].append(latent_row(name, plans, device, a.volume, 2 if tiny else None))
        logger.info("latent %s: %s", name, report["latent"][-1])
    report["seconds"] = time.perf_counter() - t_start
    a.md.write_text(markdown(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
