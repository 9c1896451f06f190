"""Comparing models on the same cases: rank tests, pairwise tests, bootstrap CIs, CD diagrams.

Scores of different models on the same case are paired, so every test here is a paired/blocked one
(Friedman + Nemenyi over all models, Wilcoxon signed-rank per pair with Holm correction).
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from autotrans.errors import ConfigurationError, DatasetError
from autotrans.evaluation.standards import metric_direction
from autotrans.evaluation.strict_json import load_results, save_strict_json
from autotrans.utils.files import atomic_path

log = logging.getLogger(__name__)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        adj[idx] = running
    return adj.tolist()


def rank_biserial(a: np.ndarray, b: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of a - b (zero differences dropped, as Wilcoxon does):
    +1 when every nonzero difference favours a being larger, -1 when all favour b."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    r = stats.rankdata(np.abs(d))
    return float((r[d > 0].sum() - r[d < 0].sum()) / r.sum())


def mean_ranks(table: np.ndarray, direction: int) -> np.ndarray:
    """Average rank per model (column); rank 1 is the best model on a case, ties share ranks."""
    return stats.rankdata(-direction * table, axis=1).mean(axis=0)


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks: q_alpha * sqrt(k (k+1) / (6 n))."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def bootstrap_ci(values: np.ndarray, n_resamples: int = 10000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap, fixed seed: reproducible)."""
    if values.size < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    kw = {"n_resamples": n_resamples, "confidence_level": level, "method": "percentile"}
    try:
        res = stats.bootstrap((values,), np.mean, rng=np.random.default_rng(seed), **kw)
    except TypeError:  # scipy < 1.15 names the generator random_state
        res = stats.bootstrap((values,), np.mean, random_state=np.random.default_rng(seed), **kw)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def metric_comparison(table: np.ndarray, models: list[str], metric: str, alpha: float = 0.05,
                      n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """All statistics for one metric; ``table`` is cases x models."""
    import pandas as pd
    import scikit_posthocs as sp

    direction = metric_direction(metric)
    n, k = table.shape
    out: dict[str, Any] = {
        "direction": "higher is better" if direction > 0 else "lower is better",
        "n_cases": n,
        "mean": dict(zip(models, table.mean(axis=0).tolist())),
        "ci95": {m: list(bootstrap_ci(table[:, i], n_resamples, seed)) for i, m in enumerate(models)},
        "mean_rank": dict(zip(models, mean_ranks(table, direction).tolist())),
    }
    if k >= 3:
        fr = stats.friedmanchisquare(*[table[:, i] for i in range(k)])
        out["friedman"] = {"statistic": float(fr.statistic), "p": float(fr.pvalue)}
        nem = sp.posthoc_nemenyi_friedman(pd.DataFrame(table, columns=models))
        out["nemenyi_p"] = {a: {b: float(nem.loc[a, b]) for b in models} for a in models}
        out["critical_difference"] = critical_difference(k, n, alpha)
    else:
        out["friedman"] = None
        log.info("%s: Friedman/Nemenyi need at least 3 models; only pairwise tests", metric)
    pairs = []
    for i, j in itertools.combinations(range(k), 2):
        a, b = table[:, i], table[:, j]
        if np.all(a == b):
            stat, p = 0.0, 1.0
        else:
            w = stats.wilcoxon(a, b)
            stat, p = float(w.statistic), float(w.pvalue)
        pairs.append({"a": models[i], "b": models[j], "statistic": stat, "p": p,
                      "rank_biserial": rank_biserial(a, b), "mean_diff": float((a - b).mean())})
    for pair, adj in zip(pairs, holm([p["p"] for p in pairs])):
        pair["p_holm"] = adj
        pair["significant"] = bool(adj < alpha)
    out["wilcoxon"] = pairs
    return out


def draw_cd_diagram(result: dict[str, Any], metric: str, path: str | os.PathLike) -> None:
    """Critical-difference diagram (scikit-posthocs) of one metric's mean ranks, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scikit_posthocs as sp

    models = list(result["mean_rank"])
    sig = pd.DataFrame(result["nemenyi_p"]).loc[models, models]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.35 * len(models)))
    sp.critical_difference_diagram(pd.Series(result["mean_rank"]), sig, ax=ax)
    ax.set_title(f"{metric}: mean rank (1 = best), CD = {result['critical_difference']:.2f}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _load(run: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """One result, checked: a file that is missing, not JSON or not a result is one clear error naming it."""
    if isinstance(run, dict):
        data = run
    else:
        if not Path(run).is_file():
            raise ConfigurationError(f"--compare {run}: no such file")
        try:
            data = load_results(run)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ConfigurationError(f"--compare {run}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict) \
            or not all(isinstance(v, dict) for v in data["cases"].values()):
        raise ConfigurationError(f"--compare {run}: not an autotrans_evaluate result (no 'cases' table)")
    return data


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ConfigurationError(f"--alpha {alpha}: must lie strictly between 0 and 1 (e.g. 0.05)")
    return float(alpha)


def _score(case: dict[str, Any], metric: str) -> float:
    """A case's score as a number: null (undefined, as strict JSON writes it) is NaN."""
    v = case[metric]
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigurationError(f"{metric}: {v!r} is not a number")
    return float(v)


def _names(runs: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(runs) or len(set(names)) != len(names):
            raise ConfigurationError(f"need {len(runs)} distinct model names, got {list(names)}")
        return list(names)
    out = []
    for i, run in enumerate(runs):
        out.append(f"model{i + 1}" if isinstance(run, dict) else Path(run).stem)
    if len(set(out)) != len(out):  # same file names in different folders: add the folder
        out = [f"{Path(r).parent.name}/{Path(r).stem}" if not isinstance(r, dict) else o
               for r, o in zip(runs, out)]
    if len(set(out)) != len(out):
        raise ConfigurationError(f"model names are not distinct: {out}; give names explicitly")
    return out


def compare_runs(runs: Sequence[str | os.PathLike | dict[str, Any]], names: Sequence[str] | None = None,
                 metrics: Sequence[str] | None = None, out_json: str | os.PathLike | None = None,
                 alpha: float = 0.05, n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Compare evaluation results of several models on the same cases (see documentation)."""
    if len(runs) < 2:
        raise ConfigurationError("--compare needs at least two result files")
    alpha = check_alpha(alpha)
    data = [_load(r) for r in runs]
    models = _names(runs, names)
    standards = {d.get("standard") for d in data}
    if len(standards) > 1:
        raise ConfigurationError(f"results use different standards: {sorted(map(str, standards))}")
    case_sets = [set(d["cases"]) for d in data]
    common = set.intersection(*case_sets)
    problems = [(c, f"missing from {m}") for m, cs in zip(models, case_sets) for c in sorted(set.union(*case_sets) - cs)]
    if problems:
        raise DatasetError(problems, header="results cover different cases")
    cases = sorted(common)
    if metrics is None:
        metrics = [m for m in data[0].get("aggregate", {}) if all(m in d.get("aggregate", {}) for d in data)]
    result: dict[str, Any] = {"standard": standards.pop(), "models": models, "cases": cases, "metrics": {}}
    for metric in metrics:
        missing = [(c, f"{m} has no {metric}") for c in cases for m, d in zip(models, data) if metric not in d["cases"][c]]
        if missing:
            raise DatasetError(missing, header=f"metric {metric} missing")
        table = np.array([[_score(d["cases"][c], metric) for d in data] for c in cases], dtype=np.float64)
        finite = np.isfinite(table).all(axis=1)
        dropped = [c for c, ok in zip(cases, finite) if not ok]
        if dropped:
            log.warning("%s: cases with non-finite values left out: %s", metric, ", ".join(dropped))
        if finite.sum() < 2:
            raise DatasetError([(c, f"non-finite {metric}") for c in dropped] or [("-", "fewer than 2 cases")],
                               header=f"too few usable cases for {metric}")
        res = metric_comparison(table[finite], models, metric, alpha, n_resamples, seed)
        res["dropped_cases"] = dropped
        result["metrics"][metric] = res
    if out_json is not None:
        out_json = Path(out_json)
        for metric, res in result["metrics"].items():
            if res.get("friedman") is not None:
                png = out_json.with_name(f"{out_json.stem}_cd_{metric}.png")
                draw_cd_diagram(res, metric, png)
                res["cd_diagram"] = png.name
        save_strict_json(result, out_json)
        log.info("wrote %s", out_json)
    return result
