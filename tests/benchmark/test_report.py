"""The report: tables, figures (valid PNGs), statistics across models, lesion tables, protocol, and the plain
statement that training was short."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

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
    assert "Training was short: 2 of 2 task(s) trained only 1 epochs x 2 iterations = 2 iterations; a real run " \
           "uses 1000 x 250 = 250,000 iterations" in md
    assert md.index("Training was short") < md.index(f"## {NAME}")
    assert "not the quality of the models" in html
    # metric table: one row per model, all five metrics, both held-out cases pooled
    assert "| model | cases | MAE | MSE | PSNR (dB) | SSIM | MS-SSIM |" in md
    row = next(line for line in md.splitlines() if line.startswith("| pix2pix | 2 |"))
    assert row.count("±") == 5
    # one model: statistics are explained away, not faked
    assert "Not computed: needs at least 2 models" in md
    # lesion level: fold 0's held-out MS patient has a lesion map
    assert "Lesion level, by lesion size" in md and "| pix2pix | <0.5 mL |" in md and "| pix2pix | all |" in md
    # costs and protocol
    assert "Training and inference cost" in md and "inference s/volume" in md
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
    results = load_json(out / "results.json")
    assert len(results["tasks"]) == 2 and results["short_training"].startswith("Training was short")
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
        results += [_fake_model(out, r, name, scale) for r in real]
    write_report(out, results)
    md = (out / "report.md").read_text()
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
