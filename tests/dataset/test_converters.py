"""Converters on miniature replicas of each benchmark's layout, built from real crops shipped in tests/data
(CCTH-A01 pelvis PET/CT slab, TCGA-DU-7294 brain slices; see its ATTRIBUTION.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli import convert as cli
from autotrans.dataset.cbct import simulate_cbct
from autotrans.dataset.converters import convert
from autotrans.dataset.format import discover_cases, load_dataset_json
from autotrans.errors import ConfigurationError
from autotrans.io import Geometry, read_geometry, read_image, write_image
from tests.paths import fixture_file


def crop(arr: np.ndarray, geo: Geometry, z: slice, y: slice, x: slice) -> tuple[np.ndarray, Geometry]:
    """Sub-volume with its true physical position (origin moved along the direction cosines)."""
    start = np.array([x.start or 0, y.start or 0, z.start or 0], float)
    origin = np.asarray(geo.origin) + np.asarray(geo.direction).reshape(3, 3) @ (np.asarray(geo.spacing) * start)
    sub = np.ascontiguousarray(arr[z, y, x])
    return sub, Geometry(size=sub.shape[::-1], spacing=geo.spacing, origin=tuple(origin), direction=geo.direction)


@pytest.fixture(scope="module")
def vols() -> dict[str, tuple[np.ndarray, Geometry]]:
    """Small real crops: pelvis CT/PET/body mask (3 mm), native-grid PET, and brain MRI contrasts."""
    ct, g = read_image(fixture_file("ccth_a01/slab_ct.nii.gz"), dtype=np.int16)  # slices 100..106, whole
    pet, _ = read_image(fixture_file("ccth_a01/slab_pet.nii.gz"))
    body, _ = read_image(fixture_file("ccth_a01/slab_body.nii.gz"), dtype=np.uint8)
    box = (slice(None), slice(30, 130), slice(20, 140))
    out = {"ct": crop(ct, g, *box), "pet": crop(pet, g, *box), "body": crop(body, g, *box)}
    # native PET (5.47 x 5.47 x 3.27 mm) box covering the CT crop with a 10 mm margin: another grid, same frame
    native = read_image(fixture_file("ccth_a01/slab_pet_native.nii.gz"))
    lo, hi = np.asarray(out["ct"][1].origin), np.asarray(out["ct"][1].origin) + np.asarray(out["ct"][1].size) * 3.0
    assert np.all(np.asarray(native[1].origin) <= lo) and np.all(
        np.asarray(native[1].origin) + np.asarray(native[1].size) * np.asarray(native[1].spacing) >= hi)
    out["pet_native"] = native
    for key in ("t1", "t1c", "t2", "flair"):  # SRI24 brain, slices 74..80, y 70..150, x 60..180, whole crop
        out[key] = read_image(fixture_file(f"tcga_du_7294/{key}.nii.gz"))
    flair = out["flair"][0]
    out["seg"] = ((flair > np.quantile(flair[flair > 0], 0.97)).astype(np.uint8), out["flair"][1])
    return out


def put(path: Path, vol: tuple[np.ndarray, Geometry], geometry: Geometry | None = None) -> Path:
    write_image(vol[0], geometry or vol[1], path)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("autotrans_raw", str(tmp_path / "raw"))
    return tmp_path / "raw"


def _check_dataset(folder: Path, n_tr: int, n_ts: int = 0) -> dict:
    dj = load_dataset_json(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["licence"] and meta["reference"] and meta["description"]
    tr, ts = discover_cases(folder, dj, "Tr"), discover_cases(folder, dj, "Ts")
    assert not tr.problems and not ts.problems, (tr.problems, ts.problems)
    assert len(tr.cases) == n_tr == dj.num_training and len(ts.cases) == n_ts
    for cf in [*tr.cases.values(), *ts.cases.values()]:
        ref = read_geometry(cf.target)
        for _, f in cf.all_files():
            assert ref.mismatch(read_geometry(f)) is None, f
    return meta


def _synthrad_tree(root: Path, vols: dict, ending: str, prefix: str, regdir: str) -> Path:
    """Task1/<region>/1XA00k/{mr,ct,mask} and Task2/<region>/2XA00k/{cbct,ct,mask}, k = 1, 2."""
    ct, g = vols["ct"]
    # real brain MR voxels reshaped onto the CT crop's grid: the converter only needs matching grids
    mr = np.resize(vols["t1"][0], ct.shape).astype(np.float32)
    ct2 = crop(ct, g, slice(0, 2), slice(None), slice(None))
    body2 = crop(vols["body"][0], g, slice(0, 2), slice(None), slice(None))
    for k in (1, 2):
        case = root / "Task1" / regdir / f"1{prefix}A00{k}"
        put(case / f"mr{ending}", (mr, g))
        put(case / f"ct{ending}", vols["ct"])
        put(case / f"mask{ending}", vols["body"])
        case = root / "Task2" / regdir / f"2{prefix}A00{k}"
        cbct = simulate_cbct(ct2[0].astype(np.float32), g.spacing_zyx, np.random.default_rng(k))
        put(case / f"cbct{ending}", (cbct, ct2[1]))
        put(case / f"ct{ending}", ct2)
        put(case / f"mask{ending}", body2)
    (root / "Task1" / regdir / "overview").mkdir()
    return root


def test_synthrad2023_both_tasks_copy_and_leave_source_untouched(tmp_path, raw, vols):
    src = _synthrad_tree(tmp_path / "SynthRAD2023", vols, ".nii.gz", "B", "brain")
    before = tree_digest(src)
    assert cli.main(["synthrad2023", str(src), "-d", "1"]) == 0
    out = raw / "Dataset001_SynthRAD2023_MRtoCT"
    meta = _check_dataset(out, 2)
    assert "CC BY-NC 4.0" in meta["licence"] and "Thummerer" in meta["reference"]
    assert meta["source_channels"]["0"]["modality"] == "MR" and meta["target"]["modality"] == "CT"
    # unchanged NIfTI files are copied byte for byte
    assert (out / "imagesTr" / "1BA001_0000.nii.gz").read_bytes() == (src / "Task1/brain/1BA001/mr.nii.gz").read_bytes()
    assert (out / "masksTr" / "1BA002.nii.gz").read_bytes() == (src / "Task1/brain/1BA002/mask.nii.gz").read_bytes()
    assert cli.main(["synthrad2023", str(src), "-d", "2", "--direction", "cbct:ct", "--files", "hardlink"]) == 0
    meta = _check_dataset(raw / "Dataset002_SynthRAD2023_CBCTtoCT", 2)
    assert meta["source_channels"]["0"]["modality"] == "CBCT"
    assert tree_digest(src) == before


def test_synthrad_region_filter_holdout_and_problems(tmp_path, raw, vols, capsys):
    src = _synthrad_tree(tmp_path / "s", vols, ".nii.gz", "P", "pelvis")
    assert cli.main(["synthrad2023", str(src), "-d", "3", "--region", "brain"]) == 1
    assert "no synthrad2023 Task 1 cases of region brain" in capsys.readouterr().err
    assert cli.main(["synthrad2023", str(src), "-d", "3", "--region", "pelvis", "--test-fraction", "0.5"]) == 0
    _check_dataset(raw / "Dataset003_SynthRAD2023_MRtoCT", 1, 1)
    # incomplete case: one clear line naming the case and the missing file; nothing written
    (src / "Task1/pelvis/1PA002/ct.nii.gz").unlink()
    assert cli.main(["synthrad2023", str(src), "-d", "4"]) == 1
    err = capsys.readouterr().err
    assert "1PA002: target ct image missing" in err and "1 problem(s) found, nothing was written" in err
    assert not (raw / "Dataset004_SynthRAD2023_MRtoCT").exists()
    assert cli.main(["synthrad2023", str(src), "-d", "4", "--skip-incomplete"]) == 0
    _check_dataset(raw / "Dataset004_SynthRAD2023_MRtoCT", 1)
    # existing destination is refused
    assert cli.main(["synthrad2023", str(src), "-d", "4", "--skip-incomplete"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_synthrad_resamples_source_to_target_grid(tmp_path, raw, vols, capsys):
    ct, g = vols["ct"]
    case = tmp_path / "s" / "Task1" / "brain" / "1BC007"
    put(case / "ct.nii.gz", vols["ct"])
    put(case / "mask.nii.gz", vols["body"])
    # the "MR" is the real CT itself on a coarser grid covering the same physical box (same frame)
    g2 = Geometry(size=(ct.shape[2] // 2, ct.shape[1] // 2, ct.shape[0]), spacing=(6.0, 6.0, 3.0),
                  origin=(g.origin[0] + 1.5, g.origin[1] + 1.5, g.origin[2]), direction=g.direction)
    coarse = ct.astype(np.float32).reshape(ct.shape[0], ct.shape[1] // 2, 2, ct.shape[2] // 2, 2).mean(axis=(2, 4))
    put(case / "mr.nii.gz", (coarse, g2))
    assert cli.main(["synthrad2023", str(tmp_path / "s"), "-d", "5", "--no-resample"]) == 1
    assert "1BC007: image0 grid differs from the target grid" in capsys.readouterr().err
    assert cli.main(["synthrad2023", str(tmp_path / "s"), "-d", "5"]) == 0
    mr, gm = read_image(raw / "Dataset005_SynthRAD2023_MRtoCT" / "imagesTr" / "1BC007_0000.nii.gz")
    assert gm.mismatch(g) is None
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert np.corrcoef(mr[inner].ravel(), ct[inner].ravel())[0, 1] > 0.97
    # a grid far away shares no patient frame: refused, not silently resampled into background
    put(case / "mr.nii.gz", (coarse, Geometry(g2.size, g2.spacing, (5000.0, 0.0, 0.0), g2.direction)))
    assert cli.main(["synthrad2023", str(tmp_path / "s"), "-d", "6"]) == 1
    assert "does not overlap" in capsys.readouterr().err


def test_synthrad2025_mha_converted(tmp_path, raw, vols):
    src = _synthrad_tree(tmp_path / "s25", vols, ".mha", "HN", "HN")
    assert cli.main(["synthrad2025", str(src), "-d", "7", "--region", "HN"]) == 0
    out = raw / "Dataset007_SynthRAD2025_MRtoCT"
    meta = _check_dataset(out, 2)
    assert "see the dataset's terms" in meta["licence"]
    a, _ = read_image(out / "targetsTr" / "1HNA001.nii.gz")
    b, _ = read_image(src / "Task1/HN/1HNA001/ct.mha")
    np.testing.assert_array_equal(a, b)


def test_brats_new_and_legacy_naming(tmp_path, raw, vols, capsys):
    src = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    names = {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair", "seg": "seg"}
    for case in ("BraTS-GLI-00000-000", "BraTS-MET-00001-000"):
        for key, vol in names.items():
            put(src / case / f"{case}-{key}.nii.gz", vols[vol])
    legacy = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}  # no seg: like validation data
    for key, vol in legacy.items():
        put(src / "BraTS2021_00002" / f"BraTS2021_00002_{key}.nii.gz", vols[vol])
    assert cli.main(["brats", str(src), "-d", "10"]) == 0
    out = raw / "Dataset010_BraTS_T2toFLAIR"
    meta = _check_dataset(out, 3)
    assert meta["source_channels"]["0"]["name"] == "T2" and meta["target"]["name"] == "FLAIR"
    mask, _ = read_image(out / "masksTr" / "BraTS-GLI-00000-000.nii.gz")
    expected = (vols["t2"][0] != 0) | (vols["flair"][0] != 0)
    np.testing.assert_array_equal(mask > 0, expected)
    les, _ = read_image(out / "lesionsTr" / "BraTS-MET-00001-000.nii.gz")
    np.testing.assert_array_equal(les, vols["seg"][0])
    assert not (out / "lesionsTr" / "BraTS2021_00002.nii.gz").exists()
    assert cli.main(["brats", str(src), "-d", "11", "--direction", "t1n,t2w:t2f"]) == 0
    dj = load_dataset_json(raw / "Dataset011_BraTS_T1T2toFLAIR")
    assert dj.num_channels == 2
    assert (raw / "Dataset011_BraTS_T1T2toFLAIR" / "imagesTr" / "BraTS2021_00002_0001.nii.gz").is_file()
    assert cli.main(["brats", str(src), "-d", "12", "--direction", "t2w:dwi"]) == 1
    assert "unknown modality dwi" in capsys.readouterr().err


def test_autopet_body_mask_and_lesions(tmp_path, raw, vols):
    study = tmp_path / "FDG-PET-CT-Lesions" / "PETCT_0af7ffe12a" / "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
    put(study / "CTres.nii.gz", vols["ct"])
    put(study / "SUV.nii.gz", vols["pet"])
    seg = (vols["pet"][0] > 3.0).astype(np.uint8)
    put(study / "SEG.nii.gz", (seg, vols["ct"][1]))
    assert cli.main(["autopet", str(tmp_path), "-d", "20"]) == 0
    out = raw / "Dataset020_autoPET_CTtoPET"
    meta = _check_dataset(out, 1)
    assert "CC BY 4.0" in meta["licence"] and "Gatidis" in meta["reference"]
    case = "PETCT_0af7ffe12a_08-12-2005"
    mask, _ = read_image(out / "masksTr" / f"{case}.nii.gz")
    dice = 2 * np.sum((mask > 0) & (vols["body"][0] > 0)) / (np.sum(mask > 0) + np.sum(vols["body"][0] > 0))
    assert dice > 0.95, dice
    les, _ = read_image(out / "lesionsTr" / f"{case}.nii.gz")
    np.testing.assert_array_equal(les, seg)
    assert cli.main(["autopet", str(tmp_path), "-d", "21", "--direction", "pet:ct"]) == 0
    assert load_dataset_json(raw / "Dataset021_autoPET_PETtoCT").target.modality == "CT"


def test_hecktor_pet_resampled_to_ct_grid(tmp_path, raw, vols):
    root = tmp_path / "hecktor2022"
    put(root / "imagesTr" / "CHUM-001__CT.nii.gz", vols["ct"])
    put(root / "imagesTr" / "CHUM-001__PT.nii.gz", vols["pet_native"])
    gtv = (vols["pet_native"][0] > 3.0).astype(np.uint8) * 2
    put(root / "labelsTr" / "CHUM-001.nii.gz", (gtv, vols["pet_native"][1]))
    put(root / "imagesTs" / "MDA-002__CT.nii.gz", vols["ct"])
    put(root / "imagesTs" / "MDA-002__PT.nii.gz", vols["pet"])
    assert cli.main(["hecktor", str(tmp_path), "-d", "30"]) == 0
    out = raw / "Dataset030_HECKTOR_CTtoPET"
    meta = _check_dataset(out, 1, 1)
    assert "Andrearczyk" in meta["reference"]
    pet, gp = read_image(out / "targetsTr" / "CHUM-001.nii.gz")
    assert gp.mismatch(vols["ct"][1]) is None
    # the curators' independent (linear) resampling of the same PET onto the 3 mm grid agrees to its
    # 0.01 SUV rounding; nearest neighbour or a half-voxel origin error would be off by ~0.5 SUV
    assert np.abs(pet - vols["pet"][0]).max() < 0.02
    les, _ = read_image(out / "lesionsTr" / "CHUM-001.nii.gz")
    assert set(np.unique(les)) <= {0, 2} and les.any()
    assert (out / "targetsTs" / "MDA-002.nii.gz").is_file() and (out / "masksTs" / "MDA-002.nii.gz").is_file()


def test_unknown_or_incomplete_layouts(tmp_path, raw, capsys):
    (tmp_path / "empty").mkdir()
    for kind in ("synthrad2023", "synthrad2025", "brats", "autopet", "hecktor"):
        assert cli.main([kind, str(tmp_path / "empty"), "-d", "40"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "empty" in err, err
    assert cli.main(["brats", str(tmp_path / "nowhere"), "-d", "40"]) == 1
    assert "source folder not found" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="unknown dataset kind"):
        convert("ixi", tmp_path / "empty", 40)
    case = tmp_path / "hk" / "imagesTr"
    case.mkdir(parents=True)
    (case / "CHUP-003__CT.nii.gz").write_bytes(b"not an image")
    assert cli.main(["hecktor", str(tmp_path / "hk"), "-d", "41"]) == 1
    assert "CHUP-003: PT missing" in capsys.readouterr().err
