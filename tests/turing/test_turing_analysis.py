"""Statistics against scipy, textbook values and answer tables built with known accuracy and kappa."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from autotrans.turing import AnalysisError, Study, analyze_studies, binomial_test, clopper_pearson, fleiss_kappa
from autotrans.turing.analysis import Rating, analyze, calibration
from autotrans.turing.store import AnswerStore


@pytest.mark.parametrize("n", [1, 2, 7, 20, 51, 200])
@pytest.mark.parametrize("p", [0.5, 0.3, 0.81])
def test_binomial_test_agrees_with_scipy(n: int, p: float) -> None:
    for k in range(n + 1):
        assert binomial_test(k, n, p) == pytest.approx(binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300)


def test_binomial_test_paper_example() -> None:
    """The paper's reader study: 56.7% accuracy; e.g. 289 of 510 answers is not far from chance."""
    assert binomial_test(289, 510) == pytest.approx(binomtest(289, 510).pvalue, rel=1e-9)
    assert binomial_test(10, 10) == pytest.approx(2 / 1024)
    assert binomial_test(0, 0) == 1.0
    with pytest.raises(ValueError):
        binomial_test(5, 4)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (57, 100), (1, 1)])
def test_clopper_pearson_agrees_with_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
    assert all(math.isnan(x) for x in clopper_pearson(0, 0))


FLEISS_1971 = np.array([  # Fleiss (1971) / Wikipedia example: 10 subjects, 14 raters, 5 categories
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def test_fleiss_kappa_textbook_value() -> None:
    assert fleiss_kappa(FLEISS_1971) == pytest.approx(0.20993, abs=5e-5)
    assert fleiss_kappa(np.array([[3, 0], [0, 3], [3, 0]])) == pytest.approx(1.0)
    # readers who split 2:2 on every item agree less than chance predicts: kappa = -1/3
    assert fleiss_kappa(np.array([[2, 2]] * 6)) == pytest.approx(-1 / 3)
    assert math.isnan(fleiss_kappa(np.array([[4, 0], [4, 0]])))
    with pytest.raises(AnalysisError):
        fleiss_kappa(np.array([[2, 1], [1, 1]]))


def test_fleiss_kappa_matches_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(1)
    for _ in range(5):
        table = rng.multinomial(5, [0.6, 0.4], size=30)
        assert fleiss_kappa(table) == pytest.approx(sm.fleiss_kappa(table), abs=1e-12)


def known_table() -> list[Rating]:
    """3 readers x 40 items (20 real, 10 from each of two models) with hand-set outcomes:

    - reader a is right on 30 items (all 20 synthetic, 10 of 20 real), b on 20, c on 24;
    - confidence 5 always right, 1 right half the time.
    """
    ratings = []
    truths = ["real"] * 20 + ["synthetic"] * 20
    models = ["real"] * 20 + ["gan"] * 10 + ["unet"] * 10
    plans = {
        "a": [i % 2 == 0 for i in range(20)] + [True] * 20,
        "b": [True] * 20 + [False] * 20,
        "c": [True] * 12 + [False] * 8 + [True] * 12 + [False] * 8,
    }
    for reader, right in plans.items():
        for i, (t, m, ok) in enumerate(zip(truths, models, right, strict=True)):
            answer = t if ok else ("synthetic" if t == "real" else "real")
            conf = 5 if ok and i % 4 == 0 else 1
            ratings.append(Rating("s", reader, f"item{i:02d}", t, m, "CT", answer, conf, 10.0 + i, ""))
    return ratings


def test_analyze_known_table() -> None:
    ratings = known_table()
    s = analyze(ratings)
    o = s["overall"]
    assert (o["accuracy"]["k"], o["accuracy"]["n"]) == (74, 120)
    assert o["p_value"] == pytest.approx(binomtest(74, 120).pvalue)
    assert (o["sensitivity"]["k"], o["sensitivity"]["n"]) == (20 + 0 + 12, 60)
    assert (o["specificity"]["k"], o["specificity"]["n"]) == (10 + 20 + 12, 60)
    per = {r["reader"]: r["accuracy"]["value"] for r in s["per_reader"]}
    assert per == {"a": 0.75, "b": 0.5, "c": 0.6}
    by_model = {m["model"]: (m["accuracy"]["k"], m["n"], m["items"]) for m in s["by_model"]}
    assert by_model == {"real": (42, 60, 20), "gan": (10 + 0 + 10, 30, 10), "unet": (10 + 0 + 2, 30, 10)}
    assert [m["model"] for m in s["by_model"]][0] == "real"
    assert s["by_modality"][0]["modality"] == "CT" and s["by_modality"][0]["n"] == 120

    # by hand: 6 items with unanimous answers (P_i = 1), 34 split 2:1 (P_i = 1/3); 70 of 120 answers "real"
    p_bar, p_e = (6 + 34 / 3) / 40, (70**2 + 50**2) / 120**2
    assert s["kappa"]["overall"]["kappa"] == pytest.approx((p_bar - p_e) / (1 - p_e))
    assert s["kappa"]["overall"]["n_items"] == 40 and s["kappa"]["overall"]["n_readers"] == 3

    cal = {lv["confidence"]: lv for lv in s["calibration"]["levels"]}
    assert cal[5]["value"] == 1.0 and cal[5]["n"] == sum(r.confidence == 5 for r in ratings)
    assert cal[3]["n"] == 0 and math.isnan(cal[3]["value"])
    assert s["calibration"]["mean_confidence_correct"] > s["calibration"]["mean_confidence_wrong"]


def test_calibration_of_a_perfectly_calibrated_reader() -> None:
    ratings = []
    for c in range(1, 6):  # at confidence c, right on (4 + c - 1) of 8 answers: 50%, 62.5%, ... 100%
        for j in range(8):
            truth = "real"
            answer = truth if j < 4 + (c - 1) else "synthetic"
            ratings.append(Rating("s", "r", f"{c}-{j}", truth, "real", "MR", answer, c, 1.0, ""))
    assert calibration(ratings)["ece"] == pytest.approx(0.0)


def test_kappa_only_on_items_every_reader_answered() -> None:
    ratings = [r for r in known_table() if not (r.reader == "c" and r.item == "item00")]
    s = analyze(ratings)
    assert s["kappa"]["overall"]["n_items"] == 39


def test_no_answers_is_an_error(ct_study_template: Path, tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="no answers"):
        analyze_studies([ct_study_template], tmp_path / "report")


def test_report_from_a_study_folder(study: Study, tmp_path: Path) -> None:
    store = AnswerStore(study.db_path)
    right = 0
    for ri, (reader, r) in enumerate(study.readers.items()):
        for i, item in enumerate(r["order"]):
            truth = study.items[item]["truth"]
            ok = (i + ri) % 3 != 0
            right += ok
            answer = truth if ok else ("real" if truth == "synthetic" else "synthetic")
            store.save_answer(reader, item, answer, 1 + (i % 5), "", 3.0)
    out = tmp_path / "report"
    summary = analyze_studies([study.folder], out)
    assert summary["overall"]["accuracy"]["k"] == right
    for name in ["report.html", "summary.csv", "per_reader.csv", "by_model.csv", "by_modality.csv",
                 "calibration.csv", "kappa.csv", "answers.csv", "summary.json", "accuracy_per_reader.png",
                 "accuracy_by_model.png", "calibration.png"]:
        assert (out / name).stat().st_size > 0, name
    with open(out / "answers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(study.readers) * len(study.items)
    assert sum(r["correct"] == "True" for r in rows) == right
    with open(out / "per_reader.csv", newline="") as f:
        assert [r["reader"] for r in csv.DictReader(f)] == sorted(study.readers)
    html = (out / "report.html").read_text()
    assert "Fleiss" in html and "cyclegan_kiwi" in html and 'src="calibration.png"' in html
    assert json.loads((out / "summary.json").read_text())["n_ratings"] == len(rows)
    # two studies pool, readers are then named study/reader (a second study: a copy with its own study id;
    # the same study given twice is counted once)
    second = tmp_path / "study_b"
    shutil.copytree(study.folder, second)
    meta = json.loads((second / "study.json").read_text())
    meta["study_id"] = "0" * 16
    (second / "study.json").write_text(json.dumps(meta))
    assert analyze_studies([study.folder, study.folder], tmp_path / "same")["n_ratings"] == len(rows)
    pooled = analyze_studies([study.folder, second], tmp_path / "pooled")
    assert pooled["n_ratings"] == 2 * len(rows)
    assert pooled["per_reader"][0]["reader"].startswith("study")
