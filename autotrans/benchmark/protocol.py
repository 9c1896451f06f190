"""The protocol section of the report: what was run, with which software, seeds, plans and machine.

A benchmark number without its protocol cannot be reproduced or compared, so the report always ends here.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
from typing import Any

from autotrans.paths import preprocessed_root


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("autotrans", "torch", "monai", "numpy", "scipy", "SimpleITK", "scikit-posthocs"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine(include_hostname: bool = False) -> dict[str, Any]:
    """What the protocol says about the machine; the hostname only when asked, since a report is shared and a
    hostname names an internal machine without helping anyone reproduce a number."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    if include_hostname:
        info["hostname"] = platform.node()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def plan_hashes(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """sha1 of each dataset's current plans (``plans_hash``) and of the plans each checkpoint was trained with."""
    from autotrans.planning.planner import plans_hash
    from autotrans.utils.files import load_json

    out: dict[str, dict[str, Any]] = {}
    for r in results:
        entry = out.setdefault(r["dataset"], {"plans_name": r["plans_name"], "checkpoints": set()})
        entry["checkpoints"].add(r["training"].get("plans_sha1"))
    for dataset, entry in out.items():
        f = preprocessed_root() / dataset / f"{entry['plans_name']}.json"
        entry["current"] = plans_hash(load_json(f)) if f.is_file() else None
        entry["checkpoints"] = sorted(str(x) for x in entry["checkpoints"])
    return out


def protocol_blocks(results: list[dict[str, Any]], include_hostname: bool = False) -> list[tuple]:
    v = versions()
    m = machine(include_hostname)
    hashes = plan_hashes(results)
    flags = {r["inference"].get("mirror_tta", True) for r in results if not r.get("baseline")}  # baselines: no TTA
    tta = "on" if flags == {True} else ("off" if flags == {False} else "on for some tasks, off for others")
    blocks: list[tuple] = [
        ("h2", "Protocol"),
        ("p", "Evaluation standard: autotrans (documentation/evaluation.md): MAE, MSE, PSNR, SSIM and MS-SSIM inside "
         "the binarized mask, in physical units (CT in HU on [-1024, 3071]; PET in SUV on [0, the plan's ceiling]; "
         "MR in the plan's normalized scale on [-1, 1], because an MR prediction has no absolute scale). Lesion "
         "level: 26-connected components of the reference lesion map, stratified by volume (<0.5 mL, 0.5-5 mL, "
         ">5 mL). Predictions: autotrans_predict's chain, the same for every model (sliding window, step 0.5, "
         f"Gaussian blending; mirror TTA over the axes each model trained mirrored: {tta}; folds averaged in physical "
         "units), prediction seed 0. Splits: splits_final.json (5-fold KFold, seed 12345; leave-one-out below 5 "
         "cases)."),
        ("table", ["software", "version"], [[k, val] for k, val in v.items()]),
        ("table", ["machine", "value"], [[k, ", ".join(val) if isinstance(val, list) else str(val)]
                                         for k, val in m.items()]),
        ("table", ["dataset", "plans", "plans sha1 (current)", "plans sha1 of the checkpoints"],
         [[d, e["plans_name"], e["current"] or "–", ", ".join(e["checkpoints"])] for d, e in hashes.items()]),
    ]
    blocks += sizing_blocks(results)
    rows = []
    from autotrans.benchmark.summary import model_order

    order = model_order({r["model"] for r in results}, {r["model"] for r in results if r.get("baseline")})
    for r in sorted(results, key=lambda r: (r["dataset"], order.index(r["model"]), int(r["fold"]))):
        t = r["training"]
        stages = "; ".join(f"{k} {v['epochs']} x {v['iterations_per_epoch']} (seed {v.get('seed')})"
                           for k, v in (t.get("stages") or {}).items()) or "–"
        rows.append([r["dataset"], f"*{r['model']} (baseline)*" if r.get("baseline") else r["model"], r["fold"],
                     str(t["epochs"]), str(t["iterations_per_epoch"]),
                     str(t["total_iterations"]), str(t.get("batch_size")), str(t.get("seed")), stages,
                     ", ".join(r["cases"])])
    blocks += [("p", "Trained schedule per task, read from checkpoint_final.pth (epochs done x iterations per "
                "epoch), training seed, and the held-out cases evaluated."),
               ("table", ["dataset", "model", "fold", "epochs", "iterations/epoch", "iterations", "batch", "seed",
                          "shared stages", "held-out cases"], rows)]
    return blocks


def sizing_blocks(results: list[dict[str, Any]]) -> list[tuple]:
    """What each model got from the plan (one sizing rule for all: documentation/planning.md, "Fair sizing")."""
    from autotrans.families.base import available_families, get_family
    from autotrans.planning.families import SUMMARY_HEADER, summary_rows
    from autotrans.utils.files import load_json

    blocks: list[tuple] = []
    for dataset in sorted({r["dataset"] for r in results}):
        rs = [r for r in results if r["dataset"] == dataset]
        f = preprocessed_root() / dataset / f"{rs[0]['plans_name']}.json"
        cfg = load_json(f)["configurations"].get(rs[0]["configuration"], {}) if f.is_file() else {}
        models = {r["model"] for r in rs}
        models |= {dep for m in list(models) if m in available_families() for dep, _ in get_family(m).dependencies}
        rows = [row for row in summary_rows(cfg.get("families", {})) if row[0] in models]
        if not rows:
            continue
        budget = cfg["families"].get("budget", {})
        blocks += [("p", f"{dataset}: what each model got from the plan ({rs[0]['configuration']}, patch "
                    f"{'x'.join(map(str, cfg.get('patch_size', [])))}, GPU memory target "
                    f"{budget.get('gpu_memory_target_gb', '?')} GB). One rule for all: the budget is the planned "
                    "U-Net's (nnU-Net's rule); each training step's activation memory is counted by the same "
                    "model; generators are sized to the U-Net's parameter count where the method has its own "
                    "architecture."), ("table", SUMMARY_HEADER, rows)]
    return blocks
