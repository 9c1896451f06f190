"""Report of a visual Turing test: CSV tables for further analysis, PNG plots and one HTML page.

The report is for the study team (it names models and ground truth); it is never served to readers.
"""
from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - backend must be chosen first

from autotrans.utils.files import atomic_path  # noqa: E402

# OWASP "CSV injection": a cell starting with one of these is run as a formula by spreadsheets
# (=HYPERLINK(...), +cmd|..., -2+3, @SUM(...)); a leading tab or carriage return hides such a start.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """Prefix text that a spreadsheet would run as a formula with a single quote (numbers stay numbers)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """Flatten nested proportion dicts: {"accuracy": {"value": .6}} -> {"accuracy": .6, ...}."""
    out: dict[str, Any] = {}
    for key, val in row.items():
        if isinstance(val, dict):
            out[key] = val.get("value")
            if "ci_low" in val:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = val["ci_low"], val["ci_high"]
                out[f"{key}_k"], out[f"{key}_n"] = val["k"], val["n"]
        else:
            out[key] = val
    return out


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    rows = [_flat(r) for r in rows]
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=[neutralise_cell(k) for k in fields])
            w.writeheader()
            w.writerows({neutralise_cell(k): neutralise_cell(v) for k, v in r.items()} for r in rows)


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.3f}"
    return html.escape(str(x))


def _prop(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "-"
    ci = f"[{_fmt(p['ci_low'], True)}, {_fmt(p['ci_high'], True)}]"
    return f"{_fmt(p['value'], True)} <span class=ci>{ci}</span> ({p['k']}/{p['n']})"


def _plot_bars(path: Path, names: list[str], props: list[dict[str, Any]], title: str, ylabel: str) -> None:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.4), dpi=110)
    vals = [p["value"] for p in props]
    err = [[p["value"] - p["ci_low"] for p in props], [p["ci_high"] - p["value"] for p in props]]
    ax.bar(range(len(names)), vals, yerr=err, capsize=4, color="#4f8cff")
    ax.axhline(0.5, color="#d9534f", ls="--", lw=1, label="chance (50%)")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


def _save_png(fig: Any, path: Path) -> None:
    """Write atomically: a failed write leaves an earlier report's plot as it was."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _plot_calibration(path: Path, cal: dict[str, Any]) -> None:
    levels = [lv for lv in cal["levels"] if lv["n"]]
    fig, ax = plt.subplots(figsize=(4.6, 3.6), dpi=110)
    ax.plot([1, 5], [0.5, 1.0], color="#999", ls="--", lw=1, label="calibrated")
    if levels:
        x = [lv["confidence"] for lv in levels]
        y = [lv["value"] for lv in levels]
        err = [[lv["value"] - lv["ci_low"] for lv in levels], [lv["ci_high"] - lv["value"] for lv in levels]]
        ax.errorbar(x, y, yerr=err, fmt="o-", color="#4f8cff", capsize=4, label="observed")
        for xi, yi, lv in zip(x, y, levels, strict=True):
            ax.annotate(f"n={lv['n']}", (xi, yi), textcoords="offset points", xytext=(6, -12), fontsize=7)
    ax.set_xlim(0.5, 5.5)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("stated confidence (1 = guess, 5 = certain)")
    ax.set_ylabel("accuracy")
    ax.set_title("Confidence calibration")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _group_rows(groups: list[dict[str, Any]], key: str) -> list[list[str]]:
    return [[_fmt(g[key]), str(g["n"]), _prop(g["accuracy"]), _fmt(g["p_value"]), _prop(g["sensitivity"]),
             _prop(g["specificity"]), _fmt(g["mean_confidence"]), _fmt(g["median_time_s"])] for g in groups]


GROUP_HEADERS = ["", "answers", "accuracy [95% CI]", "p (vs 50%)", "sensitivity", "specificity",
                 "mean confidence", "median s/item"]


def write_report(summary: dict[str, Any], answers: list[dict[str, Any]], out: Path) -> None:
    """Write CSVs, plots, ``summary.json`` and ``report.html`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    overall = {"group": "all", **summary["overall"]}
    _write_csv(out / "answers.csv", answers)
    _write_csv(out / "summary.csv", [overall])
    _write_csv(out / "per_reader.csv", summary["per_reader"])
    _write_csv(out / "by_model.csv", summary["by_model"])
    _write_csv(out / "by_modality.csv", summary["by_modality"])
    _write_csv(out / "calibration.csv", summary["calibration"]["levels"])
    kappa = summary["kappa"]
    _write_csv(out / "kappa.csv", [{"study": "pooled", **kappa["overall"]}]
               + [{"study": s, **v} for s, v in kappa["per_study"].items()])
    from autotrans.turing.analysis_mrmc import report_html, report_rows

    for name, rows in report_rows(summary).items():
        if rows:
            _write_csv(out / name, rows)
    with atomic_path(out / "summary.json", suffix=".json") as tmp:  # strict JSON: NaN/Infinity are not JSON
        tmp.write_text(json.dumps(_no_nan(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    pr = summary["per_reader"]
    _plot_bars(out / "accuracy_per_reader.png", [r["reader"] for r in pr] + ["all"],
               [r["accuracy"] for r in pr] + [summary["overall"]["accuracy"]], "Accuracy per reader", "accuracy")
    bm = summary["by_model"]
    _plot_bars(out / "accuracy_by_model.png", [m["model"] for m in bm], [m["accuracy"] for m in bm],
               "Correct answers by source", "share correct")
    _plot_calibration(out / "calibration.png", summary["calibration"])

    o = summary["overall"]
    k = kappa["overall"]
    kappa_rows = [[html.escape(s), _fmt(v["kappa"]), str(v["n_items"]), str(v["n_readers"])]
                  for s, v in kappa["per_study"].items()]
    cal = summary["calibration"]
    verdict = ("Readers did <b>not</b> tell synthetic from real better than chance (p &ge; 0.05)."
               if not o["p_value"] < 0.05 else
               "Reader accuracy differs significantly from chance (p &lt; 0.05).")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Visual Turing test report</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; margin: 32px auto; max-width: 1040px; color: #1d232c; padding: 0 16px; }}
h1 {{ font-size: 24px; }} h2 {{ font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ padding: 5px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; }}
th {{ color: #555; font-weight: 600; }} .ci {{ color: #777; font-size: 12px; }} .big {{ font-size: 20px; }}
img {{ max-width: 100%; margin: 8px 12px 8px 0; border: 1px solid #eee; }} .note {{ color: #666; font-size: 12px; }}
</style></head><body>
<h1>Visual Turing test report</h1>
<p class="big">Overall accuracy {_prop(o["accuracy"])}, two-sided binomial p = {_fmt(o["p_value"])}</p>
<p>{verdict} {summary["n_ratings"]} answers from {summary["n_readers"]} readers on {summary["n_items"]} volumes.
Sensitivity (synthetic volumes spotted) {_prop(o["sensitivity"])}; specificity (real volumes called real)
{_prop(o["specificity"])}. Fleiss' &kappa; between readers: {_fmt(k["kappa"])} ({k["n_items"]} items rated by all
{k["n_readers"]} readers).</p>
<p class="note">95% intervals are exact (Clopper-Pearson). The binomial test treats answers as independent; with
several readers rating the same volumes, read the per-reader rows as well.</p>
<h2>Per reader</h2>
{_table(["reader"] + GROUP_HEADERS[1:], _group_rows(pr, "reader"))}
<img src="accuracy_per_reader.png" alt="accuracy per reader">
<h2>By source model</h2>
<p class="note">For synthetic sources "correct" means called synthetic; for real volumes it means called real.</p>
{_table(["source", "volumes", "answers", "correct [95% CI]", "p (vs 50%)", "called synthetic"],
        [[_fmt(m["model"]), str(m["items"]), str(m["n"]), _prop(m["accuracy"]), _fmt(m["p_value"]),
          _prop(m["called_synthetic"])] for m in bm])}
<img src="accuracy_by_model.png" alt="accuracy by model">
<h2>By modality</h2>
{_table(["modality"] + GROUP_HEADERS[1:], _group_rows(summary["by_modality"], "modality"))}
<h2>Agreement between readers</h2>
{_table(["study", "Fleiss' kappa", "items rated by all", "readers"], kappa_rows)}
<h2>Confidence calibration</h2>
<p>Expected accuracy per level: 1 = 50% (guess) rising by 12.5 points to 5 = 100% (certain).
Expected calibration error {_fmt(cal["ece"])}; mean confidence when correct {_fmt(cal["mean_confidence_correct"])},
when wrong {_fmt(cal["mean_confidence_wrong"])}.</p>
{_table(["confidence", "expected", "accuracy [95% CI]"],
        [[str(lv["confidence"]), _fmt(lv["expected_accuracy"], True), _prop(lv)] for lv in cal["levels"]])}
<img src="calibration.png" alt="calibration">
{report_html(summary, _table)}
<p class="note">Tables: summary.csv, per_reader.csv, by_model.csv, by_modality.csv, calibration.csv, kappa.csv,
answers.csv (one row per answer, with ground truth), mrmc_reader_auc.csv, mrmc_auc.csv, mrmc_differences.csv,
mrmc_design.csv, display_settings.csv (where there is something to put in them), summary.json.</p>
</body></html>
"""
    with atomic_path(out / "report.html", suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")


def _no_nan(obj: Any) -> Any:
    """NaN and infinities are not valid JSON; write null instead (no statistic here can be infinite)."""
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj
