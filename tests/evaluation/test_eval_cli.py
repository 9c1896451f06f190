"""autotrans_evaluate end to end on small files: outputs, --compare, and one-line errors naming cases."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli.evaluate import main
from autotrans.evaluation import evaluate_folders
from autotrans.io import Geometry, write_image

SHAPE = (14, 16, 18)  # (z, y, x)


def _geo(spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)) -> Geometry:
    return Geometry(size=SHAPE[::-1], spacing=spacing, origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _make(root: Path, cases: list[str], noise: float = 20.0, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    dirs = {k: root / k for k in ("ref", "pred", "mask", "les")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        ref = (rng.normal(0, 200, SHAPE)).astype(np.float32)
        ref[5:9, 6:10, 6:10] = 1500  # a dense "lesion"
        mask = np.zeros(SHAPE, np.uint8)
        mask[2:12, 2:14, 2:16] = 1
        les = np.zeros(SHAPE, np.uint8)
        les[5:9, 6:10, 6:10] = 1
        write_image(ref, _geo(), dirs["ref"] / f"{case}.nii.gz")
        write_image((ref + rng.normal(0, noise, SHAPE)).astype(np.float32), _geo(), dirs["pred"] / f"{case}.nii.gz")
        write_image(mask, _geo(), dirs["mask"] / f"{case}.nii.gz")
        write_image(les, _geo(), dirs["les"] / f"{case}.nii.gz")
    return dirs


def test_cli_writes_json_and_csv(tmp_path: Path) -> None:
    d = _make(tmp_path, ["a01", "a02", "a03"])
    out = tmp_path / "res" / "eval.json"
    rc = main(["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-mask", str(d["mask"]), "-lesions", str(d["les"]),
               "-modality", "CT", "--standard", "synthrad2025", "-o", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["standard"] == "synthrad2025" and res["modality"] == "CT"
    assert sorted(res["cases"]) == ["a01", "a02", "a03"]
    assert set(res["aggregate"]["mae"]) >= {"mean", "std", "median", "min", "max", "q25", "q75"}
    maes = [c["mae"] for c in res["cases"].values()]
    assert res["aggregate"]["mae"]["mean"] == pytest.approx(np.mean(maes))
    assert res["lesions"]["a01"][0]["volume_ml"] == pytest.approx(64 * 12 / 1000)
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case", "mae", "psnr", "ms_ssim"] and len(rows) == 4
    assert (tmp_path / "res" / "eval_lesions.csv").is_file()


def test_single_files_and_api(tmp_path: Path) -> None:
    d = _make(tmp_path, ["only"])
    res = evaluate_folders(d["ref"] / "only.nii.gz", d["pred"] / "only.nii.gz", d["mask"] / "only.nii.gz",
                           modality="CT", standard="synthrad2023")
    assert list(res["cases"]) == ["only"] and 0 < res["cases"]["only"]["ssim"] < 1


def test_compare_cli(tmp_path: Path) -> None:
    cases = [f"c{i}" for i in range(6)]
    outs = []
    for k, noise in enumerate((10.0, 40.0, 80.0)):
        d = _make(tmp_path / f"m{k}", cases, noise=noise, seed=1)
        outs.append(tmp_path / f"m{k}.json")
        assert main(["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-mask", str(d["mask"]),
                     "-modality", "CT", "--standard", "synthrad2023", "-o", str(outs[-1])]) == 0
    cmp_out = tmp_path / "cmp.json"
    assert main(["--compare", *map(str, outs), "-o", str(cmp_out)]) == 0
    res = json.loads(cmp_out.read_text())
    assert res["models"] == ["m0", "m1", "m2"]
    assert res["metrics"]["mae"]["mean_rank"] == {"m0": 1.0, "m1": 2.0, "m2": 3.0}
    assert (tmp_path / res["metrics"]["ssim"]["cd_diagram"]).is_file()


def _err(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) != 0
    return capsys.readouterr().err


def test_errors_name_the_case(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = _make(tmp_path, ["a01", "a02"])
    base = ["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-modality", "CT", "-o", str(tmp_path / "o.json")]
    (d["pred"] / "a02.nii.gz").rename(tmp_path / "a02_moved.nii.gz")
    assert "a02: in REF but not in PRED" in _err(capsys, base)
    write_image(np.zeros(SHAPE, np.float32), _geo((2.0, 2.0, 2.5)), d["pred"] / "a02.nii.gz")
    assert "a02: pred geometry differs from REF: spacing" in _err(capsys, base)
    write_image(np.zeros(SHAPE, np.float32), _geo(), d["pred"] / "a02.nii.gz")
    (d["les"] / "a01.nii.gz").unlink()
    assert "a01: no lesion map file" in _err(capsys, base + ["-lesions", str(d["les"])])
    write_image(np.zeros(SHAPE, np.uint8), _geo(), d["mask"] / "a02.nii.gz")
    assert "a02: mask is empty" in _err(capsys, base + ["-mask", str(d["mask"])])
    assert not (tmp_path / "o.json").exists()
    assert "missing -ref" in _err(capsys, ["-pred", "x", "-modality", "CT", "-o", "o.json"])
