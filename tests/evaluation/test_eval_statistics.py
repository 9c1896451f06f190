"""Statistics across models agree with scipy / scikit-posthocs / statsmodels on a known table."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats

from autotrans.errors import AutotransError
from autotrans.evaluation import compare_runs
from autotrans.evaluation.statistics import critical_difference, holm, mean_ranks, rank_biserial

# 12 cases x 4 models of MAE (lower is better): C best, then A, B, D worst
TABLE = np.array([
    [52.1, 55.3, 48.0, 61.2], [47.9, 50.2, 45.5, 58.8], [60.3, 59.1, 55.2, 66.0], [44.0, 47.5, 43.1, 50.9],
    [58.2, 61.0, 52.7, 63.3], [49.5, 49.9, 47.0, 55.1], [53.3, 56.8, 50.1, 60.2], [62.0, 60.5, 57.9, 70.4],
    [46.6, 51.3, 44.8, 52.2], [55.5, 54.0, 51.2, 59.9], [50.8, 53.6, 49.9, 57.7], [57.1, 58.2, 53.3, 64.8],
])
MODELS = ["A", "B", "C", "D"]


def _runs() -> list[dict]:
    return [{"standard": "synthrad2023", "cases": {f"c{i:02d}": {"mae": float(v)} for i, v in enumerate(TABLE[:, j])},
             "aggregate": {"mae": {}}} for j in range(4)]


def test_against_scipy_and_scikit_posthocs(tmp_path: Path) -> None:
    res = compare_runs(_runs(), names=MODELS, out_json=tmp_path / "cmp.json", n_resamples=2000)
    m = res["metrics"]["mae"]
    fr = stats.friedmanchisquare(*TABLE.T)
    assert m["friedman"]["statistic"] == pytest.approx(fr.statistic) and m["friedman"]["p"] == pytest.approx(fr.pvalue)
    nem = sp.posthoc_nemenyi_friedman(pd.DataFrame(TABLE, columns=MODELS))
    for a in MODELS:
        for b in MODELS:
            assert m["nemenyi_p"][a][b] == pytest.approx(nem.loc[a, b])
    for pair in m["wilcoxon"]:
        i, j = MODELS.index(pair["a"]), MODELS.index(pair["b"])
        w = stats.wilcoxon(TABLE[:, i], TABLE[:, j])
        assert pair["statistic"] == pytest.approx(w.statistic) and pair["p"] == pytest.approx(w.pvalue)
    # lower MAE is better: C ranks first (every case), D last (every case)
    assert m["mean_rank"]["C"] == 1.0 and m["mean_rank"]["D"] == 4.0
    ci = m["ci95"]["A"]
    assert ci[0] < TABLE[:, 0].mean() < ci[1]
    cd = tmp_path / m["cd_diagram"]
    assert cd.is_file() and cd.stat().st_size > 5000 and cd.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cmp.json").is_file()


def test_holm_matches_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels not installed")
    res = compare_runs(_runs(), names=MODELS, n_resamples=200)["metrics"]["mae"]["wilcoxon"]
    raw = [p["p"] for p in res]
    np.testing.assert_allclose([p["p_holm"] for p in res], sm.multipletests(raw, method="holm")[1])
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.random(7) ** 3
        np.testing.assert_allclose(holm(p), sm.multipletests(p, method="holm")[1])


def test_hand_values() -> None:
    # Friedman on constant ranks 1, 2, 3 over 4 cases: 12N/(k(k+1)) sum(R^2) - 3N(k+1) = 56 - 48 = 8
    t = np.array([[1.0, 2.0, 3.0]] * 4) + np.arange(4)[:, None]
    assert stats.friedmanchisquare(*t.T).statistic == pytest.approx(8.0)
    assert mean_ranks(t, +1).tolist() == [3.0, 2.0, 1.0] and mean_ranks(t, -1).tolist() == [1.0, 2.0, 3.0]
    # Demsar (2006): q_0.05 = 2.569 for k = 4, so CD = 2.569 * sqrt(4*5 / (6*12))
    assert critical_difference(4, 12) == pytest.approx(2.569 * math.sqrt(20 / 72), rel=1e-3)
    # differences +1, +2, -3 -> signed ranks 1, 2, -3 -> (3 - 3) / 6 = 0; all positive -> 1
    assert rank_biserial(np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 3.0])) == 0.0
    assert rank_biserial(np.array([2.0, 3.0]), np.array([1.0, 1.0])) == 1.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_two_models_and_mismatched_cases() -> None:
    runs = _runs()[:2]
    res = compare_runs(runs, names=["A", "B"], n_resamples=500)
    assert res["metrics"]["mae"]["friedman"] is None and len(res["metrics"]["mae"]["wilcoxon"]) == 1
    del runs[1]["cases"]["c03"]
    with pytest.raises(AutotransError, match="c03: missing from B"):
        compare_runs(runs, names=["A", "B"])
