"""MODEL_CARD.md: what a colleague needs to judge and use a shared model, only from what autotrans recorded."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

import autotrans
from autotrans.inference.models import DEFAULT_CHECKPOINT, ModelSpec
from autotrans.paths import results_root
from autotrans.planning.plans import Plans
from autotrans.sharing.layout import FoldRecord

NOT_RECORDED = "not recorded"


def _root_relative(values: dict[str, Any], root: Path) -> dict[str, Any]:
    """``values`` with absolute paths into ``root`` made root-relative (the card names no local folder)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    out = {}
    for k, v in values.items():
        if isinstance(v, str) and Path(v).is_absolute() and str(Path(v).resolve()).startswith(prefix):
            v = str(Path(v).resolve())[len(prefix):]
        out[k] = v
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return " x ".join(_fmt(x) for x in v) if v and all(isinstance(x, (int, float)) for x in v) else str(list(v))
    return NOT_RECORDED if v is None or v == "" else str(v)


def _channel(c: dict[str, Any]) -> str:
    name, mod = c.get("name"), c.get("modality")
    return f"{name} ({mod})" if name and mod and name != mod else str(name or mod or "?")


def _schedule(state: dict[str, Any], rec: FoldRecord) -> str:
    settings = (state.get("init_args") or {}).get("settings") or {}
    world = (state.get("init_args") or {}).get("world_size")
    epochs = state.get("epoch")
    planned = settings.get("num_epochs", (state.get("overrides") or {}).get("num_epochs"))
    its = settings.get("iterations")
    parts = [f"{_fmt(epochs)} of {_fmt(planned)} epochs" if epochs is not None else f"epochs: {NOT_RECORDED}"]
    if its is not None:
        parts.append(f"{its} iterations/epoch" + (f" ({int(epochs) * int(its)} iterations done)"
                                                   if epochs is not None else ""))
    if settings.get("batch_size") is not None:
        parts.append(f"batch {settings['batch_size']}" + (f" over {world} GPU(s)" if world and world > 1 else ""))
    if settings.get("device"):
        parts.append(f"device {settings['device']}")
    if settings.get("seed") is not None:
        parts.append(f"seed {settings['seed']}")
    if settings.get("pretrained_weights"):
        parts.append("initialised from pretrained weights")
    if rec.runs:
        parts.append(f"{rec.runs} training invocation(s)" + (" (continued with --c)" if rec.runs > 1 else ""))
    return "; ".join(parts)


def _validation(rec: FoldRecord, chk: str) -> str:
    s = rec.summary
    if not s:
        return NOT_RECORDED + " (no validation/summary.json)"
    mean = s.get("mean") or {}
    if not mean:
        return NOT_RECORDED + " (the final validation scored no case)"
    text = ", ".join(f"{k.upper()} {_fmt(v)}" for k, v in mean.items())
    where = f"{len(s.get('cases') or {})} case(s), {s.get('unit', 'unit ' + NOT_RECORDED)}"
    tta = s.get("mirror_tta_axes")
    where += f", mirror TTA axes {tta}" if tta else ", no TTA"
    if s.get("checkpoint") and s.get("checkpoint") != chk:
        where += f"; computed with {s['checkpoint']}, not {chk}"
    return f"{text} ({where})"


def write_model_card(spec: ModelSpec, plans: Plans, dataset_json: dict[str, Any], records: list[FoldRecord],
                     checkpoints: list[str], full_checkpoints: bool, exported_at: str,
                     zip_name: str = "model.zip") -> str:
    """MODEL_CARD.md: what a colleague needs to judge and use the model, only from what autotrans recorded."""
    cfg = plans.configuration(spec.configuration)
    arch = cfg.data.get("architecture") or {}
    kw = arch.get("arch_kwargs") or {}
    norm = plans.data.get("normalization") or {}
    sources = plans.data.get("source_channels") or []
    target = plans.data.get("target") or {}
    first = next(iter(records[0].states.values())) if records and records[0].states else {}
    fam_section = (cfg.data.get("families") or {}).get(spec.model) or {}
    L: list[str] = []
    add = L.append
    add(f"# {spec.model} model: {dataset_json.get('name', spec.dataset)} "
        f"({' + '.join(_channel(c) for c in sources)} -> {_channel(target)})")
    add("")
    add(f"Exported by autotrans {autotrans.__version__} (torch {torch.__version__}) on {exported_at}. Every value "
        f"below was recorded by autotrans while planning and training; '{NOT_RECORDED}' marks what it did not record.")
    add("")
    add("## Dataset")
    add("")
    add(f"- Folder: `{spec.dataset}`")
    for key, label in (("name", "Name"), ("description", "Description"), ("licence", "Licence"),
                       ("reference", "Reference"), ("release", "Release")):
        if key in dataset_json or key in ("name", "licence", "reference"):
            add(f"- {label}: {_fmt(dataset_json.get(key))}")
    paired = "yes" if plans.data.get("paired", True) else "no"
    add(f"- Training cases: {_fmt(dataset_json.get('numTraining'))}; paired: {paired}")
    add("")
    add("## Direction and units")
    add("")
    src_norm = norm.get("source") or []
    for i, c in enumerate(sources):
        n = src_norm[i] if i < len(src_norm) else {}
        add(f"- Source channel {i} (`_{i:04d}` files): {_channel(c)}; normalization `{n.get('scheme', '?')}`, "
            f"{n.get('unit', NOT_RECORDED)}")
    t = norm.get("target") or {}
    add(f"- Target: {_channel(target)}; normalization `{t.get('scheme', '?')}`, {t.get('unit', NOT_RECORDED)}")
    add(f"- Predictions are written in: {norm.get('target_output_scale', t.get('unit', NOT_RECORDED))}")
    add(f"- Input file ending: {_fmt(dataset_json.get('file_ending'))}")
    add("")
    add("## Plan")
    add("")
    add(f"- Plans `{plans.name}`, configuration `{spec.configuration}` (planner: "
        f"{_fmt(plans.data.get('experiment_planner_used'))}; planned with autotrans "
        f"{_fmt(plans.data.get('autotrans_version'))})")
    add(f"- Spacing (mm, transposed axes {plans.transpose_forward}): {_fmt(cfg.data.get('spacing'))}")
    add(f"- Patch size: {_fmt(cfg.data.get('patch_size'))}; batch size: {_fmt(cfg.data.get('batch_size'))}"
        + (f" (this model's section: {fam_section['batch_size']})" if "batch_size" in fam_section else ""))
    net = str(arch.get("network_class_name", NOT_RECORDED)).rsplit(".", 1)[-1]
    feats = kw.get("features_per_stage")
    add(f"- Network: {net}, {_fmt(kw.get('n_stages'))} stages, features per stage "
        f"{', '.join(map(str, feats)) if feats else NOT_RECORDED}")
    add("")
    add("## Model and training")
    add("")
    add(f"- Family: `{spec.model}`; folder `{spec.folder.name}`")
    add(f"- Overrides the run used: `{first.get('overrides', NOT_RECORDED)}`")
    hp = next((r.debug.get("family_hparams") for r in records if r.debug and r.debug.get("family_hparams")), None)
    hp = _root_relative(hp, results_root()) if hp else hp
    add(f"- Resolved hyperparameters: `{hp}`" if hp else f"- Resolved hyperparameters: {NOT_RECORDED}")
    dbg = next((r.debug for r in records if r.debug), None) or {}
    autocast = dbg.get("autocast_dtype")
    autocast = "off (fp32)" if autocast == "None" else _fmt(autocast)
    add(f"- Trained with torch {_fmt(dbg.get('torch'))}, Python {_fmt(dbg.get('python'))}, autocast {autocast}")
    axes = first.get("mirror_axes")
    add(f"- Mirror axes trained (mirror TTA at prediction): {', '.join(map(str, axes)) if axes else 'none'}")
    add(f"- Folds included: {', '.join(r.fold for r in records)}; checkpoint(s): {', '.join(checkpoints)}")
    add("- Checkpoints are " + ("complete (with optimizer/scheduler/RNG state: `--c` can continue them)"
                                if full_checkpoints else
                                "stripped to the networks and what inference reads (no optimizer, scheduler or RNG "
                                "state): they predict and serve as `-pretrained_weights`, but cannot be continued "
                                "with `--c`"))
    add("")
    add("| fold | checkpoint | training schedule actually run | best patch-validation MAE EMA | "
        "final validation (mean) |")
    add("|---|---|---|---|---|")
    for rec in records:
        for chk, state in rec.states.items():
            best = state.get("best_ema")
            best = _fmt(best) + (f" {state['val_unit']}" if state.get("val_unit") else " (unit not recorded)") \
                if isinstance(best, float) and math.isfinite(best) else NOT_RECORDED
            add(f"| {rec.fold} | {chk} | {_schedule(state, rec)} | {best} | {_validation(rec, chk)} |")
    add("")
    add("The patch-validation MAE is the moving average, over epochs, of the MAE on fixed validation patches that "
        "picked `checkpoint_best.pth`; the final validation predicts each validation case whole, as "
        "`autotrans_predict` does.")
    add("")
    add("## Install and predict")
    add("")
    add("```bash")
    add("export autotrans_results=/path/to/results   # where your trained models live")
    add(f"autotrans_install_model {zip_name}   # --overwrite replaces an installed copy")
    add(f"autotrans_predict -i INPUT_FOLDER -o OUTPUT_FOLDER {spec.flags()} -f {' '.join(r.fold for r in records)}"
        + (f" -chk {checkpoints[0]}" if checkpoints[0] != DEFAULT_CHECKPOINT else ""))
    add("```")
    add("")
    add(f"Input cases are named `CASE_0000{dataset_json.get('file_ending', '.nii.gz')}` (one file per source channel).")
    add("")
    return "\n".join(L)


