"""The report's opening paragraph on synthetic per-case results (no grid needed): the p-value appears only with
enough paired cases, the unit is named, skipped baselines are said, and a run without baselines says so."""
from __future__ import annotations

from autotrans.benchmark.summary import MIN_CASES_FOR_P, headline, model_label


def _entry(maes: list[float], modality: str = "CT", baseline: bool = False) -> dict:
    return {"cases": {f"c{i}": {"mae": v} for i, v in enumerate(maes)},
            "tasks": [{"modality": modality, **({"baseline": True} if baseline else {})}]}


def test_headline_with_a_p_value_in_hu() -> None:
    n = MIN_CASES_FOR_P
    models = {"regression": _entry([60.0] * n), "pix2pix": _entry([70.0] * n),
              "identity": _entry([120.0] * n, baseline=True), "intensity_map": _entry([100.0] * n, baseline=True)}
    stats = {"D": {"mae": {"n_cases": n, "wilcoxon": [
        {"a": "regression", "b": "intensity_map", "p_holm": 0.0312},
        {"a": "regression", "b": "identity", "p_holm": 0.0312}]}}}
    text = headline("D", models, stats, ["Baseline x skipped: y."])
    assert text == ("D: best model regression, MAE 60 ± 0 (HU; n = 6 cases); best baseline intensity_map, MAE 100; "
                    "MAE ratio regression / intensity_map = 0.6 (better than the baseline; Wilcoxon signed-rank "
                    "p = 0.0312, Holm-corrected over all pairs of models, n = 6). Baseline x skipped: y.")


def test_headline_too_few_cases_and_no_baseline() -> None:
    few = {"pix2pix": _entry([1.0, 2.0], "PET"), "intensity_map": _entry([0.5, 1.0], "PET", baseline=True)}
    text = headline("D", few, {}, [])
    assert "(SUV; n = 2 cases)" in text and "worse than the baseline; no p-value: 2 paired case(s)" in text
    alone = headline("D", {"pix2pix": _entry([1.0], "MR")}, {}, [])
    assert alone.endswith("no baseline in this run, so there is no reference to compare with.")
    assert "(normalized MR scale; n = 1 case)" in alone and "±" not in alone  # no "x ± 0" from one case
    assert "MAE 1.5 (SUV; n = 2 cases)" in text  # two cases: the mean, no spread
    assert model_label("identity", {"identity"}) == "*identity (baseline)*" and model_label("a", set()) == "a"
