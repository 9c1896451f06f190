"""End to end in headless Chromium: open a reader link, scroll, window, answer every item, resume.

Needs Debian's chromium and chromium-driver (installed by .ci/run) and the selenium package; the
system chromedriver is used so Selenium Manager never downloads anything.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotrans.turing import Study
from autotrans.turing.server import TuringServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="headless browser test needs /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
)

CANVAS_STATS = """
const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = 0, s2 = 0;
for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; }
const n = d.length / 4;
return [s / n, Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2))];
"""


def chrome_options(profile: Path):  # noqa: ANN201 - selenium type only imported when available
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,860"]:
        opts.add_argument(arg)
    return opts


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=chrome_options(tmp_path / "profile"))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_reader_session_in_chromium(browser, server: TuringServer, study: Study) -> None:  # noqa: ANN001
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    order = study.readers["alice"]["order"]
    n = len(order)
    wait = WebDriverWait(d, 15)
    text = lambda el_id: d.find_element(By.ID, el_id).text  # noqa: E731

    d.get(f"{server.url}/read#{study.readers['alice']['token']}")
    wait.until(lambda _: text("progress-text").startswith(f"Volume 1 of {n}"))
    wait.until(lambda _: text("label-axial") != "")
    assert text("reader-name") == "alice"
    mean, std = d.execute_script(CANVAS_STATS, "view-axial")
    assert std > 5, "the axial view shows an image, not a flat canvas"

    # scroll: mouse wheel, keyboard, slider
    depth = int(text("label-axial").split("/")[1])
    start = int(text("label-axial").split("/")[0])
    stage = d.find_element(By.CSS_SELECTOR, '.pane[data-view="axial"] .stage')
    ActionChains(d).scroll_from_origin(ScrollOrigin.from_element(stage), 0, 200).perform()
    wait.until(lambda _: int(text("label-axial").split("/")[0]) > start)
    after_wheel = int(text("label-axial").split("/")[0])
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN)
    assert int(text("label-axial").split("/")[0]) == after_wheel - 2
    slider = d.find_element(By.ID, "slider-coronal")
    before = text("label-coronal")
    slider.click()
    slider.send_keys(Keys.END)
    assert text("label-coronal") != before and text("label-coronal").split(" / ")[0] == text("label-coronal").split(" / ")[1]
    assert depth >= 2
    slider.send_keys("r")  # answer keys work while a slider has focus
    assert "on" in d.find_element(By.ID, "btn-real").get_attribute("class").split()

    # window: preset button, then drag on the image
    d.find_element(By.CSS_SELECTOR, '.pane[data-view="axial"]').click()
    stats_soft = d.execute_script(CANVAS_STATS, "view-axial")
    lung = [b for b in d.find_elements(By.CSS_SELECTOR, "#presets button") if b.text == "Lung"][0]
    lung.click()
    assert text("win-width") == "1500" and text("win-level") == "-600"
    stats_lung = d.execute_script(CANVAS_STATS, "view-axial")
    assert stats_lung != stats_soft
    wrap = d.find_element(By.CSS_SELECTOR, '.pane[data-view="axial"] .wrap')
    ActionChains(d).move_to_element(wrap).click_and_hold().move_by_offset(60, 0).move_by_offset(20, 0).release().perform()
    assert float(text("win-width")) > 1500

    # enlarge the axial view alone and back
    coronal = d.find_element(By.CSS_SELECTOR, '.pane[data-view="coronal"]')
    small = wrap.size["width"]
    d.find_element(By.TAG_NAME, "body").send_keys("f")
    assert not coronal.is_displayed() and wrap.size["width"] > small
    d.find_element(By.TAG_NAME, "body").send_keys("f")
    assert coronal.is_displayed() and wrap.size["width"] == small

    # answer every item; leave and come back after two answers
    given = {}
    for i in range(n):
        if i == 2:
            d.refresh()
            wait.until(lambda _: text("progress-text").startswith(f"Volume 3 of {n}"))
        wait.until(lambda _: d.find_element(By.ID, "loading").get_attribute("hidden") is not None)
        answer = "synthetic" if i % 3 == 0 else "real"
        conf = 1 + i % 5
        body = d.find_element(By.TAG_NAME, "body")
        if i % 2:  # mouse
            d.find_element(By.ID, f"btn-{answer}").click()
            d.find_element(By.ID, f"conf-{conf}").click()
        else:  # keyboard
            body.send_keys("s" if answer == "synthetic" else "r", str(conf))
        if i == 0:
            d.find_element(By.ID, "comment").send_keys("noise pattern looks odd")
        assert d.find_element(By.ID, "submit").is_enabled()
        if i % 2:
            d.find_element(By.ID, "submit").click()
        elif i == 0:
            d.find_element(By.ID, "comment").send_keys(Keys.CONTROL, Keys.ENTER)
        else:
            body.send_keys(Keys.ENTER)
        given[order[i]] = (answer, conf)
        if i < n - 1:
            wait.until(lambda _, done=i + 1: f"{done} answered" in text("progress-text"))
    wait.until(lambda _: d.find_element(By.ID, "message").is_displayed())
    assert "Thank you" in text("message-title")
    assert text("progress-text") == f"All {n} answered"

    with sqlite3.connect(study.db_path) as con:
        rows = con.execute(
            "SELECT item, answer, confidence, comment, time_on_item_s FROM answers WHERE reader = 'alice'"
        ).fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == given
    comments = {r[0]: r[3] for r in rows}
    assert comments[order[0]] == "noise pattern looks odd"
    assert all(r[4] > 0 for r in rows)
    logs = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert logs == [], logs


def test_bad_link_shows_a_message(browser, server: TuringServer) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/read#not-a-token")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "message").is_displayed())
    assert browser.find_element(By.ID, "message-title").text == "Link not valid"
