"""The report's opening paragraph and how baselines are marked in it (``report.py`` renders both).

The opening paragraph names, per dataset, the best trained model, the best baseline, the ratio of their MAEs and
the Wilcoxon-Holm p-value of the pair, so a reader sees at once whether a number is good.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


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


def fmt_duration(seconds: float | None) -> str:
    """A duration a reader takes in at a glance: seconds below 2 minutes, minutes below 2 hours, else hours
    (never "0.0005 h")."""
    if seconds is None:
        return "–"
    s = float(seconds)
    if math.isnan(s):
        return "n/a"
    if s < 0.01:
        return "< 0.01 s"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


#: the one model order of every table and figure: the trained families in the planner's order, other trained
#: models by name, then the baselines (in this order, then by name)
BASELINE_ORDER = ("identity", "intensity_map")


def model_order(names: "list[str] | set[str] | dict[str, Any]", baselines: "set[str] | frozenset[str]") -> list[str]:
    """``names`` in :data:`FAMILY_ORDER`, unknown trained models by name, then the baselines."""
    from autotrans.planning.families import FAMILY_ORDER

    def key(m: str) -> tuple[int, int, str]:
        if m in baselines:
            return (2, BASELINE_ORDER.index(m) if m in BASELINE_ORDER else len(BASELINE_ORDER), m)
        return (0, FAMILY_ORDER.index(m), m) if m in FAMILY_ORDER else (1, 0, m)

    return sorted(names, key=key)


def summary_cell(values: "np.ndarray | list[float]", min_n: int = 3) -> str:
    """A table cell over per-case values: "mean ± std (median)" from ``min_n`` values on; below that the values
    themselves (a std of one value is 0 and says nothing), "n/a" without any."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return "n/a"
    if v.size < min_n:
        return ", ".join(fmt(x) for x in v)
    with np.errstate(invalid="ignore"):
        return f"{fmt(v.mean())} ± {fmt(v.std())} ({fmt(np.median(v))})"


def is_baseline_result(r: dict[str, Any]) -> bool:
    return bool(r.get("baseline"))


def baseline_names(models: dict[str, dict[str, Any]]) -> set[str]:
    return {m for m, e in models.items() if any(is_baseline_result(t) for t in e["tasks"])}


def model_label(model: str, baselines: set[str]) -> str:
    """A model's name in tables: baselines in italics with "(baseline)" (the HTML renders the row italic, grey)."""
    return f"*{model} (baseline)*" if model in baselines else model


#: fewest paired cases for the opening paragraph's p-value: below 6, the exact two-sided Wilcoxon signed-rank test
#: cannot reach p < 0.05 even when one model wins on every case (n = 5: smallest p = 2 / 2^5 = 0.0625)
MIN_CASES_FOR_P = 6


#: fewest cases for a "± std" (one case has std 0, two say little about a spread)
MIN_CASES_FOR_SPREAD = 3


def dataset_unit(modality: str) -> str:
    return {"CT": "HU", "CBCT": "HU", "PET": "SUV"}.get(modality, "the plan's normalized MR scale")


def _mean_mae(e: dict[str, Any]) -> tuple[float, float, int]:
    v = np.array([c["mae"] for c in e["cases"].values() if "mae" in c], dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std()), int(v.size)) if v.size else (math.nan, math.nan, 0)


def headline(dataset: str, models: dict[str, dict[str, Any]], stats: dict[str, Any], skipped: list[str]) -> str:
    """One sentence per dataset: the best model, the best baseline, the ratio of their MAEs and the Wilcoxon-Holm
    p-value of the pair (from the statistics section's MAE comparison, Holm-corrected over all its pairs)."""
    unit = dataset_unit(next(iter(models.values()))["tasks"][0]["modality"])
    unit_short = unit if unit in ("HU", "SUV") else "normalized MR scale"
    baselines = baseline_names(models)
    scored = {m: _mean_mae(e) for m, e in models.items()}
    trained = [m for m in models if m not in baselines and scored[m][2]]
    refs = [m for m in models if m in baselines and scored[m][2]]
    text = f"{dataset}: "
    if not trained:
        text += "no trained model finished."
    else:
        best = min(trained, key=lambda m: scored[m][0])
        a, sd, n = scored[best]
        spread = f" ± {fmt(sd)}" if n >= MIN_CASES_FOR_SPREAD else ""  # no "± 0" from one case
        text += f"best model {best}, MAE {fmt(a)}{spread} ({unit_short}; n = {n} case{'s' if n != 1 else ''})"
        if not refs:
            text += "; no baseline in this run, so there is no reference to compare with."
        else:
            ref = min(refs, key=lambda m: scored[m][0])
            b = scored[ref][0]
            ratio = a / b if b else math.nan
            verdict = "better than" if ratio < 1 else ("no better than" if ratio == 1 else "worse than")
            text += (f"; best baseline {ref}, MAE {fmt(b)}; MAE ratio {best} / {ref} = {fmt(ratio, 3)} "
                     f"({verdict} the baseline")
            mae = stats.get(dataset, {}).get("mae", {})
            pair = next((w for w in mae.get("wilcoxon", []) if {w["a"], w["b"]} == {best, ref}), None)
            n_pair = len(set(models[best]["cases"]) & set(models[ref]["cases"]))
            if n_pair < MIN_CASES_FOR_P:
                text += (f"; no p-value: {n_pair} paired case(s), and the Wilcoxon signed-rank test needs at least "
                         f"{MIN_CASES_FOR_P} to be able to reach p < 0.05)")
            elif pair is None:
                text += "; no p-value: the statistics across models could not be computed, see below)"
            else:
                text += (f"; Wilcoxon signed-rank p = {fmt(pair['p_holm'], 3)}, Holm-corrected over all pairs of "
                         f"models, n = {mae.get('n_cases')})")
            text += "."
    if skipped:
        text += " " + " ".join(skipped)
    return text
