"""Regenerate the reader-page screenshots of documentation/turing_test.md (not a test).

    python tests/turing/make_screenshot.py documentation/images

Builds small CT and PET studies from the shared real volumes (the "synthetic" side is a smoothed copy),
serves them on a free loopback port and photographs the reader page in headless Chromium: the single
design for CT and PET, PET fused over its CT, and a two-alternative forced-choice (2AFC) pair.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from autotrans.io import Geometry, read_image, write_image
from autotrans.turing import SyntheticSource, create_study, make_server
from autotrans.turing.server import serve_in_thread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_turing_browser import CHROMEDRIVER, chrome_options  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "petct_tcia_ccth_a01"


def build(src: Path, root: Path, modality: str, design: str = "single", source: Path | None = None) -> Path:
    arr, geo = read_image(src)
    crop = np.ascontiguousarray(arr[30:210, 12:150, 4:155])
    g = Geometry(size=crop.shape[::-1], spacing=geo.spacing, origin=geo.origin, direction=geo.direction)
    (root / "real").mkdir(parents=True)
    (root / "syn").mkdir()
    write_image(crop, g, root / "real" / "a.nii.gz")
    write_image(gaussian_filter(crop, 0.8), g, root / "syn" / "a.nii.gz")
    src_dir = None
    if source is not None:  # the CT of the same patient on the same grid, cropped alike
        src_arr, src_geo = read_image(source)
        src_dir = root / "source"
        src_dir.mkdir()
        write_image(np.ascontiguousarray(src_arr[30:210, 12:150, 4:155]), g, src_dir / "a.nii.gz")
    create_study(root / "real", [SyntheticSource(root / "syn", "model")], root / "study", modality,
                 readers=["dr_lee"], seed=2, design=design, source=src_dir)
    return root / "study"


def shoot(study_dir: Path, out: Path, preset: str | None, slices: dict[str, int], keys: tuple[str, ...] = ("s", "4"),
          clicks: tuple[str, ...] = (), comment: str = "Bowel wall texture looks too smooth") -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from autotrans.turing import Study

    study = Study.load(study_dir)
    srv = make_server(study, "127.0.0.1", 0)
    serve_in_thread(srv)
    with tempfile.TemporaryDirectory() as profile:
        d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=chrome_options(Path(profile)))
        try:
            d.get(f"{srv.url}/read#{study.readers['dr_lee']['token']}")
            time.sleep(2.0)
            if preset:
                [b for b in d.find_elements(By.CSS_SELECTOR, "#presets button") if b.text == preset][0].click()
            for element_id in clicks:
                d.find_element(By.ID, element_id).click()
            body = d.find_element(By.TAG_NAME, "body")
            for view, n in slices.items():  # move the active view by n slices with the keyboard
                d.find_element(By.CSS_SELECTOR, f'.pane[data-view="{view}"] .pane-title').click()
                body.send_keys(*(["\ue013"] * n if n > 0 else ["\ue015"] * -n))
            body.send_keys(*keys)
            d.find_element(By.ID, "comment").send_keys(comment)
            time.sleep(0.5)
            d.save_screenshot(str(out))
        finally:
            d.quit()
            srv.shutdown()
            srv.server_close()
    shrink(out)


def shrink(path: Path) -> None:
    """Keep the PNGs small for the repository: 256-colour palette (the page is flat colours and grey)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "documentation/images")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ct = build(DATA / "ct_hu_3mm.nii.gz", Path(tmp) / "ct", "CT")
        shoot(ct, out_dir / "turing_reader_ct.png", None, {"axial": 8})
        pet = build(DATA / "pet_suv_3mm.nii.gz", Path(tmp) / "pet", "PET")
        shoot(pet, out_dir / "turing_reader_pet.png", "SUV 0-7 hot iron", {"axial": 8})
        fused = build(DATA / "pet_suv_3mm.nii.gz", Path(tmp) / "fused", "PET", source=DATA / "ct_hu_3mm.nii.gz")
        shoot(fused, out_dir / "turing_reader_pet_fused.png", None, {"axial": 8}, clicks=("fusion",),
              comment="Uptake in the liver looks too uniform")
        pair = build(DATA / "pet_suv_3mm.nii.gz", Path(tmp) / "2afc", "PET", design="2afc")
        shoot(pair, out_dir / "turing_reader_2afc.png", None, {"axial": 8}, keys=("l", "3"),
              comment="Right side: kidneys too smooth")


if __name__ == "__main__":
    main()
