"""Analysis of two-alternative forced-choice (2AFC) studies: which of two volumes is the real one?

In 2AFC the proportion of pairs in which a reader picks the real volume equals the area under the ROC
curve of that reader for telling real from synthetic (Green & Swets 1966), so 0.5 means the synthetic
volumes cannot be told apart. The statistics themselves (per reader: exact Clopper-Pearson CI and
binomial test; pooled: the Obuchowski-Rockette reader-averaged proportion with random readers and random
items) come from :func:`autotrans.turing.mrmc.two_afc_summary`; this module joins the stored picks with
the ground truth, adds what a reader-study analyst checks as well (per model, a left/right position
bias, the display settings used) and writes the report folder.
"""
from __future__ import annotations

import csv
import html
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotrans.errors import AutotransError
from autotrans.turing.store import AnswerStore
from autotrans.turing.study import Study

logger = logging.getLogger(__name__)


class TwoAfcError(AutotransError):
    """2AFC answers cannot be analysed as asked."""


def is_2afc_request(study_dirs: Sequence[str | Path]) -> bool:
    """True if the studies are 2AFC studies; a mix of designs is refused (they answer different questions)."""
    designs = {Study.load(d).design for d in study_dirs}
    if "2afc" in designs and len(designs) > 1:
        raise TwoAfcError("2AFC and single-volume studies answer different questions and cannot be pooled; "
                          "analyse them separately")
    return designs == {"2afc"}


def analyze_2afc_dirs(study_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Load the study folders (a study given twice, or a copy of it, counts once) and analyse them."""
    studies: dict[str, Study] = {}
    for d in study_dirs:
        study = Study.load(d)
        if study.identity in studies:
            logger.info("%s is the same study as %s: its answers are counted once", d, studies[study.identity].folder)
            continue
        studies[study.identity] = study
    return analyze_2afc(list(studies.values()), Path(out_dir))


def load_records(studies: Sequence[Study]) -> list[dict[str, Any]]:
    """One record per stored pick: reader, item, case, model, correct (picked the real one), side picked."""
    records: list[dict[str, Any]] = []
    multi = len(studies) > 1
    for study in studies:
        name = study.identity
        for a in AnswerStore(study.db_path).all_answers():
            item = study.items.get(a["item"])
            if item is None or not a.get("picked") or a["picked"] not in item["volumes"]:
                logger.warning("%s: an answer of %s names no pair of this study; skipped", study.folder, a["reader"])
                continue
            display = a.get("display") or {}
            records.append({
                "study": name,
                # the same reader name in two pooled studies is one reader; items stay apart per study
                "reader": a["reader"],
                "item": f"{name}:{a['item']}" if multi else a["item"],
                "case": item["case"],
                "model": item["model"],
                "correct": a["picked"] == item["real"],
                "side_picked": "left" if item["volumes"].index(a["picked"]) == 0 else "right",
                "confidence": a["confidence"],
                "time_on_item_s": a["time_on_item_s"],
                "colormap": display.get("colormap"),
                "fusion": display.get("fusion"),
                "source_view": display.get("source_view"),
            })
    return records


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    from autotrans.turing.mrmc import two_afc_summary

    return two_afc_summary(records)


def analyze_2afc(studies: Sequence[Study], out_dir: Path) -> dict[str, Any]:
    """Statistics of 2AFC studies, written to ``out_dir`` (summary.json, answers_2afc.csv, report.html)."""
    from autotrans.turing.analysis import binomial_test, clopper_pearson

    records = load_records(studies)
    if not records:
        raise TwoAfcError("no answers yet: nothing to analyse (readers answer at the links 'serve' prints)")
    summary: dict[str, Any] = {"design": "2afc", "n_answers": len(records), "overall": _summary(records)}
    summary["by_model"] = {m: _summary([r for r in records if r["model"] == m])
                           for m in sorted({r["model"] for r in records})}
    n_left = sum(r["side_picked"] == "left" for r in records)
    lo, hi = clopper_pearson(n_left, len(records))
    # a reader who prefers one side scores 50% whatever they see; the real side is random, so this only
    # costs power, but it is worth knowing
    summary["position_bias"] = {"picked_left": n_left, "n": len(records), "share_left": n_left / len(records),
                                "ci_low": lo, "ci_high": hi, "p_value": binomial_test(n_left, len(records))}
    settings: dict[str, dict[str, int]] = {}
    for r in records:
        key = f"colormap={r['colormap']}, fusion={r['fusion']}, source_view={r['source_view']}"
        s = settings.setdefault(key, {"n": 0, "correct": 0})
        s["n"] += 1
        s["correct"] += int(r["correct"])
    summary["display_settings"] = [{"settings": k, **v, "proportion_correct": v["correct"] / v["n"]}
                                   for k, v in sorted(settings.items())]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(_strict(summary), indent=2, allow_nan=False) + "\n",
                                          encoding="utf-8")
    with open(out_dir / "answers_2afc.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    (out_dir / "report.html").write_text(_html(summary), encoding="utf-8")
    return summary


def _strict(v: Any) -> Any:
    """NaN / infinity to null, so summary.json is strict JSON that any reader parses."""
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _pc(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _html(summary: dict[str, Any]) -> str:
    """A plain report page: per reader, pooled, per model, position bias, display settings."""
    o = summary["overall"]
    rows = "".join(
        f"<tr><td>{html.escape(p['reader'])}</td><td>{p['k']}/{p['n']}</td><td>{_pc(p['proportion_correct'])}</td>"
        f"<td>{_pc(p['ci_low'])} – {_pc(p['ci_high'])}</td><td>{p['p_value']:.3g}</td></tr>"
        for p in o["per_reader"])
    pooled = o.get("pooled")
    pooled_txt = (f"{_pc(pooled['proportion_correct'])} [{_pc(pooled['ci_low'])}, {_pc(pooled['ci_high'])}], "
                  f"df {pooled['df']:.1f}, p = {pooled['p_value']:.3g} ({pooled['n_readers']} readers, "
                  f"{pooled['n_items']} pairs)" if pooled else html.escape(o.get("pooled_reason", "")))
    naive = o["pooled_naive"]
    models = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{s['pooled_naive']['k']}/{s['pooled_naive']['n']}</td>"
        f"<td>{_pc(s['pooled_naive']['proportion_correct'])}</td>"
        f"<td>{_pc(s['pooled']['proportion_correct']) if s.get('pooled') else '–'}</td></tr>"
        for m, s in summary["by_model"].items())
    disp = "".join(f"<tr><td>{html.escape(d['settings'])}</td><td>{d['correct']}/{d['n']}</td>"
                   f"<td>{_pc(d['proportion_correct'])}</td></tr>" for d in summary["display_settings"])
    pb = summary["position_bias"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>2AFC reader study</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:4px 10px;text-align:left}}</style>
</head><body><h1>Two-alternative forced choice: which volume is real?</h1>
<p>Proportion correct = AUC for telling real from synthetic; 50% = indistinguishable.</p>
<p><b>Pooled (reader-averaged, random readers and pairs):</b> {pooled_txt}<br>
Pooled answers as if independent: {naive['k']}/{naive['n']} = {_pc(naive['proportion_correct'])}
[{_pc(naive['ci_low'])}, {_pc(naive['ci_high'])}] (too narrow when readers share pairs).</p>
<h2>Per reader</h2><table><tr><th>Reader</th><th>Correct</th><th>Proportion</th><th>95% CI (exact)</th>
<th>p (vs 50%)</th></tr>{rows}</table>
<h2>Per model</h2><table><tr><th>Model</th><th>Correct</th><th>Pooled</th><th>Reader-averaged</th></tr>{models}</table>
<h2>Position bias</h2><p>Left picked {pb['picked_left']}/{pb['n']} = {_pc(pb['share_left'])}
[{_pc(pb['ci_low'])}, {_pc(pb['ci_high'])}], p = {pb['p_value']:.3g}.</p>
<h2>Display settings at the time of answering</h2><table><tr><th>Settings</th><th>Correct</th><th>Proportion</th></tr>
{disp}</table></body></html>
"""
