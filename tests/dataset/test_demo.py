from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli.install_demo import main as install_main
from autotrans.dataset.demo import build_brain_demo, demo_data_dir
from autotrans.dataset.format import load_dataset_json
from autotrans.io import read_image


def test_shipped_demo_is_small_attributed_and_valid() -> None:
    root = demo_data_dir()
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total <= 20 * 1024 ** 2
    attribution = (root / "ATTRIBUTION.md").read_text()
    for needle in ("CC BY", "Lesjak", "TCGA-LGG", "10.7937/ERZ5-QZ59", "simulated"):
        assert needle in attribution
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        dj = load_dataset_json(folder)
        assert dj.extra["licence"] and dj.extra["reference"]


def test_install_demo_cli(roots, capsys) -> None:
    assert install_main(["--ids", "901:31", "902:32", "903:33"]) == 0
    raw = roots["autotrans_raw"]
    names = sorted(p.name for p in raw.iterdir())
    assert names == ["Dataset031_DemoT2toFLAIR", "Dataset032_DemoCTtoPET", "Dataset033_DemoSimCBCTtoCT"]
    sim = json.loads((raw / "Dataset033_DemoSimCBCTtoCT" / "dataset.json").read_text())
    assert sim["simulated"] is True and "simulated" in sim["description"].lower()
    cbct, g1 = read_image(raw / "Dataset033_DemoSimCBCTtoCT" / "imagesTr" / "CCTH-A01-slab1_0000.nii.gz")
    ct, g2 = read_image(raw / "Dataset032_DemoCTtoPET" / "imagesTr" / "CCTH-A01-slab1_0000.nii.gz")
    assert g1.mismatch(g2) is None and not np.array_equal(cbct, ct)
    # a second install keeps what is there; an id clash is one clear line
    assert install_main(["--ids", "901:31", "902:32", "903:33"]) == 0
    (raw / "Dataset034_Other").mkdir()
    assert install_main(["--ids", "901:34"]) == 1
    assert "already used by" in capsys.readouterr().err


@pytest.mark.full_data  # rebuilds from the original full-resolution scans
def test_demo_is_reproducible_from_shared_data(tmp_path: Path, shared_data: Path) -> None:
    build_brain_demo(shared_data, tmp_path / "brain")
    shipped = demo_data_dir() / "Dataset901_DemoT2toFLAIR"
    for rel in ("imagesTr/MS-patient19_0000.nii.gz", "targetsTr/TCGA-FG-6692.nii.gz", "lesionsTr/MS-patient07.nii.gz"):
        a, ga = read_image(shipped / rel)
        b, gb = read_image(tmp_path / "brain" / rel)
        assert ga.mismatch(gb) is None and np.array_equal(a, b), rel
