"""``autotrans_demo`` end to end on the bundled data (one model; all eight and the baselines in the slow test), and
its report in headless Chromium: no console errors, every image loaded, a non-blank screenshot.

The browser test needs Debian's chromium and chromium-driver (installed by .ci/run) and selenium; it skips
where they are missing, except under CI (``CI`` set), where a missing browser is a failure.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autotrans.benchmark.demo import DEMO_BASELINES, DEMO_MODELS, budget_schedule
from autotrans.cli.demo import main as demo_main
from tests.benchmark.test_report import check_png

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOTS = ("autotrans_raw", "autotrans_preprocessed", "autotrans_results")


def test_budget_schedule() -> None:
    assert budget_schedule(1.0) == budget_schedule(1.0)
    full = budget_schedule(1.0)
    assert (full.epochs, full.iterations, full.val_iterations, full.steps) == (1, 10, 2, 10)
    tiny = budget_schedule(0.01)
    assert (tiny.epochs, tiny.iterations, tiny.steps) == (1, 2, 2)
    assert (budget_schedule(4.0).epochs, budget_schedule(4.0).iterations) == (4, 10)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """``autotrans_demo --budget 0.05 -m pix2pix -d 901 902`` in a fresh folder with no roots set (they default
    there)."""
    base = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        for var in ROOTS:
            mp.delenv(var, raising=False)
        mp.chdir(base)
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        handler = logging.StreamHandler(log := io.StringIO())
        lg = logging.getLogger("autotrans")
        level = lg.level
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)  # under pytest the root logger may still be at WARNING
        try:
            with redirect_stdout(buf):
                assert demo_main(["--budget", "0.05", "-m", "pix2pix", "-d", "901", "902"]) == 0
        finally:
            lg.removeHandler(handler)
            lg.setLevel(level)
        yield base, Path(buf.getvalue().strip().splitlines()[-1]), log.getvalue()


def test_demo_one_model(demo_run: tuple[Path, Path, str]) -> None:
    base, report, log = demo_run
    assert report == base / "autotrans_data" / "results" / "demo_benchmark" / "report.html" and report.is_file()
    assert "autotrans_raw is not set: using" in log
    for d in ("Dataset901_DemoT2toFLAIR", "Dataset902_DemoCTtoPET"):
        assert (base / "autotrans_data" / "preprocessed" / d / "autotransDemoPlans.json").is_file()
    md = report.with_name("report.md").read_text()
    assert "Training was short" in md and "1 epochs x 2 iterations" in md
    assert "## Dataset901_DemoT2toFLAIR: MR → MR" in md and "## Dataset902_DemoCTtoPET: CT → PET" in md
    assert "MAE and MSE in SUV." in md and "| pix2pix | <0.5 mL |" in md
    for name in ("Dataset901_DemoT2toFLAIR_slices.png", "Dataset902_DemoCTtoPET_slices.png",
                 "Dataset902_DemoCTtoPET_boxplots.png"):
        check_png(report.parent / "report_files" / name)


def _browser_or_skip():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        msg = f"headless browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    return webdriver, Service


def test_report_in_headless_chromium(demo_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    webdriver, Service = _browser_or_skip()
    from tests.turing.test_turing_browser import chrome_options

    opts = chrome_options(tmp_path / "profile")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(demo_run[1].as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) >= 4  # boxplots and slices of both datasets
        assert all(complete and w > 0 and h > 0 for complete, w, h in images), images
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    check_png(shot)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20  # text, tables: not blank


@pytest.mark.slow
def test_demo_all_eight_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Every model of the demo, on the T2 -> FLAIR brains, with the smallest budget."""
    for var in ROOTS:
        monkeypatch.setenv(var, str(tmp_path / var))
    assert demo_main(["--budget", "0.05"]) == 0  # the default dataset: 901
    report = Path(capsys.readouterr().out.strip().splitlines()[-1])
    md = report.with_name("report.md").read_text()
    for m in DEMO_MODELS:
        assert f"| {m} | 1 |" in md, m  # a metric row with its one held-out case
    for m in DEMO_BASELINES:
        assert f"| *{m} (baseline)* | 1 |" in md, m  # reference rows, marked
    assert "Friedman" not in md and "Not computed" in md  # one held-out case: no statistics, said so
    from autotrans.utils.files import load_json

    tasks = load_json(report.with_name("results.json"))["tasks"]
    latent = [t for t in tasks if "autoencoder" in t["training"].get("stages", {})]
    assert len(latent) == 4 and all(t["training"]["stages"]["autoencoder"]["epochs"] == 1 for t in latent)
    controlnet = next(t for t in tasks if t["model"] == "ldm_controlnet")
    assert controlnet["training"]["stages"]["ldm_prior"]["epochs"] == 1  # its prior: a shared stage, same budget
    assert all(t["training"]["validation_hours"] is not None for t in tasks if not t.get("baseline"))  # training hours exclude validation
    assert "| ldm_controlnet |" in md and "shared stages" in md and "estimated memory (GB)" in md
