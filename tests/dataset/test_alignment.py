"""Pair-alignment check on real pairs: a known rigid misalignment is flagged, measured and undone.

Real pairs from tests/data (registered by their curators): MS patient 07 T2 → FLAIR (1 mm MNI, and a second case
cut from its upper slices) and ReMIND-022 T1c → T2 (oblique direction matrix, origin far from 0). One case's
source is resampled with a known rigid transform A (5 mm shift, 3° about an oblique axis) on its own grid, so it
no longer lies on its target. The registration estimates T with ``source(T(x)) ≈ target(x)``; for the moved
source ``moved(y) = source(A(y))`` that is ``T = A⁻¹`` (the untouched pair being aligned), which is the truth
compared against, at the same rotation centre.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.dataset import alignment
from autotrans.dataset.format import DatasetJson, discover_cases
from autotrans.io import read_image
from tests.paths import fixture_file

SHIFT_MM = (3.0, 4.0, 0.0)  # 5 mm
ANGLE_DEG = 3.0
AXIS = (1.0, 0.0, 2.0)  # oblique


def _dataset_json(n: int, paired: bool = True) -> dict:
    return {"name": "PairCheck", "source_channels": {"0": {"name": "T2 or T1c", "modality": "MR"}},
            "target": {"name": "FLAIR or T2", "modality": "MR"}, "paired": paired, "file_ending": ".nii.gz",
            "numTraining": n}


def _pairs() -> dict[str, tuple[Path, Path, tuple[slice, ...] | None]]:
    ms_t2, ms_flair = fixture_file("ms_patient07/t2.nii.gz"), fixture_file("ms_patient07/flair.nii.gz")
    return {
        "ms07": (ms_t2, ms_flair, None),
        "ms07upper": (ms_t2, ms_flair, (slice(10, 40), slice(None), slice(None))),  # (z, y, x)
        "remind022": (fixture_file("remind_022/t1c.nii.gz"), fixture_file("remind_022/t2.nii.gz"), None),
    }


def _crop(path: Path, box: tuple[slice, ...] | None) -> sitk.Image:
    img = sitk.ReadImage(str(path))
    if box is None:
        return img
    z, y, x = box
    return img[x, y, z]  # SimpleITK slicing keeps the crop's position in the patient frame


def _misalign(img: sitk.Image, centre: tuple[float, ...]) -> tuple[sitk.Image, sitk.Transform]:
    """Resample ``img`` on its own grid through A: the moved image at y holds the original's value at A(y)."""
    axis = np.asarray(AXIS) / np.linalg.norm(AXIS)
    a = sitk.VersorRigid3DTransform()
    a.SetCenter(centre)
    a.SetRotation(tuple(axis), float(np.radians(ANGLE_DEG)))
    a.SetTranslation(SHIFT_MM)
    background = float(sitk.GetArrayViewFromImage(img).min())
    return sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), img, a, sitk.sitkLinear, background), a


def _build(raw: Path, dataset_id: int, cases: list[str], misaligned: str | None = None,
           paired: bool = True) -> tuple[Path, dict[str, sitk.Transform]]:
    root = raw / f"Dataset{dataset_id:03d}_PairCheck"
    for sub in ("imagesTr", "targetsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(_dataset_json(len(cases), paired)))
    truth = {}
    for case in cases:
        src_path, tgt_path, box = _pairs()[case]
        source, target = _crop(src_path, box), _crop(tgt_path, box)
        if case == misaligned:
            # the centre only fixes how A is written down; A itself is what is checked
            centre = source.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in source.GetSize()])
            source, truth[case] = _misalign(source, centre)
        sitk.WriteImage(source, str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(target, str(root / "targetsTr" / f"{case}.nii.gz"))
    return root, truth


def _true_translation_at(t: sitk.Transform, centre: list[float]) -> np.ndarray:
    return np.asarray(t.TransformPoint(tuple(centre))) - np.asarray(centre)


def test_known_misalignment_is_flagged_measured_and_registered(roots: dict[str, Path]) -> None:
    raw = roots["autotrans_raw"]
    root, truth = _build(raw, 501, ["ms07", "ms07upper", "remind022"], misaligned="remind022")
    original_t1c = read_image(fixture_file("remind_022/t1c.nii.gz"))[0]

    section, written = alignment.check_dataset(501, num_processes=1)
    assert written == roots["autotrans_preprocessed"] / root.name / "pair_alignment.json"
    assert json.loads(written.read_text())["flagged"] == ["remind022"]
    assert section["flagged"] == ["remind022"]  # the untouched real pairs are not flagged
    for case in ("ms07", "ms07upper"):
        assert section["cases"][case]["offset_voxels"] < 1.0, section["cases"][case]

    est = section["cases"]["remind022"]
    true_inverse = sitk.VersorRigid3DTransform(truth["remind022"].GetInverse())
    true_t = _true_translation_at(true_inverse, est["center_mm"])
    assert np.linalg.norm(np.asarray(est["translation_mm"]) - true_t) < 1.0, (est["translation_mm"], true_t)
    assert np.linalg.norm(true_t) == pytest.approx(5.0, abs=0.5)  # the centre of the head moved by about 5 mm
    r_est = np.asarray(alignment.transform_from_result(est).GetMatrix()).reshape(3, 3)
    r_true = np.asarray(true_inverse.GetMatrix()).reshape(3, 3)
    assert abs(est["rotation_deg"] - ANGLE_DEG) < 1.0
    assert alignment.rotation_angle_deg(r_est @ r_true.T) < 1.0  # same axis too, not only the same angle
    assert est["metric_after"] < est["metric_before"]
    assert est["offset_voxels"] > 2.0

    # --register rigid -o 502: a new dataset, the original untouched, the moved source put back
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    dest, _ = alignment.register_step(501, 502)
    assert dest == raw / "Dataset502_PairCheckRegistered"
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    for rel in ("targetsTr/ms07.nii.gz", "targetsTr/remind022.nii.gz"):
        assert (dest / rel).read_bytes() == (root / rel).read_bytes()
    dj = json.loads((dest / "dataset.json").read_text())
    assert dj["name"] == "PairCheckRegistered" and dj["pair_registration"]["registered_from"] == root.name
    assert (dest / "pair_registration.json").is_file()

    # Where the registered source's voxels come from in the original: A(T(x)); the residual |A(T(x)) - x| over the
    # head is the registration error in mm (the exact inverse would give 0). On this small crop the untouched
    # pair itself registers to ~0.5 mm from identity (MI's optimum on 68 x 59 x 55 voxels of two contrasts;
    # the curators measured 0.1 mm on the whole head), so sub-voxel on average and < 1.5 voxels anywhere.
    original_img = sitk.ReadImage(str(fixture_file("remind_022/t1c.nii.gz")))
    head_idx = np.argwhere(original_t1c > np.percentile(original_t1c, 20))[::7, ::-1]
    points = np.array([original_img.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in head_idx])
    t_est = alignment.transform_from_result(est)
    residual = np.linalg.norm([np.asarray(truth["remind022"].TransformPoint(t_est.TransformPoint(tuple(p)))) - p
                               for p in points], axis=1)
    print(f"residual after registration: max {residual.max():.2f} mm, mean {residual.mean():.2f} mm")
    assert residual.max() < 1.5 and residual.mean() < 1.0, (residual.max(), residual.mean())

    # Intensities: the registered source against the moved source resampled with the exact A⁻¹, and against the
    # original. Two linear interpolations blur a 1 mm T1c, and its fine texture decorrelates fast with sub-mm
    # error (the exact inverse itself correlates only ~0.95 with the original), hence the modest thresholds.
    registered, _ = read_image(dest / "imagesTr" / "remind022_0000.nii.gz")
    moved = sitk.ReadImage(str(root / "imagesTr" / "remind022_0000.nii.gz"))
    exact = sitk.GetArrayFromImage(sitk.Resample(moved, moved, true_inverse, sitk.sitkLinear, 0.0))
    head = original_t1c > np.percentile(original_t1c, 20)
    inner = np.zeros_like(head)
    inner[10:-10, 10:-10, 10:-10] = True  # the moved source's edges came from outside its field of view
    sel = head & inner
    corr_exact = np.corrcoef(registered[sel], exact[sel])[0, 1]
    corr_original = np.corrcoef(registered[sel], original_t1c[sel])[0, 1]
    corr_before = np.corrcoef(sitk.GetArrayFromImage(moved)[sel], original_t1c[sel])[0, 1]
    print(f"correlation with the original: moved {corr_before:.3f}, registered {corr_original:.3f}; "
          f"registered vs exact inverse {corr_exact:.3f}")
    assert corr_exact > 0.85 and corr_original > 0.8 and corr_before < 0.3, (corr_exact, corr_original, corr_before)

    # checked again, the registered pair is aligned (the other cases' results are those above: not redone here)
    dj_new = DatasetJson.from_dict(json.loads((dest / "dataset.json").read_text()))
    again = alignment.check_case(discover_cases(dest, dj_new).cases["remind022"], dj_new)
    assert again["max_displacement_mm"] < 1.5, again
    voxel = section["rule"]["reference_voxel_mm"]
    others = {c: section["cases"][c]["max_displacement_mm"] for c in ("ms07", "ms07upper")}
    assert alignment.flag_outliers({**others, "remind022": again["max_displacement_mm"]}, voxel)[0] == []


def test_plan_and_preprocess_records_the_check_and_caches_it(roots: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.planning import api

    root, _ = _build(roots["autotrans_raw"], 503, ["ms07", "ms07upper"])
    calls: list[str] = []
    real, first = alignment.check_case, {}

    def counting(cf, dj, threads=None):  # noqa: ANN001, ANN202
        """Counts registrations; registers each case for real once, then returns that result (saves time)."""
        calls.append(cf.case_id)
        if cf.case_id not in first:
            first[cf.case_id] = real(cf, dj, threads)
        return dict(first[cf.case_id])

    monkeypatch.setattr(alignment, "check_case", counting)
    api.plan_and_preprocess(503, num_processes=1, no_pp=True)
    fp_file = roots["autotrans_preprocessed"] / root.name / "dataset_fingerprint.json"
    section = json.loads(fp_file.read_text())["pair_alignment"]
    assert sorted(section["cases"]) == ["ms07", "ms07upper"] and section["flagged"] == []
    assert "2 reference voxels" in section["rule"]["text"] and section["rule"]["reference_voxel_mm"] == 1.0
    assert sorted(calls) == ["ms07", "ms07upper"]

    # the caching, on the fingerprint step alone (planning adds nothing to it and costs seconds per run)
    def fingerprint(**kw: bool) -> None:
        api.extract_fingerprint_step(503, num_processes=1, pair_check=kw.pop("pair_check", True), **kw)

    fingerprint()  # unchanged: nothing registered again
    assert len(calls) == 2
    # one case changes: only it is registered again (the other's content hash is unchanged)
    img = sitk.ReadImage(str(root / "imagesTr" / "ms07upper_0000.nii.gz"))
    sitk.WriteImage(img * 1.01, str(root / "imagesTr" / "ms07upper_0000.nii.gz"))
    fingerprint()
    assert calls[2:] == ["ms07upper"]
    fingerprint(clean=True)  # --clean: everything again
    assert sorted(calls[3:]) == ["ms07", "ms07upper"]
    fingerprint(clean=True, pair_check=False)  # --no_pair_check
    assert len(calls) == 5 and "pair_alignment" not in json.loads(fp_file.read_text())


def test_hardware_aligned_ct_pet_pair_is_not_flagged() -> None:
    """Multi-modal, the weak case (documented): the pelvis CT -> PET of one PET/CT scanner, 3 mm, body mask."""
    from autotrans.dataset.format import CaseFiles

    dj = DatasetJson.from_dict({"name": "X", "source_channels": {"0": {"modality": "CT"}},
                                "target": {"modality": "PET"}, "file_ending": ".nii.gz"})
    cf = CaseFiles("pelvis", [fixture_file("ccth_a01/pelvis_ct.nii.gz")], fixture_file("ccth_a01/pelvis_pet.nii.gz"),
                   fixture_file("ccth_a01/pelvis_body.nii.gz"))
    result = alignment.check_case(cf, dj)
    assert result["metric_after"] <= result["metric_before"]
    assert result["max_displacement_mm"] < 2 * 3.0, result  # under 2 voxels of 3 mm


def test_unpaired_dataset_is_skipped_with_a_note(roots: dict[str, Path]) -> None:
    root, _ = _build(roots["autotrans_raw"], 504, ["ms07"], paired=False)
    dj = DatasetJson.from_dict(_dataset_json(1, paired=False))
    section = alignment.check_pairs(discover_cases(root, dj).cases, dj, num_processes=1)
    assert "unpaired" in section["skipped"]
    assert "skipped" in alignment.format_table(section)


def test_outlier_rule() -> None:
    # perfectly registered data: noise never flags (the floor), a 2-voxel offset always does
    noise = {f"c{i}": d for i, d in enumerate([0.30, 0.31, 0.32, 0.33, 0.45])}
    assert alignment.flag_outliers(noise, 1.0)[0] == []
    assert alignment.flag_outliers({**noise, "bad": 2.1}, 1.0)[0] == ["bad"]
    # clearly apart from tightly aligned others, though under 2 voxels of 1 mm
    assert alignment.flag_outliers({**noise, "apart": 1.6}, 1.0)[0] == ["apart"]
    # with two cases only the absolute rule applies
    flagged, rule = alignment.flag_outliers({"a": 0.2, "b": 1.9}, 1.0)
    assert flagged == [] and rule["relative_threshold_mm"] is None
    assert alignment.reference_spacing([[3.0, 1.0, 1.0], [5.0, 0.8, 0.8], [4.0, 0.9, 0.9]]) == pytest.approx(0.9)


def test_cli_refuses_bad_requests_in_one_line(roots: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from autotrans.cli.check_pairs import main

    _build(roots["autotrans_raw"], 505, ["ms07"])
    (roots["autotrans_raw"] / "Dataset506_Taken").mkdir()
    for argv, needle in ((["-d", "505", "-o", "507"], "go together"),
                         (["-d", "505", "--register", "rigid", "-o", "505"], "itself"),
                         (["-d", "505", "--register", "rigid", "-o", "506"], "already used"),
                         (["-d", "505", "-np", "0"], "-np 0")):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (roots["autotrans_preprocessed"] / "Dataset505_PairCheck" / "pair_alignment.json").exists()
    shutil.rmtree(roots["autotrans_raw"] / "Dataset506_Taken")


def test_plan_and_preprocess_flag_turns_the_check_off(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess
    from autotrans.planning import api

    seen: list[bool] = []
    monkeypatch.setattr(api, "plan_and_preprocess", lambda *a, **kw: seen.append(kw["pair_check"]))
    _build(roots["autotrans_raw"], 508, ["ms07"])
    assert main_plan_and_preprocess(["-d", "508"]) == 0
    assert main_plan_and_preprocess(["-d", "508", "--no_pair_check"]) == 0
    assert seen == [True, False]


def test_bundled_ct_pet_demo_is_not_flagged_but_a_gross_error_would_be() -> None:
    """Hardware-aligned PET/CT (the bundled 6 mm demo slabs) raises no false alarm: with PET on either side the
    rule's noise floor (30 mm, the method's measured error on these data) applies; a gross error above it flags."""
    from autotrans.dataset.demo import demo_data_dir

    root = demo_data_dir() / "Dataset902_DemoCTtoPET"
    dj = DatasetJson.from_dict(json.loads((root / "dataset.json").read_text()))
    assert alignment.noise_floor_mm(dj) == alignment.PET_NOISE_FLOOR_MM
    section = alignment.check_pairs(discover_cases(root, dj).cases, dj, num_processes=1)
    assert section["flagged"] == [] and not section["failed"], section
    assert section["rule"]["noise_floor_mm"] == alignment.PET_NOISE_FLOOR_MM
    measured = {c: r["max_displacement_mm"] for c, r in section["cases"].items()}
    assert max(measured.values()) < alignment.PET_NOISE_FLOOR_MM, measured
    voxel = section["rule"]["reference_voxel_mm"]
    gross = {**measured, "swapped": alignment.PET_NOISE_FLOOR_MM + 15.0}
    assert alignment.flag_outliers(gross, voxel, alignment.noise_floor_mm(dj))[0] == ["swapped"]
    # anatomical pairs keep the voxel-based rule (no floor)
    mr = DatasetJson.from_dict(_dataset_json(1))
    assert alignment.noise_floor_mm(mr) == 0.0
