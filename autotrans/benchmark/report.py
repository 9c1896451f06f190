"""The benchmark report: ``results.json``, ``report.md`` and a self-contained ``report.html``.

Content is built once as a list of blocks (headings, paragraphs, tables, images) and rendered twice, so the
markdown and the HTML never disagree. Images are PNGs in ``report_files/`` (linked from the markdown) and
embedded as base64 in the HTML, which therefore opens anywhere on its own.
"""
from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.benchmark import figures
from autotrans.benchmark.grid import FULL_EPOCHS, FULL_ITERATIONS
from autotrans.benchmark.protocol import protocol_blocks
from autotrans.benchmark.summary import (
    baseline_names,
    dataset_unit,
    fmt,
    fmt_duration,
    headline,
    is_baseline_result,
    model_label,
    model_order,
    summary_cell,
)
from autotrans.errors import AutotransError
from autotrans.evaluation.standards import STANDARD_METRICS
from autotrans.evaluation.strict_json import load_results, save_strict_json
from autotrans.utils.files import atomic_path

logger = logging.getLogger(__name__)

METRICS = list(STANDARD_METRICS["autotrans"])
STRATA = ("<0.5 mL", "0.5-5 mL", ">5 mL", "all")
MIN_BOX_N = figures.MIN_BOX_N
Block = tuple  # ("h1"|"h2"|"h3"|"p"|"warn", text) | ("table", headers, rows) | ("img", path, caption)


def task_folder(output: Path, r: dict[str, Any]) -> Path:
    key = f"{r['model']}__{r['plans_name']}__{r['configuration']}"
    return output / "tasks" / r["dataset"] / key / f"fold_{r['fold']}"


def pool(output: Path, results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> model -> {cases: {case: metrics}, lesions: [rows], tasks: [results], dose_cases: {case: dose
    metrics}, dose: [dose.json per fold], seg_cases: {case: segmentation-consistency metrics}, segmentation:
    [segmentation sections per fold]} (folds pooled by case)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r.get("skipped"):  # a baseline that makes no sense for this dataset: a note, no row
            continue
        entry = out.setdefault(r["dataset"], {}).setdefault(
            r["model"], {"cases": {}, "lesions": [], "tasks": [], "dose_cases": {}, "dose": [], "seg_cases": {},
                         "segmentation": []})
        folder = task_folder(output, r)
        entry["cases"].update(load_results(folder / r["evaluation"])["cases"])  # strict JSON back to inf/NaN
        if r.get("dose"):
            dose = load_results(folder / r["dose"])
            entry["dose_cases"].update(dose["cases"])
            entry["dose"].append(dose)
        if r.get("segmentation"):
            seg = load_results(folder / r["segmentation"])
            entry["seg_cases"].update(seg["cases"])
            entry["segmentation"].append(seg["segmentation"])
        if r.get("evaluation_lesions"):
            for case, rows in load_results(folder / r["evaluation_lesions"]).get("lesions", {}).items():
                entry["lesions"] += [{"case": case, **row} for row in rows]
        entry["tasks"].append(r)
    for dataset, models in out.items():  # one model order in every table and figure
        out[dataset] = {m: models[m] for m in model_order(models, baseline_names(models))}
    return out


def short_training_statement(results: list[dict[str, Any]]) -> str | None:
    """Plain words when any model trained less than the full nnU-Net schedule."""
    full = FULL_EPOCHS * FULL_ITERATIONS
    results = [r for r in results if not r.get("skipped") and not is_baseline_result(r)]  # baselines do not train
    short = [r for r in results if (r["training"].get("total_iterations") or 0) < full]
    if not short:
        return None
    schedules = sorted({(r["training"]["epochs"], r["training"]["iterations_per_epoch"]) for r in short})
    text = ", ".join(f"{e} epochs x {i} iterations = {e * i} iterations" for e, i in schedules)
    return (f"Training was short: {len(short)} of {len(results)} task(s) trained only {text}; a real run uses "
            f"{FULL_EPOCHS} x {FULL_ITERATIONS} = {full:,} iterations. These numbers show that the pipeline works "
            "end to end, not the quality of the models.")


def metric_label(metric: str) -> str:
    """A column header that says which way is better (MAE ↓, PSNR ↑)."""
    return f"{figures.METRIC_LABELS[metric]} {'↑' if figures.HIGHER_IS_BETTER[metric] else '↓'}"


def metric_table(models: dict[str, dict[str, Any]]) -> Block:
    """One row per model: n, then per metric "mean ± std (median)", or the values themselves below
    :data:`MIN_BOX_N` cases (a std of one case is 0 and would suggest a precision there is not)."""
    headers = ["model", "n (cases)", *[metric_label(m) for m in METRICS]]
    return ("table", headers, summary_rows(models, "cases", METRICS))


def summary_rows(models: dict[str, dict[str, Any]], cases_key: str, columns: list[str]) -> list[list[str]]:
    """Rows of a per-model table: the model (baselines marked), its number of cases, then one
    :func:`summary_cell` per column over its per-case values (``cases_key``: image, dose or segmentation)."""
    baselines = baseline_names(models)
    rows = []
    for m, e in models.items():
        row = [model_label(m, baselines), str(len(e[cases_key]))]
        for col in columns:
            v = np.array([c[col] for c in e[cases_key].values() if c.get(col) is not None], dtype=float)
            row.append(summary_cell(v, MIN_BOX_N))
        rows.append(row)
    return rows


def small_n_note(models: dict[str, dict[str, Any]]) -> str | None:
    """Why some cells list values and some plot columns have no box (None when every model has enough cases)."""
    counts = {len(e["cases"]) for e in models.values()}
    few = sorted(n for n in counts if n < MIN_BOX_N)
    if not few:
        return None
    who = f"Only {few[0]} held-out case(s) per model" if len(counts) == 1 else \
        f"Some models have fewer than {MIN_BOX_N} held-out cases ({', '.join(map(str, few))})"
    return (f"{who}: their cells list the per-case values (comma-separated) instead of mean ± std (median), and "
            f"the figure shows their points without a box; a spread or a box needs at least {MIN_BOX_N} cases.")


def statistics_blocks(dataset: str, models: dict[str, dict[str, Any]], files: Path,
                      stats_out: dict[str, Any], metrics: list[str] | None = None, cases_key: str = "cases",
                      labels: dict[str, str] | None = None, title: str = "Statistics across models",
                      stats_key: str | None = None) -> list[Block]:
    """Friedman / Nemenyi CD diagram / Wilcoxon-Holm on the cases every model predicted (folds pooled).

    The image metrics by default; the dose section passes its own ``metrics`` (from ``cases_key``), ``labels``
    and ``stats_key`` (its entry under the dataset in statistics.json), so every section is tested alike."""
    from autotrans.evaluation.statistics import compare_runs, draw_cd_diagram

    metrics = METRICS if metrics is None else metrics
    labels = {**figures.METRIC_LABELS, **(labels or {})}
    names = list(models)
    baselines = baseline_names(models)
    common = sorted(set.intersection(*[set(e[cases_key]) for e in models.values()])) if names else []
    blocks: list[Block] = [("h3", title)]

    def store(value: Any, metric: str | None = None) -> None:
        slot = stats_out.setdefault(dataset, {})
        if stats_key is not None:
            slot = slot.setdefault(stats_key, {})
        if metric is None:
            slot.update(value)
        else:
            slot[metric] = value

    if len(names) < 2 or len(common) < 2:
        reason = (f"needs at least 2 models and 2 cases that every model predicted; this run has {len(names)} "
                  f"model(s) and {len(common)} shared case(s)")
        blocks.append(("p", f"Not computed: {reason}."))
        store({"skipped": reason, "n_models": len(names), "n_cases": len(common)})
        return blocks
    blocks.append(("p", f"{len(common)} cases pooled over folds. Friedman and the Nemenyi critical-difference "
                   "diagram need 3 or more models; pairwise Wilcoxon signed-rank tests are Holm-corrected per "
                   "metric; effect size: matched-pairs rank-biserial correlation (+1: A larger on every case)."))
    for metric in metrics:
        runs = [{"standard": "autotrans", "cases": {c: models[m][cases_key][c] for c in common},
                 "aggregate": {metric: {}}} for m in names]
        label = labels.get(metric, metric)
        try:
            res = compare_runs(runs, names=names, metrics=[metric])["metrics"][metric]
        except AutotransError as e:
            blocks.append(("p", f"{label}: not computed ({str(e).splitlines()[0]})"))
            store({"skipped": str(e).splitlines()[0], "n_cases": len(common)}, metric)
            continue
        store(res, metric)
        fr = res.get("friedman")
        head = f"{label} ({res['direction']}, n = {res['n_cases']})"
        if fr is not None:
            head += f": Friedman χ² = {fmt(fr['statistic'])}, p = {fmt(fr['p'], 3)}"
        blocks.append(("p", head))
        blocks.append(("table", ["model", "mean", "95% bootstrap CI", "mean rank"],
                       [[model_label(m, baselines), fmt(res["mean"][m]),
                         f"[{fmt(res['ci95'][m][0])}, {fmt(res['ci95'][m][1])}]", fmt(res["mean_rank"][m], 3)]
                        for m in names]))
        blocks.append(("table", ["A", "B", "mean A−B", "Wilcoxon p", "Holm p", "rank-biserial", "significant"],
                       [[model_label(w["a"], baselines), model_label(w["b"], baselines), fmt(w["mean_diff"]),
                         fmt(w["p"], 3), fmt(w["p_holm"], 3), fmt(w["rank_biserial"], 3),
                         "yes" if w["significant"] else "no"] for w in res["wilcoxon"]]))
        if fr is not None:
            png = files / f"{dataset}_cd_{metric.replace('%', 'pct')}.png"
            try:
                draw_cd_diagram(res, metric, png)
                blocks.append(("img", png, f"{dataset}: critical-difference diagram, {label}"))
            except Exception as e:  # a plotting failure must not cost the whole report
                logger.warning("%s %s: CD diagram failed: %s", dataset, metric, e)
    return blocks


#: dose table columns per beam type: metric suffix -> header (↑/↓: which way is better)
DOSE_COLUMNS = {
    "gamma_3%3mm": "γ 3%/3mm (%) ↑", "gamma_2%2mm": "γ 2%/2mm (%) ↑", "gamma_1%1mm": "γ 1%/1mm (%) ↑",
    "target_D95_absdiff_pct": "target |ΔD95| (% Rx) ↓", "target_Dmean_absdiff_pct": "target |ΔDmean| (% Rx) ↓",
    "cutoff_mae_pct": "MAE > 10% dose (% Rx) ↓",
}
#: the dose metrics tested across models (one pass rate, one DVH point per beam type)
DOSE_TESTED = ("gamma_2%2mm", "target_D95_absdiff_pct")


def dose_blocks(dataset: str, models: dict[str, dict[str, Any]], files: Path,
                stats_out: dict[str, Any]) -> list[Block]:
    """Dose of every model's synthetic CTs: pass rates and DVH differences per beam type, then the statistics."""
    with_dose = {m: e for m, e in models.items() if e.get("dose")}
    if not with_dose:
        return []
    first = next(iter(with_dose.values()))["dose"][0]
    settings = first.get("settings", [])
    targets = sorted({d.get("target", "") for e in with_dose.values() for r in e["dose"]
                      for c in r.get("case_details", {}).values() for d in c.values() if isinstance(d, dict)})
    blocks: list[Block] = [("h3", "Dose: plan on the real CT, recompute on the synthetic CT")]
    desc = "; ".join(f"{s['modality'].capitalize()}: {s['engine']}, "
                     f"gantry {', '.join(f'{a:g}' for a in s['gantry_angles'])}°, {s['dose_grid_mm']:g} mm dose grid, "
                     f"target mean {s['prescription_gy']:g} Gy (Rx)"
                     for s in settings)
    blocks.append(("p", f"Per case, a plan is optimised on the real CT and the same beams and weights are recomputed "
                   f"on each model's synthetic CT (the SynthRAD protocol; plans shared by all models). {desc}. "
                   f"Target: {'; '.join(t for t in targets if t) or 'see dose.json'}. Global gamma against the "
                   "real-CT dose with a 10 % low-dose cut-off; DVH differences in percent of the prescription. "
                   "Pencil-beam engines, not Monte Carlo: see documentation/dose.md for the limits."))
    missing = [m for m in models if m not in with_dose]
    if missing:
        blocks.append(("p", f"No dose for {', '.join(missing)} (not evaluated)."))
    for s in settings:
        beam = s["modality"]
        rows = summary_rows(with_dose, "dose_cases", [f"{beam}_{k}" for k in DOSE_COLUMNS])
        blocks.append(("p", f"{beam.capitalize()}:"))
        blocks.append(("table", ["model", "n (cases)", *DOSE_COLUMNS.values()], rows))
    tested = [f"{s['modality']}_{k}" for s in settings for k in DOSE_TESTED]
    labels = {f"{s['modality']}_{k}": f"{s['modality']} {DOSE_COLUMNS[k].rsplit(' ', 1)[0]}"
              for s in settings for k in DOSE_COLUMNS}
    blocks += statistics_blocks(dataset, with_dose, files, stats_out, metrics=tested, cases_key="dose_cases",
                                labels=labels, title="Dose: statistics across models", stats_key="dose")
    return blocks


def segmentation_blocks(dataset: str, models: dict[str, dict[str, Any]], files: Path,
                        stats_out: dict[str, Any]) -> list[Block]:
    """Segmentation consistency: Dice and HD95 between the segmenter's output on the real and on the synthetic
    volume, per label and averaged over labels, then the statistics on the two averages."""
    with_seg = {m: e for m, e in models.items() if e.get("segmentation")}
    if not with_seg:
        return []
    section = next(iter(with_seg.values()))["segmentation"][0]
    desc = section["segmenter"]
    labels = list(section["labels"].values())
    who = (f"nnU-Net v2 model {desc.get('name', desc.get('path', ''))} (folds {desc.get('folds')})"
           if desc.get("kind") == "nnunet" else f"TotalSegmentator task {desc.get('task')}")
    blocks: list[Block] = [("h3", "Segmentation consistency"),
                           ("p", f"The {who} segments each real and each synthetic volume; the real volume's "
                            "segmentation is the reference. Dice ↑ and HD95 (mm, symmetric 95th percentile of "
                            "surface distances) ↓ per label; the means are over the labels present in a case "
                            "(a label absent from both is left out, one absent from the synthetic volume counts "
                            "Dice 0). The segmenter's own errors on real data are part of what this measures.")]
    show = labels if len(labels) <= 6 else []
    columns = ["seg_dice_mean", "seg_hd95_mean", *[f"seg_dice_{lb}" for lb in show]]
    rows = summary_rows(with_seg, "seg_cases", columns)
    blocks.append(("table", ["model", "n (cases)", "mean Dice ↑", "mean HD95 (mm) ↓",
                             *[f"Dice {lb} ↑" for lb in show]], rows))
    blocks += statistics_blocks(dataset, with_seg, files, stats_out, metrics=["seg_dice_mean", "seg_hd95_mean"],
                                cases_key="seg_cases",
                                labels={"seg_dice_mean": "mean Dice", "seg_hd95_mean": "mean HD95 (mm)"},
                                title="Segmentation consistency: statistics across models",
                                stats_key="segmentation")
    return blocks


#: lesion table columns: key in ``stratify``'s output -> readable header
LESION_COLUMNS = {
    "mae": "MAE", "dice": "Dice (thresholded shape)", "hd95_mm": "HD95 (mm)",
    "abs_contrast_rel_err": "|contrast error| (relative)", "abs_suvmax_rel_err": "|SUVmax error| (relative)",
    "abs_suvmean_rel_err": "|SUVmean error| (relative)", "abs_suvpeak_rel_err": "|SUVpeak error| (relative)",
}


def lesion_blocks(models: dict[str, dict[str, Any]]) -> list[Block]:
    """Per-lesion metrics by size class; each cell says over how many of the stratum's lesions it is defined, and
    size classes without lesions are left out."""
    from autotrans.evaluation.lesions import stratify

    with_rows = {m: e["lesions"] for m, e in models.items() if e["lesions"]}
    if not with_rows:
        return []
    baselines = baseline_names(models)
    strata = {model_label(m, baselines): stratify(rows) for m, rows in with_rows.items()}
    present = [k for k in LESION_COLUMNS if any(k in s[name] for s in strata.values() for name in STRATA)]
    rows = []
    for m, s in strata.items():
        for name in STRATA:
            entry = s[name]
            if not entry["n"]:
                continue
            cells = []
            for k in present:
                if k not in entry:
                    cells.append(f"– (0/{entry['n']} lesions)")
                    continue
                value = fmt(entry[k]["mean"]) if entry[k]["n"] < MIN_BOX_N else \
                    f"{fmt(entry[k]['mean'])}, median {fmt(entry[k]['median'])}"
                cells.append(f"{value} ({entry[k]['n']}/{entry['n']} lesions)")
            rows.append([m, name, str(entry["n"]), *cells])
        if sum(1 for name in STRATA[:-1] if s[name]["n"]) == 1:
            rows.pop()  # "all" would repeat the one size class that has lesions
    return [("h3", "Lesion level, by lesion size"),
            ("p", "Per-lesion metrics over the held-out cases that have lesion maps (26-connected components of "
             "the reference map); mean, and the median from 3 lesions on; relative errors as absolute "
             "values. Each cell ends with the lesions it is computed on out of the lesions of its row: Dice and "
             "HD95 compare the lesion's thresholded shape in the reference and in the prediction (PET: 41% of "
             "SUVmax; MR: the local background's mean + k std); Dice is undefined where neither has a voxel above "
             "its threshold near the lesion, HD95 wherever either has none (each lesion's reason is in the "
             "evaluation's lesion rows, <metric>_undefined). Size classes without lesions are not listed, nor \"all\" when it "
             "would repeat the only size class."),
            ("table", ["model", "size class", "lesions", *[LESION_COLUMNS[k] for k in present]], rows)]


def slice_block(dataset: str, models: dict[str, dict[str, Any]], output: Path, files: Path) -> list[Block]:
    """Real vs source vs each model through one point of one held-out case all models predicted, every volume
    resampled onto the reference's display grid (:mod:`autotrans.benchmark.slices`)."""
    from autotrans.benchmark import slices
    from autotrans.io import read_image

    common = sorted(set.intersection(*[set(e["cases"]) for e in models.values()]))
    if not common:
        return []

    def lesion_file(case: str) -> str | None:
        for e in models.values():
            for t in e["tasks"]:
                if case in t["files"]:
                    return t["files"][case]["lesions"]
        return None

    case = next((c for c in common if lesion_file(c)), common[0])
    first = next(t for t in next(iter(models.values()))["tasks"] if case in t["files"])
    info = first["files"][case]
    target, src_mods = first["modality"], list(first["source_modalities"])
    real, geo = read_image(task_folder(output, first) / info["reference"])
    grid = slices.display_grid(geo)

    def show(arr: np.ndarray, g: Any, modality: str | None, label: bool = False) -> np.ndarray:
        bg = 0.0 if label else slices.background_value(modality or target, arr)
        return slices.to_display(arr, g, grid, bg, label=label)

    real_d = show(real, geo, target)
    source, src_geo = read_image(info["source"])
    mask = show(*read_image(info["mask"]), None, label=True) if info["mask"] else None
    lesion = show(*read_image(info["lesions"]), None, label=True) if info["lesions"] else None
    point = figures.focus_point(real_d.shape, lesion, mask)
    win = slices.display_window(target, real_d, mask, "the real target")
    src_win = slices.display_window(src_mods[0], show(source, src_geo, src_mods[0]), mask, "the source")
    rows = [(f"source ({'/'.join(src_mods)})", show(source, src_geo, src_mods[0]), src_win),
            (f"real ({target})", real_d, win)]
    baselines = baseline_names(models)
    for m, e in models.items():
        task = next(t for t in e["tasks"] if case in t["files"])
        pred, pred_geo = read_image(task_folder(output, task) / task["files"][case]["prediction"])
        rows.append((f"{m} (baseline)" if m in baselines else m, show(pred, pred_geo, target), win))
    masked = mask is not None and bool((mask > 0).any())
    if masked:
        # what is scored, and nothing else: outside the evaluation mask the real target and every prediction show
        # the physical background (a model's unscored output in the air of its crop box would otherwise show as
        # a bright frame that ends at the crop box, where the export's background begins)
        bg = slices.background_value(target, real_d)
        rows[1:] = [(label, np.where(mask > 0, arr, bg).astype(np.float32), w) for label, arr, w in rows[1:]]
    where = "the centre of the largest lesion" if lesion is not None and lesion.any() else \
        ("the centre of the mask" if mask is not None else "the volume centre")
    png = files / f"{dataset}_slices.png"
    unit = {"CT": "HU", "CBCT": "HU", "PET": "SUV"}
    units = {label: unit.get(target, "normalized") for label, _, _ in rows[1:]}
    units[rows[0][0]] = unit.get(src_mods[0], "")
    outlined = figures.example_slices(rows, point, grid.GetSpacing(), f"{dataset}: {case} (fold {first['fold']})",
                                      png, lesion, units)
    pos = ", ".join(f"{v:.0f}" for v in slices.physical_point(point, grid))
    caption = (f"{case}: three planes through {where} (LPS {pos} mm), {slices.CONVENTION}. Real target and every "
               f"model share one window: {win.text}; the source ({'/'.join(src_mods)}): {src_win.text}.")
    if masked:
        caption += (" Real target and predictions are shown inside the evaluation mask, where they are scored; "
                    "outside it, the physical background.")
    if outlined:
        caption += " Red: reference lesion outline (real target row)."
    return [("h3", "Example slices"), ("img", png, caption)]


def timing_blocks(results: list[dict[str, Any]]) -> list[Block]:
    """Training and inference cost per task, durations in s, min or h (whichever reads best)."""
    rows = []
    scored = [r for r in results if not r.get("skipped")]
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for r in scored:
        by_dataset.setdefault(r["dataset"], []).append(r)
    ordered = []
    for d in sorted(by_dataset):
        rs = by_dataset[d]
        order = model_order({r["model"] for r in rs}, {r["model"] for r in rs if is_baseline_result(r)})
        ordered += sorted(rs, key=lambda r: (order.index(r["model"]), int(r["fold"])))

    def hours(v: float | None) -> str:
        return fmt_duration(v * 3600 if v is not None else None)

    for r in ordered:
        t, i = r["training"], r["inference"]
        stages = ", ".join(f"{k} {hours(v['hours'])}" for k, v in (t.get("stages") or {}).items()) or "–"
        base = is_baseline_result(r)
        rows.append([r["dataset"], model_label(r["model"], {r["model"]} if base else set()), r["fold"],
                     "fit, no training" if base else f"{t['epochs']} x {t['iterations_per_epoch']}",
                     hours(t["hours"]), hours(t.get("validation_hours")), stages,
                     fmt_duration(t.get("wall_s_benchmark")),
                     fmt_duration(i["seconds_per_volume"]), fmt_duration(i.get("network_seconds_per_volume")),
                     t.get("device") or "–"])
    return [("h2", "Training and inference cost"),
            ("p", "Training: the sum of the epochs' training times in the checkpoint history (all invocations "
             "of a resumed run), without the per-epoch validation, whose time is listed beside it (the latent "
             "models sample a few validation batches cheaply; see documentation/training_engine.md). Shared stages: "
             "the fold's stages a model builds on, each trained once per dataset and fold with the same budget "
             "(latent models: the autoencoder; ldm_controlnet also its prior), with their training time. Benchmark "
             "wall time: the training calls made by this benchmark (and the shared stages for the first model of a "
             "fold that needs them); empty when the model was trained before. Inference: time per volume end to "
             "end (read, preprocess, network, export) and the network part alone (timings.json). Durations in "
             "seconds below 2 minutes, minutes below 2 hours, hours above."),
            ("table", ["dataset", "model", "fold", "epochs x iterations", "training", "validation",
                       "shared stages", "benchmark wall time", "inference / volume", "network / volume", "device"],
             rows)]


def build_blocks(output: Path, results: list[dict[str, Any]], stats_out: dict[str, Any],
                 include_hostname: bool = False) -> list[Block]:
    files = output / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    pooled = pool(output, results)
    blocks: list[Block] = [("h1", "autotrans benchmark report")]
    statement = short_training_statement(results)
    if statement:
        blocks.append(("warn", statement))
    scored = [r for r in results if not r.get("skipped")]
    skipped: dict[str, list[str]] = {}
    for r in results:
        if r.get("skipped"):
            note = f"Baseline {r['model']} skipped: {r['skipped'].split(': ', 1)[-1]}."
            if note not in skipped.setdefault(r["dataset"], []):
                skipped[r["dataset"]].append(note)
    body: list[Block] = []
    for dataset, models in pooled.items():
        mod = next(iter(models.values()))["tasks"][0]
        baselines = baseline_names(models)
        body += [("h2", f"{dataset}: {'/'.join(mod['source_modalities'])} → {mod['modality']}"),
                 ("p", f"MAE and MSE in {dataset_unit(mod['modality'])}."
                  + (f" Rows in italics marked (baseline) are reference baselines that need no training "
                     f"({', '.join(sorted(baselines))}; documentation/benchmark.md), scored on the same held-out "
                     f"cases." if baselines else "")
                  + (" " + " ".join(skipped[dataset]) if skipped.get(dataset) else "")), metric_table(models)]
        note = small_n_note(models)
        if note:
            body.append(("p", note))
        png = files / f"{dataset}_boxplots.png"
        boxed = figures.boxplots({m: {k: [c[k] for c in e["cases"].values() if k in c] for k in METRICS}
                                  for m, e in models.items()}, METRICS, dataset, png, baselines=baselines)
        body.append(("img", png, f"{dataset}: per-case metrics (folds pooled), "
                     + ("one box per model with 3 or more cases, points for every case" if boxed else
                        f"one point per case, values written beside them; no boxes (fewer than {MIN_BOX_N} cases "
                        "per model)")
                     + "; each panel says whether higher or lower is better and its n; axes from 0 (SSIM and "
                     "MS-SSIM: 0 to 1; PSNR from 0 dB)" + ("; grey: baselines" if baselines else "")))
        body += statistics_blocks(dataset, models, files, stats_out)
        body += dose_blocks(dataset, models, files, stats_out)
        body += segmentation_blocks(dataset, models, files, stats_out)
        body += lesion_blocks(models)
        body += slice_block(dataset, models, output, files)
    opening = [headline(d, models, stats_out, skipped.get(d, [])) for d, models in pooled.items()]
    opening += [f"{d}: {' '.join(notes)}" for d, notes in skipped.items() if d not in pooled]
    blocks.append(("p", " ".join(opening)))
    blocks.append(("p", f"{len(scored)} finished task(s): {len(pooled)} dataset(s), "
                   f"{len({r['model'] for r in scored})} model(s), folds "
                   f"{', '.join(sorted({r['fold'] for r in scored}, key=int))}. Metrics: the autotrans standard "
                   "(documentation/evaluation.md), inside the mask, on each fold's held-out cases; folds are pooled "
                   f"by case. Table cells: mean ± std (median) over n cases; with fewer than {MIN_BOX_N} cases the "
                   "values themselves. ↓: lower is better; ↑: higher is better."))
    blocks += body
    blocks += timing_blocks(results)
    blocks += protocol_blocks(scored, include_hostname)
    return blocks


def render_markdown(blocks: list[Block], output: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "warn":
            out.append(f"> **{b[1]}**\n")
        elif kind == "table":
            cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
            out.append("\n".join([cells(b[1]), "|" + "---|" * len(b[1]), *[cells(r) for r in b[2]]]) + "\n")
        elif kind == "img":
            out.append(f"![{b[2]}]({Path(b[1]).relative_to(output).as_posix()})\n\n*{b[2]}*\n")
    return "\n".join(out)


CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}"
       "td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}th{background:#eee}"
       ".warn{background:#fff3cd;border:1px solid #e0b000;padding:.7em 1em;font-weight:bold}"
       "tr.baseline td{font-style:italic;color:#555;background:#f6f6f6}"
       "figure{margin:.5em 0 1.5em}img{max-width:100%}figcaption{font-size:13px;color:#555}")


def _html_row(row: list[Any]) -> str:
    """A table row; a baseline's (first cell ``*name (baseline)*``) in italics and grey, without the asterisks."""
    cells = [str(c) for c in row]
    emphasised = [len(c) > 2 and c.startswith("*") and c.endswith("*") for c in cells]
    cells = [c[1:-1] if em else c for c, em in zip(cells, emphasised)]
    cls = ' class="baseline"' if emphasised and emphasised[0] else ""
    return f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def render_html(blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>autotrans benchmark report</title>", f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "warn":
            out.append(f"<p class=\"warn\">{e(b[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join(_html_row(r) for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(b[2])}\">"
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(output: Path, results: list[dict[str, Any]], grid_info: dict[str, Any] | None = None,
                 include_hostname: bool = False) -> Path:
    """Write ``results.json``, ``statistics.json`` (strict JSON), ``report.md`` and ``report.html``; returns the
    HTML path. The machine's hostname is in the protocol only with ``include_hostname`` (a shared report)."""
    from autotrans.errors import ConfigurationError

    if not results:
        raise ConfigurationError(f"no finished benchmark task under {output}: nothing to report")
    output = Path(output)
    stats: dict[str, Any] = {}
    blocks = build_blocks(output, results, stats, include_hostname)
    save_strict_json({"grid": grid_info or {}, "tasks": results,
                      "short_training": short_training_statement(results)}, output / "results.json")
    for d in {r["dataset"] for r in results if not r.get("skipped")} - set(stats):
        stats[d] = {"skipped": "no statistics section for this dataset"}
    save_strict_json(stats, output / "statistics.json")  # never empty: a skipped dataset says why
    for name, text in (("report.md", render_markdown(blocks, output)), ("report.html", render_html(blocks))):
        with atomic_path(output / name, suffix=Path(name).suffix) as tmp:
            tmp.write_text(text, encoding="utf-8")
    logger.info("report written: %s", output / "report.html")
    return output / "report.html"
