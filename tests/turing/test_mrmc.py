"""MRMC ROC analysis: the published Van Dyke OR results, simulated studies of known AUC, 2AFC and display.

Published reference: the output of the Iowa OR-DBM MRMC 2.51 software (Schartz, Hillis, Pesce & Berbaum) for
the Van Dyke data, "VanDyke trap area jackknife anova.txt", as shipped in RJafroc's
tests/testthat/goodValues361/Iowa/VanDyke.txt (printed to 2-8 digits); F, ddf and p to more digits as printed
by RJafroc's documentation of its OR analysis of dataset02 (Chakraborty's RJafroc book: F 4.456319, ddf_H
15.25967, p 0.05166569) and by MRMCaov's (Smith & Hillis) example output, which agree.
Data: tests/turing/data/VanDyke.lrc (see SOURCE.md there).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from autotrans.turing import mrmc
from autotrans.turing.analysis import Rating, analyze
from autotrans.turing.analysis_mrmc import display_section, mrmc_section

VAN_DYKE = Path(__file__).parent / "data" / "VanDyke.lrc"  # source and licence: data/SOURCE.md


def read_lrc(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The MRMC .lrc format: title; reader id; modality names; L|S per modality (L: larger = more likely
    abnormal); then per reader normal cases ("rating rating case"), '*', abnormal cases, '*', the next
    reader's id ... and '#' at the end. Returns ratings (modality, reader, case), truth, modalities, readers."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    modalities = [m.strip('"') for m in lines[2].split()]
    assert lines[3].split() == ["L"] * len(modalities)
    ratings: dict[tuple[str, int], list[float]] = {}
    truth: dict[int, bool] = {}
    reader, i = lines[1], 4
    while True:
        for abnormal in (False, True):
            while lines[i] != "*":
                *values, case = lines[i].split()
                ratings[(reader, int(case))] = [float(v) for v in values]
                truth[int(case)] = abnormal
                i += 1
            i += 1
        if lines[i] == "#":
            break
        reader, i = lines[i], i + 1
    readers, cases = sorted({r for r, _ in ratings}), sorted(truth)
    scores = np.array([[[ratings[(r, c)][m] for c in cases] for r in readers] for m in range(len(modalities))])
    return scores, np.array([truth[c] for c in cases]), modalities, readers


@pytest.fixture(scope="module")
def van_dyke() -> dict:
    scores, truth, modalities, readers = read_lrc(VAN_DYKE)
    assert scores.shape == (2, 5, 114) and truth.sum() == 45
    return mrmc.mrmc_roc(scores, truth, modalities=modalities, readers=readers)


def test_van_dyke_reader_aucs_and_means(van_dyke: dict) -> None:
    printed = {"0": [0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
               "1": [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]}
    for m, values in printed.items():
        assert list(van_dyke["reader_auc"][m].values()) == pytest.approx(values, abs=5e-9)
    pm = van_dyke["per_modality"]
    assert pm[0]["auc"] == pytest.approx(0.89703704, abs=5e-9)
    assert pm[1]["auc"] == pytest.approx(0.94083736, abs=5e-9)
    assert van_dyke["differences"][0]["difference"] == pytest.approx(-0.04380032, abs=5e-9)


def test_van_dyke_or_anova_and_components(van_dyke: dict) -> None:
    c = van_dyke["components"]
    assert c["ms_t"] == pytest.approx(0.00479617, abs=5e-9)
    assert c["ms_r"] == pytest.approx(0.00383620, abs=5e-9)
    assert c["ms_tr"] == pytest.approx(0.00055103, abs=5e-9)
    assert c["var_r"] == pytest.approx(0.00153500, abs=5e-9)
    assert c["var_tr"] == pytest.approx(0.00020040, abs=5e-9)
    assert c["cov1"] == pytest.approx(0.00034661, abs=5e-9)
    assert c["cov2"] == pytest.approx(0.00034407, abs=5e-9)
    assert c["cov3"] == pytest.approx(0.00023903, abs=5e-9)
    assert c["var_error"] == pytest.approx(0.00080229, abs=5e-9)
    assert [p["ms_r"] for p in van_dyke["per_modality"]] == pytest.approx([0.00308263, 0.00130460], abs=5e-9)


def test_van_dyke_random_readers_random_cases(van_dyke: dict) -> None:
    e = van_dyke["equal_auc_test"]
    assert e["f"] == pytest.approx(4.456319, abs=5e-7)
    assert e["ddf"] == pytest.approx(15.25967, abs=5e-6)
    assert e["p_value"] == pytest.approx(0.05166569, abs=5e-9)
    assert e["error_term"] == pytest.approx(0.00107626, abs=5e-9)
    d = van_dyke["differences"][0]
    assert d["se"] == pytest.approx(0.02075, abs=5e-6)
    assert d["t"] == pytest.approx(-2.11, abs=5e-3)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((-0.08796, 0.00036), abs=5e-6)
    # single-treatment CIs (part c): AUC, SE, df, CI, Cov2
    printed = [(0.89703704, 0.03317360, 12.74, 0.82522360, 0.96885048, 0.00048396),
               (0.94083736, 0.02156637, 12.71, 0.89413783, 0.98753689, 0.00020419)]
    for p, (auc, se, df, lo, hi, cov2) in zip(van_dyke["per_modality"], printed, strict=True):
        assert p["auc"] == pytest.approx(auc, abs=5e-9)
        assert p["se"] == pytest.approx(se, abs=5e-9)
        assert p["df"] == pytest.approx(df, abs=5e-3)
        assert (p["ci_low"], p["ci_high"]) == pytest.approx((lo, hi), abs=5e-9)
        assert p["cov2"] == pytest.approx(cov2, abs=5e-9)


def test_delong_is_close_to_the_jackknife() -> None:
    scores, truth, modalities, readers = read_lrc(VAN_DYKE)
    d = mrmc.mrmc_roc(scores, truth, modalities=modalities, readers=readers, covariance="delong")
    assert d["equal_auc_test"]["f"] == pytest.approx(4.456319, rel=0.02)
    assert d["components"]["var_error"] == pytest.approx(0.00080229, rel=0.03)
    # for one AUC, DeLong's variance is the jackknife's times (n-1)/n per class, so slightly smaller
    assert d["components"]["var_error"] < 0.00080229


def test_rating_scale_and_empirical_auc() -> None:
    assert [mrmc.synthetic_rating("real", c) for c in (5, 4, 3, 2, 1)] == [1, 2, 3, 4, 5]
    assert [mrmc.synthetic_rating("synthetic", c) for c in (1, 2, 3, 4, 5)] == [6, 7, 8, 9, 10]
    with pytest.raises(ValueError):
        mrmc.synthetic_rating("maybe", 3)
    rng = np.random.default_rng(3)
    neg, pos = rng.integers(1, 11, 40), rng.integers(3, 11, 30)
    u = stats.mannwhitneyu(pos, neg).statistic
    assert mrmc.empirical_auc(neg, pos) == pytest.approx(u / (40 * 30))


def simulate(rng: np.random.Generator, n_readers: int = 6, n_pos: int = 50, n_neg: int = 50, d: float = 0.975,
             sd_reader: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Binormal MRMC data with random readers and cases: x = (d + R_j) t + C_k + E_jk with C, E ~ N(0, 1/2),
    R ~ N(0, sd_reader^2). A reader's AUC is Phi((d + R_j) / sqrt(2)); averaged over readers the AUC is
    Phi(d / sqrt(2 + sd_reader^2)) (0.75 for the defaults, 0.5 for d = 0)."""
    truth = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    case = rng.normal(0, math.sqrt(0.5), n_pos + n_neg)
    reader = rng.normal(0, sd_reader, n_readers)
    x = (d + reader[:, None]) * truth[None, :] + case[None, :] + rng.normal(0, math.sqrt(0.5), (n_readers, len(truth)))
    return x[None], truth


def true_auc(d: float, sd_reader: float = 0.3) -> float:
    return float(stats.norm.cdf(d / math.sqrt(2 + sd_reader ** 2)))


def test_simulated_study_ci_covers_the_truth_and_matches_a_bootstrap() -> None:
    assert true_auc(0.975) == pytest.approx(0.75, abs=2e-3)
    rng = np.random.default_rng(2026)
    ratios = []
    for _ in range(3):
        scores, truth = simulate(rng)
        res = mrmc.mrmc_roc(scores, truth)["per_modality"][0]
        assert res["ci_low"] < true_auc(0.975) < res["ci_high"]
        # two-way bootstrap: readers with replacement, then cases with replacement within each truth class
        pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
        boots = []
        for _ in range(400):
            rd = rng.integers(0, scores.shape[1], scores.shape[1])
            cs = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
            theta, _ = mrmc.auc_jackknife(scores[:, rd][:, :, cs], truth[cs])
            boots.append(theta.mean())
        lo, hi = np.percentile(boots, [2.5, 97.5])
        ratios.append((res["ci_high"] - res["ci_low"]) / (hi - lo))
    assert 0.75 < float(np.mean(ratios)) < 1.25, ratios


def test_coverage_and_null_rejection_rate() -> None:
    """200 simulated studies each: the 95% CI covers AUC 0.75 at about the nominal rate, and the test of
    AUC = 0.5 rejects true nulls at about 5% (Hillis' df keep it near nominal with 6 readers)."""
    rng = np.random.default_rng(11)
    cover = reject = 0
    n = 200
    for _ in range(n):
        scores, truth = simulate(rng)
        r = mrmc.mrmc_roc(scores, truth)["per_modality"][0]
        cover += r["ci_low"] <= true_auc(0.975) <= r["ci_high"]
        scores, truth = simulate(rng, d=0.0)
        reject += mrmc.mrmc_roc(scores, truth)["per_modality"][0]["p_value"] < 0.05
    assert 0.90 <= cover / n <= 0.99, cover
    assert 0.02 <= reject / n <= 0.09, reject


def test_null_of_equal_models_rejected_at_nominal_rate() -> None:
    """Two models of equal AUC read by the same readers on the same cases: F test rejects at about 5%."""
    rng = np.random.default_rng(5)
    reject, n = 0, 200
    for _ in range(n):
        shared, truth = simulate(rng, n_pos=40, n_neg=60)
        # both models share readers and cases and each adds its own reader-by-case noise of the same size
        a, b = (shared + rng.normal(0, math.sqrt(0.5), shared.shape) for _ in range(2))
        reject += mrmc.mrmc_roc(np.concatenate([a, b]), truth)["equal_auc_test"]["p_value"] < 0.05
    assert 0.02 <= reject / n <= 0.09, reject


def test_design_table_from_van_dyke(van_dyke: dict) -> None:
    comps = mrmc.planning_components(van_dyke)
    rows = mrmc.design_table(comps, readers=[5, 10], cases=[114, 456])
    at = {(r["readers"], r["cases"]): r for r in rows}
    # at the pilot's own size the expected SE is the pooled single-modality SE of the pilot itself
    pm = van_dyke["per_modality"]
    assert at[(5, 114)]["se_auc"] == pytest.approx(math.sqrt(np.mean([p["se"] ** 2 for p in pm])), rel=1e-9)
    # a difference between two modalities at the pilot's size: the pilot's SE of the difference
    assert at[(5, 114)]["se_difference"] == pytest.approx(van_dyke["differences"][0]["se"], rel=1e-9)
    assert at[(10, 456)]["half_width_auc"] < at[(10, 114)]["half_width_auc"] < at[(5, 114)]["half_width_auc"]
    assert at[(10, 456)]["half_width_difference"] < at[(5, 114)]["half_width_difference"]


def test_two_afc_summary() -> None:
    rng = np.random.default_rng(4)
    skill = {"r1": 0.85, "r2": 0.7, "r3": 0.6, "r4": 0.75}
    easy = rng.normal(0, 1, 80)  # item difficulty shared by readers
    records = [{"reader": r, "item": f"i{k}",
                "correct": bool(rng.random() < stats.norm.cdf(stats.norm.ppf(p) + 0.5 * e))}
               for r, p in skill.items() for k, e in enumerate(easy)]
    s = mrmc.two_afc_summary(records)
    for row in s["per_reader"]:
        lo, hi = mrmc.clopper_pearson(row["k"], row["n"])
        assert (row["ci_low"], row["ci_high"]) == (lo, hi) and row["n"] == 80
        assert row["p_value"] == pytest.approx(stats.binomtest(row["k"], row["n"]).pvalue)
    pooled = s["pooled"]
    assert pooled["proportion_correct"] == pytest.approx(np.mean([r["proportion_correct"] for r in s["per_reader"]]))
    assert pooled["ci_low"] < pooled["proportion_correct"] < pooled["ci_high"]
    # random readers and items: wider than the naive pooled binomial interval that ignores both
    assert pooled["ci_high"] - pooled["ci_low"] > s["pooled_naive"]["ci_high"] - s["pooled_naive"]["ci_low"]
    one = mrmc.two_afc_summary([{"reader": "a", "case": "x", "correct": True}])
    assert one["pooled"] is None and "2 readers" in one["pooled_reason"]


def _answers(n_items: int = 30, readers: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> list[Rating]:
    rng = np.random.default_rng(seed)
    out = []
    for ri, reader in enumerate(readers):
        for i in range(n_items):
            truth = "synthetic" if i % 2 else "real"
            model = ("gan", "unet")[(i // 2) % 2] if truth == "synthetic" else "real"
            colormap = "hot" if (i + ri) % 3 == 0 else "grey"
            p_right = 0.85 if colormap == "hot" else 0.55
            right = rng.random() < p_right
            answer = truth if right else ("real" if truth == "synthetic" else "synthetic")
            display = {"colormap": colormap, "fusion": i % 2 == 0, "window_center": 40.0, "window_width": 400.0,
                       "time_s": 5.0 + i}
            out.append(Rating("s", reader, f"item{i:02d}", truth, model, "PET", answer, int(rng.integers(1, 6)),
                              5.0 + i, "", display))
    return out


def test_display_settings_section() -> None:
    ratings = _answers(60)
    d = display_section(ratings)
    assert d["n_with_settings"] == len(ratings) and "Exploratory" in d["note"]
    cm = next(f for f in d["factors"] if f["factor"] == "colormap")
    levels = {lv["level"]: lv for lv in cm["levels"]}
    assert set(levels) == {"grey", "hot"} and levels["hot"]["n"] + levels["grey"]["n"] == len(ratings)
    assert levels["hot"]["k"] == sum(r.correct for r in ratings if r.display["colormap"] == "hot")
    table = [[levels[x]["k"], levels[x]["n"] - levels[x]["k"]] for x in ("grey", "hot")]
    assert cm["test"] == "Fisher exact" and cm["p_value"] == pytest.approx(stats.fisher_exact(table)[1])
    assert cm["p_value"] < 0.05 and levels["hot"]["value"] > levels["grey"]["value"]
    assert len(cm["within_reader"]) == 3
    fusion = next(f for f in d["factors"] if f["factor"] == "fusion")
    assert {lv["level"] for lv in fusion["levels"]} == {"true", "false"}
    # answers without settings (studies made before they were recorded): no factors, nothing breaks
    plain = [Rating(r.study, r.reader, r.item, r.truth, r.model, r.modality, r.answer, r.confidence, 1.0, "")
             for r in ratings]
    assert display_section(plain)["factors"] == [] and display_section(plain)["n_with_settings"] == 0


def test_mrmc_section_in_analyze() -> None:
    s = analyze(_answers(40))
    st = s["mrmc"]["studies"][0]
    assert st["computed"] and st["n_readers"] == 3 and st["n_cases"] == 40
    assert {p["model"] for p in st["by_model"]["per_model"]} == {"gan", "unet"}
    assert st["by_model"]["equal_auc_test"]["df1"] == 1 and len(st["by_model"]["differences"]) == 1
    assert 0 <= st["overall"]["auc"] <= 1 and st["design_table"][0]["readers"] == 3
    # a reader who answered little is left out; the others' complete block is analysed
    partial = [r for r in _answers(40, ("a", "b", "c", "d")) if not (r.reader == "d" and r.item > "item05")]
    st = mrmc_section(partial)["studies"][0]
    assert st["readers_left_out"] == ["d"] and st["n_readers"] == 3
    # too few readers: said, not computed
    st = mrmc_section(_answers(10, ("a",)))["studies"][0]
    assert not st["computed"] and "at least 2 readers" in st["reason"]


def test_report_from_a_study_folder_has_the_mrmc_section(study, tmp_path: Path) -> None:
    import json

    from autotrans.turing import analyze_studies
    from autotrans.turing.store import AnswerStore

    store = AnswerStore(study.db_path)
    for ri, (reader, r) in enumerate(study.readers.items()):
        for i, item in enumerate(r["order"]):
            truth = study.items[item]["truth"]
            ok = (i + ri) % 3 != 0
            answer = truth if ok else ("real" if truth == "synthetic" else "synthetic")
            store.save_answer(reader, item, answer, 1 + (i % 5), "", 3.0)
    out = tmp_path / "report"
    summary = analyze_studies([study.folder], out)
    st = summary["mrmc"]["studies"][0]
    assert st["computed"] and st["n_readers"] == len(study.readers)
    html = (out / "report.html").read_text()
    assert "MRMC ROC (Obuchowski&ndash;Rockette, Hillis ddf, jackknife)" in html
    for name in ("mrmc_reader_auc.csv", "mrmc_auc.csv", "mrmc_design.csv"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["mrmc"]["studies"][0]["overall"]["auc"] == pytest.approx(st["overall"]["auc"])
