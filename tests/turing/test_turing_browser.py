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


CANVAS_RGB = """
const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const out = [];
for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
return out;
"""


def test_2afc_fused_session_in_chromium(browser, server_2afc: TuringServer, study_2afc: Study) -> None:  # noqa: ANN001
    """A 2AFC PET/CT study: two sides scroll together, colour map switch with colour bar, fusion over the
    source CT with adjustable opacity, picks and display settings stored."""
    import json

    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    d = browser
    study = study_2afc
    order = study.readers["alice"]["order"]
    n = len(order)
    wait = WebDriverWait(d, 15)
    text = lambda el_id: d.find_element(By.ID, el_id).text  # noqa: E731
    rgb = lambda el_id: np.asarray(d.execute_script(CANVAS_RGB, el_id), dtype=float)  # noqa: E731

    d.get(f"{server_2afc.url}/read#{study.readers['alice']['token']}")
    wait.until(lambda _: text("progress-text").startswith(f"Volume 1 of {n}"))
    wait.until(lambda _: d.find_element(By.ID, "loading").get_attribute("hidden") is not None)
    assert text("question").lower() == "which volume is real?"
    assert d.find_element(By.ID, "btn-left").is_displayed() and not d.find_element(By.ID, "btn-real").is_displayed()
    right = d.find_element(By.ID, "view-axial-2")
    assert right.is_displayed()
    caps = [c.text for c in d.find_elements(By.CSS_SELECTOR, '.pane[data-view="axial"] .cap')]
    assert caps == ["Left", "Right"]

    # default PET display: inverted grey 0-7 SUV, colour bar labelled in SUV
    left0, right0 = rgb("view-axial"), rgb("view-axial-2")
    assert left0.std() > 5 and right0.std() > 5, "both sides show an image"
    assert np.all(left0[:, 0] == left0[:, 2]), "grey: red = blue"
    assert text("cbar-lo") == "0.00 SUV" and text("cbar-hi") == "7.00 SUV"

    # side by side stays in sync: both sides show the same slice (same anatomy: strongly correlated) after
    # scrolling either of them, with the wheel and the keyboard
    def same_slice() -> float:
        a, b = rgb("view-axial")[:, 0], rgb("view-axial-2")[:, 0]
        return float(np.corrcoef(a, b)[0, 1])

    assert same_slice() > 0.8
    start = int(text("label-axial").split("/")[0])
    ActionChains(d).scroll_from_origin(ScrollOrigin.from_element(right), 0, 200).perform()
    wait.until(lambda _: int(text("label-axial").split("/")[0]) > start)
    assert same_slice() > 0.8 and not np.array_equal(rgb("view-axial"), left0)
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ARROW_DOWN)
    assert same_slice() > 0.8
    tops = {c.value_of_css_property("top") for c in d.find_elements(By.CSS_SELECTOR, '.pane[data-view="axial"] .ch.h')}
    assert len(tops) == 1, "the crosshair sits at the same place on both sides"

    # colour map switch: hot iron is coloured, the colour bar follows
    Select(d.find_element(By.ID, "colormap")).select_by_value("hot_iron")
    hot = rgb("view-axial")
    assert (hot[:, 0] - hot[:, 2]).mean() > 5, "hot iron: more red than blue"
    bar = np.asarray(d.execute_script(CANVAS_RGB, "colorbar"), dtype=float)
    assert bar[0].tolist() == [0, 0, 0] and bar[-1].tolist() == [255, 255, 255]

    # fusion over the source CT: the image changes, and changes again with the opacity
    assert d.find_element(By.ID, "source-panel").is_displayed()
    assert not d.find_element(By.ID, "source-view-row").is_displayed()  # the pair already fills both columns
    d.find_element(By.ID, "fusion").click()
    fused = rgb("view-axial")
    assert not np.array_equal(fused, hot)
    ct_only = np.abs(fused - hot).mean()
    assert ct_only > 3, "the CT shows through"
    alpha = d.find_element(By.ID, "fusion-alpha")
    alpha.click()
    alpha.send_keys(Keys.END)  # opacity 100 %: the PET, but background uptake still fades into the CT
    assert text("alpha-value") == "100%"
    full = rgb("view-axial")
    assert not np.array_equal(full, fused)
    cold = hot[:, 0] == 0  # no uptake within the window: hot iron black, the CT shows there in grey
    assert cold.any() and full[cold].mean() > 10 and np.all(full[cold][:, 0] == full[cold][:, 2])
    for _ in range(7):
        alpha.send_keys(Keys.ARROW_LEFT)  # 93 %
    assert text("alpha-value") == "93%"

    # answer every pair: keyboard and mouse; the last ones without fusion
    given = {}
    for i in range(n):
        wait.until(lambda _: d.find_element(By.ID, "loading").get_attribute("hidden") is not None)
        if i == n - 1:
            d.find_element(By.ID, "fusion").click()
        side = i % 2
        if i % 2:
            d.find_element(By.ID, "btn-right").click()
            d.find_element(By.ID, "conf-4").click()
        else:
            d.find_element(By.TAG_NAME, "body").send_keys("l", "2")
        d.find_element(By.ID, "submit").click()
        given[order[i]] = study.item_volumes(order[i])[side]
        if i < n - 1:
            wait.until(lambda _, done=i + 1: f"{done} answered" in text("progress-text"))
    wait.until(lambda _: d.find_element(By.ID, "message").is_displayed())

    with sqlite3.connect(study.db_path) as con:
        rows = con.execute("SELECT item, answer, picked, display FROM answers WHERE reader = 'alice'").fetchall()
    assert {r[0]: r[2] for r in rows} == given
    assert {r[1] for r in rows} == {"real"}
    shown = {r[0]: json.loads(r[3]) for r in rows}
    first, last = shown[order[0]], shown[order[-1]]
    assert first["colormap"] == "hot_iron" and first["fusion"] is True and first["fusion_alpha"] == pytest.approx(0.93)
    assert first["source_view"] is False and first["time_s"] > 0 and first["window_width"] == pytest.approx(7.0)
    assert last["fusion"] is False
    logs = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert logs == [], logs


def test_source_beside_the_item_in_chromium(browser, ct_volumes: dict, tmp_path: Path) -> None:  # noqa: ANN001
    """MR to MR style: the item's source shown beside it, scrolled with it, recorded with the answer."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from autotrans.turing import create_study, make_server
    from autotrans.turing.server import serve_in_thread

    study = create_study(ct_volumes["real"], ct_volumes["synthetic"], tmp_path / "s", "CT", n_per_class=1,
                         readers=["ann"], seed=4, source=ct_volumes["real"])
    srv = make_server(study, "127.0.0.1", 0)
    serve_in_thread(srv)
    d = browser
    text = lambda el_id: d.find_element(By.ID, el_id).text  # noqa: E731
    try:
        wait = WebDriverWait(d, 15)
        d.get(f"{srv.url}/read#{study.readers['ann']['token']}")
        wait.until(lambda _: d.find_element(By.ID, "loading").get_attribute("hidden") is not None)
        assert not d.find_element(By.ID, "fusion-row").is_displayed()  # fusion is for PET over CT
        assert not d.find_element(By.ID, "view-axial-2").is_displayed()
        d.find_element(By.ID, "source-view").click()
        assert d.find_element(By.ID, "view-axial-2").is_displayed()
        caps = [c.text for c in d.find_elements(By.CSS_SELECTOR, '.pane[data-view="axial"] .cap')]
        assert caps == ["Item", "Source"]
        src0 = d.execute_script(CANVAS_STATS, "view-axial-2")
        assert src0[1] > 5
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_UP, Keys.ARROW_UP)
        assert d.execute_script(CANVAS_STATS, "view-axial-2") != src0, "the source scrolls with the item"
        d.find_element(By.TAG_NAME, "body").send_keys("r", "3", Keys.ENTER)
        wait.until(lambda _: "1 answered" in text("progress-text"))
    finally:
        srv.shutdown()
        srv.server_close()
    with sqlite3.connect(study.db_path) as con:
        (display,) = con.execute("SELECT display FROM answers").fetchone()
    assert json.loads(display)["source_view"] is True and json.loads(display)["fusion"] is False
