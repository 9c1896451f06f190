"""The reader-study parts of ``autotrans_turing analyze``: MRMC ROC analysis and display settings.

MRMC: each answer becomes a 10-level rating of "synthetic-ness" (:func:`autotrans.turing.mrmc.synthetic_rating`);
per study (readers and volumes are only crossed within a study) every reader's empirical AUC for telling
synthetic from real volumes is computed overall and per source model (that model's synthetic volumes
against all real ones), and the Obuchowski-Rockette analysis with Hillis' ddf and jackknife covariance
gives the reader-averaged AUC with its 95% CI and the test of AUC = 0.5, and, with two or more models, the
test of equal AUCs and each pairwise difference. The OR analysis needs every included reader to have
rated every included volume: readers who answered fewer than half of the study's answered volumes are left
out (named in the output) and then only the volumes every remaining reader answered are used.

Display settings: exploratory accuracy by colour map, fused view and source view, with counts, exact CIs,
a Fisher exact (two levels) or chi-square (more) test and, per reader, the accuracy under each level.
"""
from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from autotrans.turing import mrmc
from autotrans.turing.analysis import Rating, proportion

METHOD = ("Obuchowski-Rockette, random readers and random cases, Hillis (2007/2008) denominator degrees of "
          "freedom, jackknife covariance over cases; empirical (trapezoidal) AUC of a 10-level rating "
          "(real certain = 1 ... real guess = 5, synthetic guess = 6 ... synthetic certain = 10); "
          "positive = synthetic, so AUC 0.5 = readers cannot tell synthetic from real")
MIN_READERS = 2
MIN_PER_CLASS = 2


def _complete_block(rs: Sequence[Rating]) -> tuple[list[str], list[str], list[str]]:
    """Readers and items of a fully crossed block, and the readers left out for answering too little."""
    by_reader: dict[str, set[str]] = defaultdict(set)
    for r in rs:
        by_reader[r.reader].add(r.item)
    most = max(len(v) for v in by_reader.values())
    kept = sorted(k for k, v in by_reader.items() if len(v) >= 0.5 * most)
    left_out = sorted(set(by_reader) - set(kept))
    items = sorted(set.intersection(*(by_reader[k] for k in kept)))
    return kept, items, left_out


def _study_mrmc(study: str, rs: Sequence[Rating], design: dict[str, Any]) -> dict[str, Any]:
    readers, items, left_out = _complete_block(rs)
    lookup = {(r.reader, r.item): r for r in rs}
    truth = np.array([lookup[(readers[0], i)].truth == "synthetic" for i in items], bool)
    model_of = [lookup[(readers[0], i)].model for i in items]
    n_syn, n_real = int(truth.sum()), int((~truth).sum())
    out: dict[str, Any] = {
        "study": study, "modality": rs[0].modality, "n_readers": len(readers), "readers": readers,
        "readers_left_out": left_out, "n_cases": len(items), "n_synthetic": n_syn, "n_real": n_real,
        "n_items_left_out": len({r.item for r in rs}) - len(items),
    }
    if len(readers) < MIN_READERS or n_syn < MIN_PER_CLASS or n_real < MIN_PER_CLASS:
        out["computed"] = False
        out["reason"] = (f"needs at least {MIN_READERS} readers who rated the same volumes and at least "
                         f"{MIN_PER_CLASS} real and {MIN_PER_CLASS} synthetic volumes rated by all of them; "
                         f"have {len(readers)} readers, {n_real} real and {n_syn} synthetic volumes")
        return out
    scores = np.array([[[mrmc.synthetic_rating(lookup[(rd, i)].answer, lookup[(rd, i)].confidence)
                         for i in items] for rd in readers]], float)
    overall = mrmc.mrmc_roc(scores, truth, modalities=["all synthetic"], readers=readers)
    out["computed"] = True
    out["overall"] = overall["per_modality"][0] | {"reader_auc": overall["reader_auc"]["all synthetic"]}
    comps = mrmc.planning_components(overall)
    models = sorted({m for m, t in zip(model_of, truth, strict=True) if t})
    members = np.array([[(not t) or m == model for m, t in zip(model_of, truth, strict=True)] for model in models])
    usable = [k for k, model in enumerate(models) if (members[k] & truth).sum() >= MIN_PER_CLASS]
    skipped = [models[k] for k in range(len(models)) if k not in usable]
    by_model: dict[str, Any] = {"models_skipped": skipped}
    if usable:
        res = mrmc.mrmc_roc(np.repeat(scores, len(usable), axis=0), truth, members[usable],
                            modalities=[models[k] for k in usable], readers=readers)
        by_model["per_model"] = [{"model": p["modality"], **{k: v for k, v in p.items() if k != "modality"},
                                  "reader_auc": res["reader_auc"][p["modality"]]} for p in res["per_modality"]]
        if len(usable) >= 2:
            by_model["equal_auc_test"] = res["equal_auc_test"]
            by_model["differences"] = res["differences"]
            by_model["components"] = res["components"]
            comps |= {k: v for k, v in mrmc.planning_components(res).items()
                      if k in ("var_tr", "var_error_all", "cov1", "cov2_all", "cov3")}
    out["by_model"] = by_model
    out["components"] = overall["components"]
    out["design_table"] = mrmc.design_table(comps, **design)
    out["design_components"] = comps
    return out


def mrmc_section(ratings: Sequence[Rating], readers: Sequence[int] = (3, 5, 10, 20),
                 cases: Sequence[int] = (50, 100, 200)) -> dict[str, Any]:
    """MRMC ROC analysis of every study in ``ratings`` (see the module doc)."""
    by_study: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_study[r.study].append(r)
    studies = [_study_mrmc(s, rs, {"readers": readers, "cases": cases}) for s, rs in sorted(by_study.items())]
    return {"method": METHOD, "studies": studies}


DISPLAY_FACTORS = ("colormap", "fusion", "source_view")
NOTE = ("Exploratory: readers chose their display, so a setting may go with better or more careful readers "
        "rather than cause better answers; the tests treat answers as independent although each reader gave "
        "many. Read the within-reader columns, and confirm any finding in a study that assigns the display.")


def display_section(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Accuracy by display choice (colour map, fused view, source view) and time, where answers record them."""
    with_settings = [r for r in ratings if r.display]
    out: dict[str, Any] = {"n_answers": len(ratings), "n_with_settings": len(with_settings), "note": NOTE,
                           "factors": []}
    for factor in DISPLAY_FACTORS:
        rs = [r for r in with_settings if factor in r.display]
        if not rs:
            continue
        groups: dict[str, list[Rating]] = defaultdict(list)
        cell: dict[tuple[str, str], dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for r in rs:
            v = r.display[factor]
            level = str(v).lower() if isinstance(v, bool) else str(v)
            groups[level].append(r)
            cell[(r.study, r.reader)][level].append(r.correct)
        levels = [{"level": lv, "readers": len({(r.study, r.reader) for r in g}),
                   **proportion(sum(r.correct for r in g), len(g))} for lv, g in sorted(groups.items())]
        table = np.array([[lv["k"], lv["n"] - lv["k"]] for lv in levels])
        entry: dict[str, Any] = {"factor": factor, "levels": levels, "test": None, "p_value": math.nan}
        if len(levels) == 2:
            entry["test"], entry["p_value"] = "Fisher exact", float(stats.fisher_exact(table)[1])
        elif len(levels) > 2 and (table.sum(axis=0) > 0).all():
            entry["test"] = "chi-square"
            entry["p_value"] = float(stats.chi2_contingency(table, correction=False)[1])
        per_reader = []
        multi = len({r.study for r in ratings}) > 1
        for key, by_level in sorted(cell.items()):
            if len(by_level) >= 2:  # only a reader who used several levels compares them with the reader held fixed
                per_reader.append({"reader": "/".join(key) if multi else key[1],
                                   "accuracy": {lv: float(np.mean(v)) for lv, v in sorted(by_level.items())},
                                   "n": {lv: len(v) for lv, v in sorted(by_level.items())}})
        entry["within_reader"] = per_reader
        out["factors"].append(entry)
    times = [(r.display.get("time_s", r.time_on_item_s), r.correct) for r in with_settings]
    if not times:
        times = [(r.time_on_item_s, r.correct) for r in ratings]
    right = [t for t, ok in times if ok]
    wrong = [t for t, ok in times if not ok]
    out["time"] = {"median_s_correct": float(np.median(right)) if right else math.nan,
                   "median_s_wrong": float(np.median(wrong)) if wrong else math.nan,
                   "test": "Mann-Whitney U", "p_value": float(stats.mannwhitneyu(right, wrong).pvalue)
                   if right and wrong else math.nan}
    return out


def _e(text: Any) -> str:
    return html.escape(str(text))


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.2g}" if x != 0 and abs(x) < 10 ** -digits else f"{x:.{digits}f}"
    return str(x)


def _ci(d: dict[str, Any]) -> str:
    return f"{_f(d['auc'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}]"


def report_rows(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """CSV tables of the MRMC section: reader AUCs, reader-averaged AUCs and differences, design table."""
    reader_auc, averaged, diffs, design, disp = [], [], [], [], []
    for st in summary.get("mrmc", {}).get("studies", []):
        if not st.get("computed"):
            averaged.append({"study": st["study"], "source": "all synthetic", "reason": st["reason"]})
            continue
        blocks = [("all synthetic", st["overall"])] + [(p["model"], p) for p in st["by_model"].get("per_model", [])]
        for source, b in blocks:
            reader_auc += [{"study": st["study"], "source": source, "reader": r, "auc": a}
                           for r, a in b["reader_auc"].items()]
            averaged.append({"study": st["study"], "source": source, "n_readers": st["n_readers"],
                             "n_cases": st["n_cases"], **{k: b[k] for k in
                                                         ("auc", "se", "df", "ci_low", "ci_high", "t", "p_value")}})
        diffs += [{"study": st["study"], **d} for d in st["by_model"].get("differences", [])]
        design += [{"study": st["study"], **row} for row in st["design_table"]]
    for fac in summary.get("display_settings", {}).get("factors", []):
        disp += [{"factor": fac["factor"], "test": fac["test"], "p_value": fac["p_value"], **lv}
                 for lv in fac["levels"]]
    return {"mrmc_reader_auc.csv": reader_auc, "mrmc_auc.csv": averaged, "mrmc_differences.csv": diffs,
            "mrmc_design.csv": design, "display_settings.csv": disp}


def report_html(summary: dict[str, Any], table: Any) -> str:
    """HTML of the MRMC and display-settings sections; ``table(headers, rows)`` renders a table."""
    parts = ["<h2>MRMC ROC (Obuchowski&ndash;Rockette, Hillis ddf, jackknife)</h2>",
             f"<p class=note>{METHOD}. Results generalise to new readers <i>and</i> new volumes.</p>"]
    for st in summary.get("mrmc", {}).get("studies", []):
        parts.append(f"<h3>{_e(st['study'])} ({_e(st['modality'])}): {st['n_readers']} readers, "
                     f"{st['n_real']} real and "
                     f"{st['n_synthetic']} synthetic volumes</h3>")
        if st["readers_left_out"] or st["n_items_left_out"]:
            parts.append(f"<p class=note>Left out to keep readers and volumes fully crossed: readers "
                         f"{_e(', '.join(st['readers_left_out'])) or 'none'}; {st['n_items_left_out']} volumes not "
                         "rated by every remaining reader.</p>")
        if not st.get("computed"):
            parts.append(f"<p>Not computed: {st['reason']}.</p>")
            continue
        o = st["overall"]
        blocks = [("all synthetic", o)] + [(_e(p["model"]), p) for p in st["by_model"].get("per_model", [])]
        readers = st["readers"]
        parts.append(table(["source", "reader-averaged AUC [95% CI]", "SE", "df", "p (AUC = 0.5)"]
                           + [_e(r) for r in readers],
                           [[s, _ci(b), _f(b["se"]), _f(b["df"], 1), _f(b["p_value"])]
                            + [_f(b["reader_auc"][r]) for r in readers] for s, b in blocks]))
        bm = st["by_model"]
        if bm.get("models_skipped"):
            parts.append(f"<p class=note>No per-model AUC for {_e(', '.join(bm['models_skipped']))}: fewer than "
                         f"{MIN_PER_CLASS} of its volumes.</p>")
        if "equal_auc_test" in bm:
            e = bm["equal_auc_test"]
            parts.append(f"<p>Test of equal AUCs across models: F({e['df1']}, {_f(e['ddf'], 2)}) = {_f(e['f'])}, "
                         f"p = {_f(e['p_value'])}. A lower AUC means that model's volumes are harder to spot.</p>")
            parts.append(table(["difference", "AUC difference [95% CI]", "SE", "df", "p"],
                               [[f"{_e(d['a'])} &minus; {_e(d['b'])}", f"{_f(d['difference'])} [{_f(d['ci_low'])}, "
                                 f"{_f(d['ci_high'])}]", _f(d["se"]), _f(d["df"], 1), _f(d["p_value"])]
                                for d in bm["differences"]]))
        dt = st["design_table"]
        has_diff = "half_width_difference" in dt[0]
        parts.append("<p class=note>Planning a follow-up study: expected 95% CI half-width of the reader-averaged "
                     "AUC" + (" and of a difference between two models" if has_diff else "") + " with r readers "
                     f"and c volumes (same real/synthetic mix), from this study's OR variance components "
                     f"(estimated with {st['n_cases']} volumes).</p>")
        parts.append(table(["readers", "volumes", "&plusmn; AUC"] + (["&plusmn; difference"] if has_diff else []),
                           [[str(r["readers"]), str(r["cases"]), _f(r["half_width_auc"])]
                            + ([_f(r["half_width_difference"])] if has_diff else []) for r in dt]))
    ds = summary.get("display_settings")
    if ds and ds["factors"]:
        parts.append("<h2>Display settings and accuracy (exploratory)</h2>")
        parts.append(f"<p class=note>{ds['note']} {ds['n_with_settings']} of {ds['n_answers']} answers record "
                     "their display settings.</p>")
        for fac in ds["factors"]:
            parts.append(f"<h3>{_e(fac['factor'])}: {fac['test'] or 'no test (one level)'}, "
                         f"p = {_f(fac['p_value'])}</h3>")
            parts.append(table(["level", "answers", "readers", "accuracy [95% CI]"],
                               [[_e(str(lv["level"])), str(lv["n"]), str(lv["readers"]),
                                 f"{_f(lv['value'])} [{_f(lv['ci_low'])}, {_f(lv['ci_high'])}]"]
                                for lv in fac["levels"]]))
            if fac["within_reader"]:
                names = [lv["level"] for lv in fac["levels"]]
                parts.append("<p class=note>Within reader (readers who used several levels): accuracy (answers)</p>")
                parts.append(table(["reader"] + [_e(n) for n in names],
                                   [[_e(w["reader"])] + [f"{_f(w['accuracy'][n])} ({w['n'][n]})" if n in w["n"]
                                                         else "-" for n in names] for w in fac["within_reader"]]))
        t = ds["time"]
        parts.append(f"<p>Median time on a volume: {_f(t['median_s_correct'], 1)} s when correct, "
                     f"{_f(t['median_s_wrong'], 1)} s when wrong (Mann-Whitney p = {_f(t['p_value'])}).</p>")
    return "\n".join(parts)


def console_lines(summary: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: per study the reader-averaged AUC, model differences, and study size."""
    lines = []
    for st in summary.get("mrmc", {}).get("studies", []):
        if not st.get("computed"):
            lines.append(f"MRMC ROC {st['study']}: not computed ({st['reason']})")
            continue
        o = st["overall"]
        lines.append(f"MRMC ROC {st['study']}: reader-averaged AUC {_ci(o)} (AUC = 0.5: p = {_f(o['p_value'])}; "
                     f"{st['n_readers']} readers, {st['n_cases']} volumes)")
        e = st["by_model"].get("equal_auc_test")
        if e:
            lines.append(f"  equal AUC across models: F({e['df1']}, {_f(e['ddf'], 2)}) = {_f(e['f'])}, "
                         f"p = {_f(e['p_value'])}")
        hw = ", ".join(f"{r['readers']}r x {r['cases']}c: ±{_f(r['half_width_auc'])}" for r in st["design_table"]
                       if r["cases"] == max(x["cases"] for x in st["design_table"]) or r["readers"] == 10)
        lines.append(f"  expected 95% CI half-width of the AUC in a new study: {hw}")
    return lines
