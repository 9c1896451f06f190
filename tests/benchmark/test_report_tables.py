"""Report tables and figures on synthetic per-case results (no grid needed): honest small-n cells and plots, the
lesion table's counts, readable durations, one model order, and a statistics.json that says why it is empty."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autotrans.benchmark import figures
from autotrans.benchmark.report import lesion_blocks, metric_table, small_n_note, statistics_blocks
from autotrans.benchmark.summary import fmt_duration, model_order, summary_cell
from autotrans.evaluation.lesions import lesion_metrics
from autotrans.evaluation.strict_json import save_strict_json


def _models(n: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for name, base, baseline in (("pix2pix", 60.0, False), ("regression", 50.0, False), ("identity", 120.0, True)):
        cases = {f"c{i}": {"mae": base + rng.normal(), "mse": base**2, "psnr": 25.0, "ssim": 0.8, "ms_ssim": 0.9}
                 for i in range(n)}
        out[name] = {"cases": cases, "lesions": [], "tasks": [{"modality": "CT", **({"baseline": True} if baseline
                                                                                     else {})}]}
    return out


def test_small_n_cells_and_plots(tmp_path: Path) -> None:
    one = metric_table(_models(1))
    assert one[1][:3] == ["model", "n (cases)", "MAE ↓"] and "PSNR (dB) ↑" in one[1]
    assert all("±" not in c for row in one[2] for c in row)  # one case: its value, never "x ± 0 (x)"
    three = metric_table(_models(3))
    assert all(c.count("±") == 1 for row in three[2] for c in row[2:])
    assert summary_cell([1.0, 2.0]) == "1, 2" and summary_cell([math.nan]) == "n/a"
    assert small_n_note(_models(1)).startswith("Only 1 held-out case(s) per model: their cells list")
    assert small_n_note(_models(3)) is None
    values = {m: {k: [c[k] for c in e["cases"].values()] for k in ("mae", "ssim")} for m, e in _models(1).items()}
    assert figures.boxplots(values, ["mae", "ssim"], "t", tmp_path / "one.png") is False  # points only
    values = {m: {k: [c[k] for c in e["cases"].values()] for k in ("mae", "ssim")} for m, e in _models(4).items()}
    assert figures.boxplots(values, ["mae", "ssim"], "t", tmp_path / "four.png") is True
    assert figures._y_limits("mae", [np.array([50.0, 60.0])]) == (0.0, pytest.approx(66.0))
    assert figures._y_limits("ssim", [np.array([0.7])]) == (0.0, 1.0)
    assert figures.HIGHER_IS_BETTER["psnr"] and not figures.HIGHER_IS_BETTER["mae"]


def test_statistics_json_says_why_it_is_empty(tmp_path: Path) -> None:
    stats: dict = {}
    blocks = statistics_blocks("D", _models(1), tmp_path, stats)
    assert "Not computed" in blocks[1][1]
    assert stats["D"]["skipped"].startswith("needs at least 2 models and 2 cases") and stats["D"]["n_cases"] == 1
    save_strict_json({"x": math.nan, "y": math.inf, **stats}, tmp_path / "s.json")
    text = (tmp_path / "s.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data["x"] is None and data["y"] is None and data["y_infinite"] is True


def test_durations_and_model_order() -> None:
    assert fmt_duration(0.0005 * 3600) == "1.8 s" and fmt_duration(0.001) == "< 0.01 s"
    assert fmt_duration(600) == "10 min" and fmt_duration(5 * 3600) == "5 h" and fmt_duration(None) == "–"
    names = ["intensity_map", "zeta", "pix2pix", "identity", "regression", "flow_matching"]
    assert model_order(names, {"identity", "intensity_map"}) == \
        ["regression", "pix2pix", "flow_matching", "zeta", "identity", "intensity_map"]


def _lesion_case() -> tuple[np.ndarray, ...]:
    """An MR volume with a bright lesion the prediction misses, and a faint one neither shows above threshold."""
    rng = np.random.default_rng(1)
    ref = rng.normal(0.0, 0.05, (24, 24, 24)).astype(np.float32)
    lesions = np.zeros(ref.shape, np.uint8)
    lesions[5:8, 5:8, 5:8] = 1  # bright in the reference
    lesions[15:18, 15:18, 15:18] = 1  # not above the background in either image
    ref[5:8, 5:8, 5:8] += 2.0
    pred = rng.normal(0.0, 0.05, ref.shape).astype(np.float32)
    return ref, pred, lesions


def test_lesion_table_counts_and_reasons() -> None:
    ref, pred, lesions = _lesion_case()
    rows = lesion_metrics(ref, pred, lesions, np.ones(ref.shape, bool), "MR", (1.0, 1.0, 1.0))
    assert len(rows) == 2
    bright = next(r for r in rows if r["seg_voxels_ref"])
    faint = next(r for r in rows if not r["seg_voxels_ref"])
    assert bright["dice"] == 0.0 and math.isnan(bright["hd95_mm"])
    assert "prediction" in bright["hd95_mm_undefined"] and "reference" not in bright["hd95_mm_undefined"]
    assert math.isnan(faint["dice"]) and "nor in the prediction" in faint["dice_undefined"]
    models = {"pix2pix": {"cases": {}, "tasks": [{}], "lesions": [{"case": "c", **r} for r in rows]},
              "identity": {"cases": {}, "tasks": [{"baseline": True}],
                           "lesions": [{"case": "c", **r} for r in lesion_metrics(
                               ref, ref.copy(), lesions, np.ones(ref.shape, bool), "MR", (1.0, 1.0, 1.0))]}}
    blocks = lesion_blocks(models)
    header, table = blocks[-1][1], blocks[-1][2]
    assert header[:5] == ["model", "size class", "lesions", "MAE", "Dice (thresholded shape)"]
    assert "HD95 (mm)" in header and "|contrast error| (relative)" in header
    assert [r[1] for r in table] == ["<0.5 mL", "<0.5 mL"]  # no empty size class, no "all" repeating it
    dice = dict(zip(header, table[0]))["Dice (thresholded shape)"]
    assert dice == "0 (1/2 lesions)"  # the one lesion where Dice is defined, out of two
    assert dict(zip(header, table[0]))["HD95 (mm)"] == "– (0/2 lesions)"
    assert dict(zip(header, table[1]))["HD95 (mm)"] == "0 (1/2 lesions)"  # identity of itself: 0 mm


def _dose_models(n: int) -> dict:
    """Three models with dose results: a good sCT (high pass rates), a worse one, the identity baseline (CBCT)."""
    rng = np.random.default_rng(1)
    out = _models(n)
    settings = [{"modality": beam, "engine": f"pyRadPlan {beam} pencil beam", "gantry_angles": [0.0, 180.0],
                 "dose_grid_mm": 3.0, "prescription_gy": 2.0} for beam in ("photons", "protons")]
    for name, quality in (("pix2pix", 0.5), ("regression", 0.2), ("identity", 3.0)):
        cases = {}
        for i in range(n):
            row = {}
            for beam, k in (("photons", 1.0), ("protons", 4.0)):
                row.update({f"{beam}_gamma_3%3mm": 100 - k * quality + rng.normal(0, 0.01),
                            f"{beam}_gamma_2%2mm": 100 - 2 * k * quality + rng.normal(0, 0.01),
                            f"{beam}_gamma_1%1mm": 100 - 5 * k * quality + rng.normal(0, 0.01),
                            f"{beam}_target_D95_absdiff_pct": k * quality + abs(rng.normal(0, 0.01)),
                            f"{beam}_target_Dmean_absdiff_pct": k * quality,
                            f"{beam}_cutoff_mae_pct": k * quality / 2})
            cases[f"c{i}"] = row
        details = {c: {"photons": {"target": "automatic: sphere"}} for c in cases}
        out[name].update(dose_cases=cases, dose=[{"cases": cases, "settings": settings, "case_details": details}])
    return out


def test_dose_section_tables_and_statistics(tmp_path: Path) -> None:
    from autotrans.benchmark.report import dose_blocks

    stats: dict = {}
    blocks = dose_blocks("D", _dose_models(6), tmp_path, stats)
    text = " ".join(str(b[1]) for b in blocks if b[0] in ("h3", "p"))
    assert "plan on the real CT, recompute on the synthetic CT" in text and "automatic: sphere" in text
    tables = [b for b in blocks if b[0] == "table"]
    assert tables[0][1][:3] == ["model", "n (cases)", "γ 3%/3mm (%) ↑"] and len(tables[0][2]) == 3
    # statistics for one pass rate and one DVH point per beam type, directions right
    dose_stats = stats["D"]["dose"]
    assert set(dose_stats) == {"photons_gamma_2%2mm", "photons_target_D95_absdiff_pct",
                               "protons_gamma_2%2mm", "protons_target_D95_absdiff_pct"}
    assert dose_stats["protons_gamma_2%2mm"]["direction"] == "higher is better"
    assert dose_stats["protons_target_D95_absdiff_pct"]["direction"] == "lower is better"
    ranks = dose_stats["protons_gamma_2%2mm"]["mean_rank"]
    assert ranks["regression"] < ranks["pix2pix"] < ranks["identity"]  # rank 1 = best
    assert any(b[0] == "img" for b in blocks)  # CD diagrams (3 models)
    assert dose_blocks("D", _models(3), tmp_path, {}) == []  # no dose configured: no section


def test_segmentation_section(tmp_path: Path) -> None:
    from autotrans.benchmark.report import segmentation_blocks

    rng = np.random.default_rng(2)
    models = _models(5)
    section = {"segmenter": {"kind": "nnunet", "name": "Dataset050_Body", "folds": ["0"]},
               "labels": {"1": "soft_tissue", "2": "bone"}}
    for name, dice in (("pix2pix", 0.8), ("regression", 0.9), ("identity", 0.5)):
        cases = {f"c{i}": {"seg_dice_mean": dice + rng.normal(0, 0.01), "seg_hd95_mean": 10 * (1 - dice),
                           "seg_dice_soft_tissue": dice, "seg_dice_bone": dice - 0.1} for i in range(5)}
        models[name].update(seg_cases=cases, segmentation=[section])
    stats: dict = {}
    blocks = segmentation_blocks("D", models, tmp_path, stats)
    table = next(b for b in blocks if b[0] == "table")
    assert table[1] == ["model", "n (cases)", "mean Dice ↑", "mean HD95 (mm) ↓", "Dice soft_tissue ↑", "Dice bone ↑"]
    assert "Dataset050_Body" in blocks[1][1]
    res = stats["D"]["segmentation"]
    assert res["seg_hd95_mean"]["direction"] == "lower is better"
    assert res["seg_dice_mean"]["mean_rank"]["regression"] < res["seg_dice_mean"]["mean_rank"]["identity"]
    assert segmentation_blocks("D", _models(3), tmp_path, {}) == []
