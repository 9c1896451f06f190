"""Regenerate the report screenshots of documentation/benchmark.md (not a test).

    autotrans_demo --budget 0.05 -m regression pix2pix identity intensity_map -d 901 902   # in an empty folder
    python tests/benchmark/make_screenshots.py autotrans_data/results/demo_benchmark/report.html documentation/images

Opens the report in the headless Chromium the browser tests use and photographs, per dataset, the section's
tables and plots, and its example slices (the whole figure and its caption).
"""
from __future__ import annotations

import base64
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "turing"))
from test_turing_browser import CHROMEDRIVER, chrome_options  # noqa: E402

WIDTH = 1280
SECTIONS = {"T2toFLAIR": "t2_flair", "CTtoPET": "ct_pet"}


def main(report: Path, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        opts = chrome_options(Path(profile))
        opts.add_argument(f"--window-size={WIDTH},1400")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
        try:
            driver.set_page_load_timeout(30)
            driver.get(report.resolve().as_uri())
            time.sleep(1)

            def top(el) -> float:  # noqa: ANN001
                return driver.execute_script("return arguments[0].getBoundingClientRect().top + window.scrollY;", el)

            def shot(y: float, height: float, name: str) -> None:
                clip = {"x": 0, "y": max(0.0, y), "width": WIDTH, "height": height, "scale": 1}
                data = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                                          "captureBeyondViewport": True})["data"]
                (out / name).write_bytes(base64.b64decode(data))
                print(out / name)

            for h in driver.find_elements("tag name", "h2"):
                tag = next((t for k, t in SECTIONS.items() if k in h.text), None)
                if tag is None:
                    continue
                shot(top(h) - 10, 1150, f"benchmark_report_{tag}_tables.png")
                slices = driver.execute_script(
                    "let e = arguments[0].nextElementSibling; while (e && e.tagName !== 'H2') {"
                    " if (e.tagName === 'H3' && e.textContent === 'Example slices') return e;"
                    " e = e.nextElementSibling; } return null;", h)
                if slices is not None:
                    height = driver.execute_script(
                        "return arguments[0].nextElementSibling.getBoundingClientRect().height;", slices)
                    shot(top(slices) - 5, int(height) + 60, f"benchmark_report_{tag}_slices.png")
        finally:
            driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
