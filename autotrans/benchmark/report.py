"""The benchmark report: ``results.json``, ``report.md`` and a self-contained ``report.html``.

Content is built once as a list of blocks (headings, paragraphs, tables, images) and rendered twice, so the
markdown and the HTML never disagree. Images are PNGs in ``report_files/`` (linked from the markdown) and
embedded as base64 in the HTML, which therefore opens anywhere on its own.
"""
from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.benchmark import figures
from autotrans.benchmark.grid import FULL_EPOCHS, FULL_ITERATIONS
from autotrans.benchmark.protocol import protocol_blocks
from autotrans.errors import AutotransError
from autotrans.evaluation.standards import STANDARD_METRICS
from autotrans.evaluation.strict_json import load_results
from autotrans.utils.files import atomic_path, save_json

logger = logging.getLogger(__name__)

METRICS = list(STANDARD_METRICS["autotrans"])
STRATA = ("<0.5 mL", "0.5-5 mL", ">5 mL", "all")
Block = tuple  # ("h1"|"h2"|"h3"|"p"|"warn", text) | ("table", headers, rows) | ("img", path, caption)


def task_folder(output: Path, r: dict[str, Any]) -> Path:
    key = f"{r['model']}__{r['plans_name']}__{r['configuration']}"
    return output / "tasks" / r["dataset"] / key / f"fold_{r['fold']}"


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}"


def pool(output: Path, results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> model -> {cases: {case: metrics}, lesions: [rows], tasks: [results]} (folds pooled by case)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        entry = out.setdefault(r["dataset"], {}).setdefault(r["model"], {"cases": {}, "lesions": [], "tasks": []})
        folder = task_folder(output, r)
        entry["cases"].update(load_results(folder / r["evaluation"])["cases"])  # strict JSON back to inf/NaN
        if r.get("evaluation_lesions"):
            for case, rows in load_results(folder / r["evaluation_lesions"]).get("lesions", {}).items():
                entry["lesions"] += [{"case": case, **row} for row in rows]
        entry["tasks"].append(r)
    return out


def short_training_statement(results: list[dict[str, Any]]) -> str | None:
    """Plain words when any model trained less than the full nnU-Net schedule."""
    full = FULL_EPOCHS * FULL_ITERATIONS
    short = [r for r in results if (r["training"].get("total_iterations") or 0) < full]
    if not short:
        return None
    schedules = sorted({(r["training"]["epochs"], r["training"]["iterations_per_epoch"]) for r in short})
    text = ", ".join(f"{e} epochs x {i} iterations = {e * i} iterations" for e, i in schedules)
    return (f"Training was short: {len(short)} of {len(results)} task(s) trained only {text}; a real run uses "
            f"{FULL_EPOCHS} x {FULL_ITERATIONS} = {full:,} iterations. These numbers show that the pipeline works "
            "end to end, not the quality of the models.")


def metric_table(models: dict[str, dict[str, Any]]) -> Block:
    rows = []
    for m, e in models.items():
        row = [m, str(len(e["cases"]))]
        for metric in METRICS:
            v = np.array([c[metric] for c in e["cases"].values() if metric in c], dtype=float)
            v = v[~np.isnan(v)]
            if v.size == 0:
                row.append("n/a")
                continue
            with np.errstate(invalid="ignore"):
                row.append(f"{fmt(v.mean())} ± {fmt(v.std())} ({fmt(np.median(v))})")
        rows.append(row)
    return ("table", ["model", "cases", *[figures.METRIC_LABELS[m] for m in METRICS]], rows)


def statistics_blocks(dataset: str, models: dict[str, dict[str, Any]], files: Path,
                      stats_out: dict[str, Any]) -> list[Block]:
    """Friedman / Nemenyi CD diagram / Wilcoxon-Holm on the cases every model predicted (folds pooled)."""
    from autotrans.evaluation.statistics import compare_runs, draw_cd_diagram

    names = list(models)
    common = sorted(set.intersection(*[set(e["cases"]) for e in models.values()])) if names else []
    blocks: list[Block] = [("h3", "Statistics across models")]
    if len(names) < 2 or len(common) < 2:
        blocks.append(("p", f"Not computed: needs at least 2 models and 2 cases that every model predicted; this "
                       f"run has {len(names)} model(s) and {len(common)} shared case(s)."))
        return blocks
    blocks.append(("p", f"{len(common)} cases pooled over folds. Friedman and the Nemenyi critical-difference "
                   "diagram need 3 or more models; pairwise Wilcoxon signed-rank tests are Holm-corrected per "
                   "metric; effect size: matched-pairs rank-biserial correlation (+1: A larger on every case)."))
    for metric in METRICS:
        runs = [{"standard": "autotrans", "cases": {c: models[m]["cases"][c] for c in common},
                 "aggregate": {metric: {}}} for m in names]
        try:
            res = compare_runs(runs, names=names, metrics=[metric])["metrics"][metric]
        except AutotransError as e:
            blocks.append(("p", f"{figures.METRIC_LABELS[metric]}: not computed ({str(e).splitlines()[0]})"))
            continue
        stats_out.setdefault(dataset, {})[metric] = res
        label = figures.METRIC_LABELS[metric]
        fr = res.get("friedman")
        head = f"{label} ({res['direction']}, n = {res['n_cases']})"
        if fr is not None:
            head += f": Friedman χ² = {fmt(fr['statistic'])}, p = {fmt(fr['p'], 3)}"
        blocks.append(("p", head))
        blocks.append(("table", ["model", "mean", "95% bootstrap CI", "mean rank"],
                       [[m, fmt(res["mean"][m]), f"[{fmt(res['ci95'][m][0])}, {fmt(res['ci95'][m][1])}]",
                         fmt(res["mean_rank"][m], 3)] for m in names]))
        blocks.append(("table", ["A", "B", "mean A−B", "Wilcoxon p", "Holm p", "rank-biserial", "significant"],
                       [[w["a"], w["b"], fmt(w["mean_diff"]), fmt(w["p"], 3), fmt(w["p_holm"], 3),
                         fmt(w["rank_biserial"], 3), "yes" if w["significant"] else "no"] for w in res["wilcoxon"]]))
        if fr is not None:
            png = files / f"{dataset}_cd_{metric}.png"
            try:
                draw_cd_diagram(res, metric, png)
                blocks.append(("img", png, f"{dataset}: critical-difference diagram, {label}"))
            except Exception as e:  # a plotting failure must not cost the whole report
                logger.warning("%s %s: CD diagram failed: %s", dataset, metric, e)
    return blocks


def lesion_blocks(models: dict[str, dict[str, Any]]) -> list[Block]:
    from autotrans.evaluation.lesions import stratify

    with_rows = {m: e["lesions"] for m, e in models.items() if e["lesions"]}
    if not with_rows:
        return []
    keys = ["mae", "dice", "hd95_mm", "abs_contrast_rel_err", "abs_suvmax_rel_err", "abs_suvmean_rel_err",
            "abs_suvpeak_rel_err"]
    strata = {m: stratify(rows) for m, rows in with_rows.items()}
    present = [k for k in keys if any(k in s[name] for s in strata.values() for name in STRATA)]
    rows = []
    for m, s in strata.items():
        for name in STRATA:
            entry = s[name]
            rows.append([m, name, str(entry["n"]),
                         *[f"{fmt(entry[k]['mean'])} ({fmt(entry[k]['median'])})" if k in entry else "–"
                           for k in present]])
    return [("h3", "Lesion level, by lesion size"),
            ("p", "Per-lesion metrics over the held-out cases that have lesion maps (26-connected components of "
             "the reference map); mean (median). Relative errors as absolute values."),
            ("table", ["model", "size", "lesions", *present], rows)]


def slice_block(dataset: str, models: dict[str, dict[str, Any]], output: Path, files: Path) -> list[Block]:
    """Real vs source vs each model through one point of one held-out case all models predicted."""
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
    real, geo = read_image(task_folder(output, first) / info["reference"])
    source, _ = read_image(info["source"])
    mask = read_image(info["mask"])[0] if info["mask"] else None
    lesion = read_image(info["lesions"])[0] if info["lesions"] else None
    point = figures.focus_point(real.shape, lesion, mask)
    win = figures.window(real, mask)
    src_mod = "/".join(first["source_modalities"])
    rows = [(f"source ({src_mod})", source, figures.window(source, mask)), (f"real ({first['modality']})", real, win)]
    for m, e in models.items():
        task = next(t for t in e["tasks"] if case in t["files"])
        pred, _ = read_image(task_folder(output, task) / task["files"][case]["prediction"])
        if pred.shape == real.shape:
            rows.append((m, pred, win))
    where = "the centre of the largest lesion" if lesion is not None and lesion.any() else \
        ("the centre of the mask" if mask is not None else "the volume centre")
    png = files / f"{dataset}_slices.png"
    figures.example_slices(rows, point, geo.spacing, f"{dataset}: {case} (fold {first['fold']})", png, lesion)
    return [("h3", "Example slices"),
            ("img", png, f"{case}: three planes through {where} (voxel z, y, x = {point}); real and every model "
             f"share one window (p0.5–p99.5 of the real target inside the mask: {fmt(win[0])} to {fmt(win[1])}); "
             "the source has its own; red: reference lesion outline")]


def timing_blocks(results: list[dict[str, Any]]) -> list[Block]:
    rows = []
    for r in sorted(results, key=lambda r: (r["dataset"], r["model"], int(r["fold"]))):
        t, i = r["training"], r["inference"]
        stages = ", ".join(f"{k} {fmt(v['hours'], 3)}" for k, v in (t.get("stages") or {}).items()) or "–"
        rows.append([r["dataset"], r["model"], r["fold"], f"{t['epochs']} x {t['iterations_per_epoch']}",
                     fmt(t["hours"], 3), fmt(t.get("validation_hours"), 3), stages,
                     fmt(t["wall_s_benchmark"] / 3600 if t.get("wall_s_benchmark") else None, 3),
                     fmt(i["seconds_per_volume"], 3), fmt(i.get("network_seconds_per_volume"), 3), t.get("device") or "–"])
    return [("h2", "Training and inference cost"),
            ("p", "Training hours: the sum of the epochs' training times in the checkpoint history (all invocations "
             "of a resumed run), without the per-epoch validation, whose hours are listed beside them (the latent "
             "models sample a few validation batches cheaply; see documentation/training_engine.md). Shared stages: "
             "the fold's stages a model builds on, each trained once per dataset and fold with the same budget "
             "(latent models: the autoencoder; ldm_controlnet also its prior), with their training hours. Benchmark "
             "wall hours: the training calls made by this benchmark (and the shared stages for the first model of a "
             "fold that needs them); empty when the model was trained before. Inference: seconds per volume end to "
             "end (read, preprocess, network, export) and the network part alone (timings.json)."),
            ("table", ["dataset", "model", "fold", "epochs x iterations", "training h", "validation h",
                       "shared stages h", "benchmark wall h", "inference s/volume", "network s/volume", "device"],
             rows)]


def build_blocks(output: Path, results: list[dict[str, Any]], stats_out: dict[str, Any]) -> list[Block]:
    files = output / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    pooled = pool(output, results)
    blocks: list[Block] = [("h1", "autotrans benchmark report")]
    statement = short_training_statement(results)
    if statement:
        blocks.append(("warn", statement))
    blocks.append(("p", f"{len(results)} finished task(s): {len(pooled)} dataset(s), "
                   f"{len({r['model'] for r in results})} model(s), folds "
                   f"{', '.join(sorted({r['fold'] for r in results}, key=int))}. Metrics: the autotrans standard "
                   "(documentation/evaluation.md), inside the mask, on each fold's held-out cases; folds are pooled "
                   "by case. Table cells: mean ± std (median)."))
    for dataset, models in pooled.items():
        mod = next(iter(models.values()))["tasks"][0]
        unit = {"CT": "HU", "CBCT": "HU", "PET": "SUV"}.get(mod["modality"], "the plan's normalized MR scale")
        blocks += [("h2", f"{dataset}: {'/'.join(mod['source_modalities'])} → {mod['modality']}"),
                   ("p", f"MAE and MSE in {unit}."), metric_table(models)]
        png = files / f"{dataset}_boxplots.png"
        figures.boxplots({m: {k: [c[k] for c in e["cases"].values() if k in c] for k in METRICS}
                          for m, e in models.items()}, METRICS, dataset, png)
        blocks.append(("img", png, f"{dataset}: per-case metrics (folds pooled), one box per model"))
        blocks += statistics_blocks(dataset, models, files, stats_out)
        blocks += lesion_blocks(models)
        blocks += slice_block(dataset, models, output, files)
    blocks += timing_blocks(results)
    blocks += protocol_blocks(results)
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
       "figure{margin:.5em 0 1.5em}img{max-width:100%}figcaption{font-size:13px;color:#555}")


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
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{e(b[2])}\">"
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(output: Path, results: list[dict[str, Any]], grid_info: dict[str, Any] | None = None) -> Path:
    """Write ``results.json``, ``statistics.json``, ``report.md`` and ``report.html``; returns the HTML path."""
    from autotrans.errors import ConfigurationError

    if not results:
        raise ConfigurationError(f"no finished benchmark task under {output}: nothing to report")
    output = Path(output)
    stats: dict[str, Any] = {}
    blocks = build_blocks(output, results, stats)
    save_json({"grid": grid_info or {}, "tasks": results, "short_training": short_training_statement(results)},
              output / "results.json")
    save_json(stats, output / "statistics.json")
    for name, text in (("report.md", render_markdown(blocks, output)), ("report.html", render_html(blocks))):
        with atomic_path(output / name, suffix=Path(name).suffix) as tmp:
            tmp.write_text(text, encoding="utf-8")
    logger.info("report written: %s", output / "report.html")
    return output / "report.html"
