"""The report: tables, figures (valid PNGs), statistics across models, lesion tables, protocol, and the plain
statement that training was short."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from autotrans.benchmark.report import write_report
from autotrans.utils.files import load_json, save_json
from tests.benchmark.conftest import NAME

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and float(img[..., :3].std()) > 0.01, path


def test_report_content(grid_roots: dict[str, Path]) -> None:
    out = grid_roots["autotrans_results"] / "benchmark"
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    # plain words about the budget, at the top
    assert "Training was short: 4 of 4 task(s) trained only 1 epochs x 2 iterations = 2 iterations; a real run " \
           "uses 1000 x 250 = 250,000 iterations" in md  # pix2pix and regression; baselines do not train
    assert md.index("Training was short") < md.index(f"## {NAME}")
    assert "not the quality of the models" in html
    # metric table: one row per model, all five metrics, both held-out cases pooled
    assert "| model | n (cases) | MAE ↓ | MSE ↓ | PSNR (dB) ↑ | SSIM ↑ | MS-SSIM ↑ |" in md
    row = next(line for line in md.splitlines() if line.startswith("| pix2pix | 2 |"))
    assert row.count("±") == 0 and row.count(", ") == 5  # 2 cases: both values, no "mean ± std" (n < 3)
    assert "Only 2 held-out case(s) per model: their cells list the per-case values" in md
    # baselines: marked rows (italics in markdown, an italic grey row in the HTML), same cases, same metrics
    for b in ("identity", "intensity_map"):
        row = next(line for line in md.splitlines() if line.startswith(f"| *{b} (baseline)* | 2 |"))
        assert row.count(", ") == 5
        assert f'<tr class="baseline"><td>{b} (baseline)</td><td>2</td>' in html
    assert "| regression | 2 |" in md and "| *identity (baseline)* | fit, no training |" not in md
    # the opening paragraph: best trained model, best baseline, the ratio, and why there is no p-value (2 cases)
    opening = md.split("\n\n")[2] if md.split("\n\n")[1].startswith(">") else md.split("\n\n")[1]
    m = re.match(rf"{NAME}: best model (pix2pix|regression), MAE ([\d.]+) \(normalized MR scale; n = 2 "
                 rf"cases\); best baseline (identity|intensity_map), MAE ([\d.]+); MAE ratio \1 / \3 = ([\d.]+) "
                 rf"\((better|worse) than the baseline; no p-value: 2 paired case\(s\), and the Wilcoxon signed-rank "
                 rf"test needs at least 6 to be able to reach p < 0.05\)\.$", opening)
    assert m, opening
    assert float(m.group(5)) == pytest.approx(float(m.group(2)) / float(m.group(4)), abs=0.006)  # 3 digits
    assert (m.group(6) == "better") == (float(m.group(5)) < 1)
    stats = load_json(out / "statistics.json")[NAME]["mae"]["mean"]
    trained = min(("pix2pix", "regression"), key=stats.get)
    assert m.group(1) == trained and m.group(3) == min(("identity", "intensity_map"), key=stats.get)
    # statistics across the four (baselines included), marked in their tables too
    assert "2 cases pooled over folds" in md and "| *intensity_map (baseline)* |" in md.split("Statistics")[1]
    # lesion level: fold 0's held-out MS patient has a lesion map
    assert "Lesion level, by lesion size" in md and "| pix2pix | <0.5 mL |" in md
    lesion_rows = [line for line in md.split("Lesion level")[1].splitlines() if line.startswith("| pix2pix |")]
    assert lesion_rows and all(re.search(r"\(\d+/\d+ lesions\)", line) for line in lesion_rows)
    assert "| model | size class | lesions | MAE | Dice (thresholded shape) | HD95 (mm) |" in md
    assert not any("| 0 |" in line.split("lesions")[0] for line in lesion_rows)  # no empty size class
    # costs and protocol
    assert "Training and inference cost" in md and "inference / volume" in md
    cost = md.split("## Training and inference cost")[1].split("## Protocol")[0]
    assert " h |" not in cost and re.search(r"\| [\d.]+ s \|", cost)  # seconds here, not 0.0005 h
    # the same model order in every table: the families' order, then the baselines
    order = ["regression", "pix2pix", "*identity (baseline)*", "*intensity_map (baseline)*"]
    for section in (md.split("## Training")[0].split("### Statistics")[0], cost, md.split("## Protocol")[1]):
        seen = [m for line in section.splitlines() for m in order if f"| {m} |" in line]
        assert [m for m in dict.fromkeys(seen)] == order, section[:200]
    # a shared report does not name the machine
    import platform

    assert "hostname" not in md and f"| {platform.node()} |" not in md
    assert "## Protocol" in md and "| torch |" in md and "| numpy |" in md and "| monai |" in md
    plans_sha = load_json(grid_roots["autotrans_results"] / NAME / "pix2pix__autotransPlans__3d_fullres" /
                          "plans.json")
    from autotrans.planning.planner import plans_hash

    assert plans_hash(plans_sha) in md
    assert "| Dataset021_DemoT2toFLAIR | pix2pix | 0 | 1 | 2 | 2 | 1 | 0 |" in md  # epochs, its, total, batch, seed
    # figures: every linked image exists, is a real PNG, and is embedded in the HTML
    links = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", md)
    assert {Path(p).name for p in links} >= {f"{NAME}_boxplots.png", f"{NAME}_slices.png"}
    for p in links:
        check_png(out / p)
    assert html.count('src="data:image/png;base64,') == len(links)
    # strict JSON: no bare NaN/Infinity in anything the report writes; statistics.json is never empty
    for name in ("results.json", "statistics.json"):
        json.loads((out / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name}: bare {c}"))
    results = load_json(out / "results.json")
    assert len(results["tasks"]) == 8 and results["short_training"].startswith("Training was short")
    fitted = [t for t in results["tasks"] if t.get("baseline")]
    assert len(fitted) == 4 and all(t["training"]["total_iterations"] == 0 for t in fitted)
    # each baseline was fitted on its fold's training cases only, recorded next to the table it fitted
    from autotrans.paths import preprocessed_root

    splits = load_json(preprocessed_root() / NAME / "splits_final.json")
    for t in fitted:
        assert t["training"]["train_cases"] == splits[int(t["fold"])]["train"]
        assert not set(t["cases"]) & set(t["training"]["train_cases"])
        assert (grid_roots["autotrans_results"] / NAME / f"{t['model']}__autotransPlans__3d_fullres" /
                f"fold_{t['fold']}" / "baseline.json").is_file()
    for t in results["tasks"]:
        assert t["inference"]["seconds_per_volume"] > 0 and t["training"]["hours"] > 0


def _fake_model(out: Path, source: dict, name: str, scale: float) -> dict:
    """A copy of a real task under another model name with scaled metrics (to exercise the statistics)."""
    src = out / "tasks" / NAME / "pix2pix__autotransPlans__3d_fullres" / f"fold_{source['fold']}"
    dst = out / "tasks" / NAME / f"{name}__autotransPlans__3d_fullres" / f"fold_{source['fold']}"
    shutil.copytree(src, dst, symlinks=True)
    ev = load_json(dst / "evaluation.json")
    for metrics in ev["cases"].values():
        for k in metrics:
            metrics[k] = float(metrics[k]) * scale
    save_json(ev, dst / "evaluation.json")
    return {**json.loads(json.dumps(source)), "model": name}


def test_report_statistics_with_three_models(grid_roots: dict[str, Path]) -> None:
    out = grid_roots["autotrans_results"] / "benchmark"
    real = load_json(out / "results.json")["tasks"]
    results = list(real)
    for name, scale in (("modelB", 1.1), ("modelC", 1.3)):
        results += [_fake_model(out, r, name, scale) for r in real if r["model"] == "pix2pix"]
    # a baseline that did not apply to another dataset: a note in the opening paragraph, nothing else
    results.append({"dataset": "Dataset099_MRtoCT", "model": "identity", "fold": "0", "baseline": True,
                    "skipped": "identity: source channel 0 (MR) and target (CT) are different modalities"})
    write_report(out, results)
    md = (out / "report.md").read_text()
    assert "Dataset099_MRtoCT: Baseline identity skipped: source channel 0 (MR) and target (CT) are different " \
           "modalities." in md.split("## ")[0]  # before the first dataset section
    assert "## Dataset099" not in md
    assert "2 cases pooled over folds" in md and "Friedman χ² =" in md
    assert "| A | B | mean A−B | Wilcoxon p | Holm p | rank-biserial | significant |" in md
    assert "| pix2pix | modelB |" in md and "| modelB | modelC |" in md
    for metric in ("mae", "ssim"):
        check_png(out / "report_files" / f"{NAME}_cd_{metric}.png")
    stats = load_json(out / "statistics.json")[NAME]
    assert stats["mae"]["mean_rank"]["pix2pix"] < stats["mae"]["mean_rank"]["modelC"]  # lower MAE ranks first
    assert np.isclose(stats["mae"]["mean"]["modelB"], 1.1 * stats["mae"]["mean"]["pix2pix"])
    # the slices show every model
    assert "modelC" in md
