"""Dose protocol on the real (cropped) 3 mm CT of the FDG PET/CT case: plan on the CT, recompute on another CT.

Small dose grid (6 mm) and three beams so the suite stays within CI's budget; pyRadPlan's pencil beams run for
real. The full-resolution CT test is marked ``full_data``.
"""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from autotrans.dose.engine import (DoseError, DoseSettings, automatic_target, case_dose, reference_plan,
                                   recompute, volume)
from autotrans.dose.metrics import dose_comparison
from autotrans.io import read_image
from tests.paths import FIXTURES as TEST_DATA

CT = TEST_DATA / "ccth_a01" / "pelvis_ct.nii.gz"
BODY = TEST_DATA / "ccth_a01" / "pelvis_body.nii.gz"
FAST = {"dose_grid_mm": 6.0, "gantry_angles": (0.0, 120.0, 240.0)}


def _image(geo):
    import SimpleITK as sitk

    return geo.apply_to(sitk.Image([int(s) for s in geo.size], sitk.sitkUInt8))


def soft_tissue_shift(ct: np.ndarray, body: np.ndarray, hu: float = 50.0) -> np.ndarray:
    """A known HU error: +``hu`` on every body voxel above -200 HU (tissue and bone, not lung or air)."""
    return np.where((body > 0) & (ct > -200), ct + hu, ct).astype(np.float32)


@pytest.fixture(scope="module")
def pelvis():
    ct, geo = read_image(CT)
    body = read_image(BODY, dtype=np.uint8)[0]
    return ct, geo, body


@pytest.fixture(scope="module")
def recomputed(pelvis, tmp_path_factory):
    """Per modality: one plan on the CT, recomputed on the identical CT and on the HU-shifted CT."""
    ct, geo, body = pelvis
    image = _image(geo)
    cache = tmp_path_factory.mktemp("plan_cache")
    target = automatic_target(body, geo.spacing_zyx, 20.0, "pelvis")
    out = {}
    for modality in ("photons", "protons"):
        s = DoseSettings(modality=modality, **FAST)
        pln, stf, w, ref, rec = reference_plan(volume(ct, image), body, target, s, "pelvis", cache)
        same = recompute(volume(ct.copy(), image), body, target, pln, stf, w, s.prescription_gy)
        shifted = recompute(volume(soft_tissue_shift(ct, body), image), body, target, pln, stf, w,
                            s.prescription_gy)
        out[modality] = {"settings": s, "ref": ref, "same": same, "shifted": shifted, "target": target,
                         "record": rec}
    out["cache"] = cache
    return out


@pytest.mark.parametrize("modality", ["photons", "protons"])
def test_identical_ct_gives_identical_dose(recomputed, pelvis, modality):
    r = recomputed[modality]
    _, geo, body = pelvis
    assert r["ref"].max() > 0.5 * r["settings"].prescription_gy
    # the weights were scaled so the target's mean dose is the prescription
    assert r["ref"][r["target"] > 0].mean() == pytest.approx(r["settings"].prescription_gy, rel=1e-4)
    assert np.abs(r["same"] - r["ref"]).max() < 1e-4 * r["ref"].max()
    comp = dose_comparison(r["ref"], r["same"], geo.spacing_zyx, r["target"], body, 2.0)
    for key in ("gamma_3%3mm", "gamma_2%2mm", "gamma_1%1mm"):
        assert comp[key] == pytest.approx(100.0)
    for name in ("D98", "D95", "D50", "D2", "Dmean"):
        assert abs(comp[f"target_{name}_diff_pct"]) < 1e-2


def test_hu_error_hurts_protons_more_than_photons(recomputed, pelvis):
    """Range is sensitive to stopping power; photon attenuation much less: the same HU error must lower the
    proton pass rate more (the SynthRAD2025 pattern: >98 % photons vs ~85-89 % protons)."""
    _, geo, body = pelvis
    rates = {}
    for modality in ("photons", "protons"):
        r = recomputed[modality]
        comp = dose_comparison(r["ref"], r["shifted"], geo.spacing_zyx, r["target"], body, 2.0,
                               criteria=((2, 2),))
        rates[modality] = comp["gamma_2%2mm"]
        assert comp["gamma_2%2mm"] < 100.0
        # denser tissue: more attenuation upstream of the target, the target's dose falls
        assert comp["target_Dmean_diff_pct"] < 0
    assert rates["protons"] < rates["photons"] - 2.0, rates


def test_automatic_target_is_a_reproducible_sphere_inside_the_body(pelvis):
    ct, geo, body = pelvis
    t1 = automatic_target(body, geo.spacing_zyx, 20.0, "pelvis")
    t2 = automatic_target(body.copy(), geo.spacing_zyx, 20.0, "pelvis")
    assert np.array_equal(t1, t2)
    assert t1.any() and not (t1 & (body == 0)).any()
    volume_cc = t1.sum() * np.prod(geo.spacing) / 1000.0
    assert volume_cc == pytest.approx(4 / 3 * np.pi * 2.0 ** 3, rel=0.2)  # a 20 mm sphere, 33.5 cc
    # the deepest point keeps away from the scan's ends: no slice of the sphere on the first or last slice
    assert not t1[0].any() and not t1[-1].any()


def test_thin_body_is_refused_with_the_case_named():
    body = np.zeros((10, 20, 20), np.uint8)
    body[5, 5:15, 5:15] = 1  # one 3 mm slice
    with pytest.raises(DoseError, match="case7.*thinner than 1 cm"):
        automatic_target(body, (3.0, 3.0, 3.0), 20.0, "case7")


def test_user_target_outside_body_is_refused(pelvis):
    ct, geo, body = pelvis
    target = np.zeros_like(body)
    target[0, 0, 0] = 1
    assert body[0, 0, 0] == 0
    with pytest.raises(DoseError, match="p9: the target mask has no voxel inside the body"):
        case_dose(ct, ct, _image(geo), body, target, DoseSettings(**FAST), "p9")


def test_settings_are_checked():
    with pytest.raises(Exception, match="modality"):
        DoseSettings(modality="carbon")
    with pytest.raises(Exception, match="dose_grid_mm"):
        DoseSettings(dose_grid_mm=0)
    assert DoseSettings(modality="protons").gantry_angles == (90.0, 270.0)


def _cli(argv: list[str]) -> int:
    from autotrans.cli.dose import main

    return main(argv)


def test_cli_writes_rankable_results_and_maps_reusing_the_plan_cache(recomputed, pelvis, tmp_path, caplog):
    """The CLI on (CT, HU-shifted CT): the photon plan comes from the fixture's cache (same CT, body, target
    and settings), dose.json ranks like an evaluation result, the maps are on the CT grid in Gy."""
    ct, geo, body = pelvis
    from autotrans.io import write_image

    for d in ("ref", "pred", "mask", "target"):
        (tmp_path / d).mkdir()
    write_image(ct, geo, tmp_path / "ref" / "p1.nii.gz")
    write_image(soft_tissue_shift(ct, body), geo, tmp_path / "pred" / "p1.nii.gz")
    write_image(body, geo, tmp_path / "mask" / "p1.nii.gz")
    write_image(recomputed["photons"]["target"], geo, tmp_path / "target" / "p1.nii.gz")
    out = tmp_path / "res" / "dose.json"
    with caplog.at_level(logging.INFO, logger="autotrans"):
        rc = _cli(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-mask", str(tmp_path / "mask"),
                   "-target", str(tmp_path / "target"), "--modality", "photons", "--dose_grid", "6",
                   "--gantry_angles", "0", "120", "240", "--maps", str(tmp_path / "maps"),
                   "--plan_cache", str(recomputed["cache"]), "-o", str(out)])
    assert rc == 0
    assert "plan from the cache" in caplog.text
    res = json.loads(out.read_text())
    assert res["standard"] == "dose" and set(res["cases"]) == {"p1"}
    row = res["cases"]["p1"]
    assert {"photons_gamma_3%3mm", "photons_gamma_2%2mm", "photons_gamma_1%1mm",
            "photons_target_D95_absdiff_pct", "photons_body_mae_pct"} <= set(row)
    assert all(not k.endswith("_diff_pct") for k in row)  # only rankable (absolute) differences
    detail = res["case_details"]["p1"]["photons"]
    assert detail["plan"]["cached"] is True and detail["target"].startswith("user target")
    assert res["settings"][0]["gantry_angles"] == [0.0, 120.0, 240.0]
    assert (out.with_suffix(".csv")).read_text().splitlines()[0].startswith("case,photons_gamma_3%3mm")
    diff, dgeo = read_image(tmp_path / "maps" / "p1_photons_dose_diff.nii.gz")
    assert dgeo.mismatch(geo) is None
    ref_map = read_image(tmp_path / "maps" / "p1_photons_dose_ref.nii.gz")[0]
    np.testing.assert_allclose(ref_map, recomputed["photons"]["ref"], atol=1e-5)
    np.testing.assert_allclose(diff, recomputed["photons"]["shifted"] - recomputed["photons"]["ref"], atol=1e-4)
    from autotrans.evaluation.standards import METRIC_DIRECTION, metric_direction

    assert metric_direction("photons_gamma_2%2mm") == 1 and metric_direction("photons_body_mae_pct") == -1
    assert metric_direction("photons_target_D95_absdiff_pct") == -1 and "mae" in METRIC_DIRECTION


@pytest.mark.parametrize("problem, message", [
    ("nan", "p1: the synthetic CT has 3 NaN/Inf voxels"),
    ("geometry", "p1: pred geometry differs from REF: origin"),
    ("not_hu", "p1: the reference CT's values"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(pelvis, tmp_path, capsys, problem, message):
    ct, geo, body = pelvis
    from autotrans.io import write_image
    from autotrans.io.image_io import Geometry

    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    syn = ct.copy()
    pgeo = geo
    ref = ct
    if problem == "nan":
        syn[1, 2, 3:6] = np.nan
    elif problem == "geometry":
        pgeo = Geometry(geo.size, geo.spacing, (geo.origin[0] + 5.0, *geo.origin[1:]), geo.direction)
    else:
        ref = np.clip(ct, 0, 80) / 80.0
    write_image(ref, geo, tmp_path / "ref" / "p1.nii.gz")
    write_image(syn, pgeo, tmp_path / "pred" / "p1.nii.gz")
    out = tmp_path / "res" / "dose.json"
    rc = _cli(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and message in err
    assert not out.exists()


def test_missing_extra_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pyRadPlan", None)  # import fails as if not installed
    rc = _cli(["-ref", str(CT), "-pred", str(CT), "-o", str(tmp_path / "d.json")])
    err = capsys.readouterr().err
    assert rc != 0 and "pip install 'autotrans[dose]'" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


@pytest.mark.full_data
def test_full_resolution_ct_identical_gives_full_pass(shared_data):
    """The whole 3 mm CT (159x159x246) with a coarse grid and two beams: identical CTs agree exactly."""
    folder = shared_data / "petct_tcia_ccth_a01"
    ct, geo = read_image(folder / "ct_hu_3mm.nii.gz")
    body = read_image(folder / "body_mask_3mm.nii.gz", dtype=np.uint8)[0]
    s = DoseSettings(modality="photons", dose_grid_mm=8.0, gantry_angles=(0.0, 180.0))
    d = case_dose(ct, ct, _image(geo), body, None, s, "ccth_a01")
    comp = dose_comparison(d.reference, d.synthetic, geo.spacing_zyx, d.target, d.body, s.prescription_gy,
                           criteria=((2, 2),))
    assert comp["gamma_2%2mm"] == pytest.approx(100.0)
    assert abs(comp["target_D95_diff_pct"]) < 1e-2


def test_cli_target_on_another_grid_is_refused(pelvis, tmp_path, capsys):
    ct, geo, body = pelvis
    from autotrans.io import write_image
    from autotrans.io.image_io import Geometry

    for d in ("ref", "pred", "target"):
        (tmp_path / d).mkdir()
    write_image(ct, geo, tmp_path / "ref" / "p1.nii.gz")
    write_image(ct, geo, tmp_path / "pred" / "p1.nii.gz")
    shifted = Geometry(geo.size, geo.spacing, (geo.origin[0] + 5.0, *geo.origin[1:]), geo.direction)
    write_image(body, shifted, tmp_path / "target" / "p1.nii.gz")
    out = tmp_path / "res" / "dose.json"
    rc = _cli(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-target", str(tmp_path / "target"),
               "-o", str(out)])
    assert rc != 0 and "p1: target geometry differs from REF: origin" in capsys.readouterr().err
    assert not out.exists()
