"""Normalization never clips what matters: hot PET uptake, bright MR lesions, one region for MR source
parameters, and clipped voxels counted per case. Real data: the bundled demo datasets."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autotrans.cli.plan_and_preprocess import main_extract_fingerprint, main_plan_and_preprocess
from autotrans.dataset.format import discover_cases, load_dataset_json
from autotrans.dataset.integrity import load_case
from autotrans.evaluation import evaluate_case
from autotrans.io import read_image, write_image
from autotrans.planning.plans import Plans
from autotrans.preprocessing.normalization import (MR_FOOTROOM_CAP, MR_HEADROOM_CAP, PET_CEILING_HEADROOM,
                                                   NormalizationDefaults, PercentileNormalization, SUVNormalization,
                                                   mr_target_rooms, pet_ceiling, plan_normalization)
from autotrans.preprocessing.preprocessor import export_prediction, preprocess_arrays
from autotrans.preprocessing.store import PreprocessedCase
from autotrans.utils.files import load_json
from tests.conftest import install_demo_copy

MS_CASES = ("MS-patient07", "MS-patient19")
NO_CLIP = {"below": 0, "below_in_foreground": 0, "above": 0, "above_in_foreground": 0}


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Both demo datasets planned and preprocessed once with the default plan (ids 31: MR, 32: PET)."""
    base = tmp_path_factory.mktemp("roots")
    with pytest.MonkeyPatch.context() as mp:
        roots = {}
        for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
            (base / var).mkdir()
            mp.setenv(var, str(base / var))
            roots[var] = base / var
        install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 31)
        install_demo_copy(roots["autotrans_raw"], "Dataset902_DemoCTtoPET", 32)
        for d in ("31", "32"):
            assert main_plan_and_preprocess(["-d", d, "-np", "1"]) == 0
        pre = roots["autotrans_preprocessed"]
        yield {"mr_raw": roots["autotrans_raw"] / "Dataset031_DemoT2toFLAIR",
               "mr_pre": pre / "Dataset031_DemoT2toFLAIR",
               "pet_raw": roots["autotrans_raw"] / "Dataset032_DemoCTtoPET",
               "pet_pre": pre / "Dataset032_DemoCTtoPET"}


def _raw_cases(raw: Path) -> dict:
    dj = load_dataset_json(raw)
    return {c: load_case(cf, dj)[0] for c, cf in discover_cases(raw, dj, "Tr").cases.items()}


# ---- the default plan on the demo data ------------------------------------------------------------------

def test_default_plan_clips_no_target_voxel_on_the_demo_data(planned: dict[str, Path]) -> None:
    for key in ("mr_pre", "pet_pre"):
        data = planned[key] / "autotransPlans_3d_fullres"
        cases = sorted(data.glob("*.json"))
        assert len(cases) >= 3
        for f in cases:
            counts = load_json(f)["clipped_voxels"]
            assert counts["target"] == NO_CLIP, f.name
            assert all(c == NO_CLIP for c in counts["source"]), f.name
    mr = Plans.load(planned["mr_pre"] / "autotransPlans.json").target_normalization
    assert isinstance(mr, PercentileNormalization) and mr.clip and 1.3 < mr.headroom < 1.5 and mr.footroom < 0.05
    pet = Plans.load(planned["pet_pre"] / "autotransPlans.json").target_normalization
    fp = load_json(planned["pet_pre"] / "dataset_fingerprint.json")
    case_max = max(c["target"]["max"] for c in fp["cases"].values())
    assert isinstance(pet, SUVNormalization) and pet.transform == "log1p" and pet.clip
    assert pet.ceiling == pytest.approx(PET_CEILING_HEADROOM * case_max)
    # the pooled p99.9 (the old ceiling) lies far below the hottest voxel of the demo
    assert fp["target_intensity_properties"]["percentile_99_9"] < 0.7 * case_max


def test_ms_flair_lesions_round_trip_within_one_percent(planned: dict[str, Path]) -> None:
    """Real MS lesions: forward -> inverse (raw FLAIR) and preprocess -> export(invert=False) (output scale)."""
    plans = Plans.load(planned["mr_pre"] / "autotransPlans.json")
    cfg = plans.configuration("3d_fullres")
    norm = plans.target_normalization
    raw = _raw_cases(planned["mr_raw"])
    data = planned["mr_pre"] / cfg.data_identifier
    above_p995 = {}
    for case in MS_CASES:
        a = raw[case]
        les = a.lesions > 0
        props = PreprocessedCase(data, case).properties
        params = props["target_normalization_params"]
        flair = a.target.astype(np.float64)
        above_p995[case] = float((flair[les] > params["high"]).mean())
        # forward -> inverse with the case's parameters: raw intensity back within 1 %
        back = norm.inverse(norm.forward(a.target, params), params)
        assert np.all(np.abs(back[les] - flair[les]) <= 0.01 * np.abs(flair[les])), case
        # preprocess -> export in the output scale == the output-scale reference
        arrays, p2 = preprocess_arrays(a.source, a.geometry, plans, cfg, a.mask, a.target, a.lesions)
        assert p2["target_normalization_params"] == params and p2["clipped_voxels"]["target"] == NO_CLIP
        exported = export_prediction(arrays["target"][0], p2, plans, cfg, invert=False)
        reference = norm.raw_to_output_scale(a.target, params)
        np.testing.assert_allclose(exported[les], reference[les], rtol=0.01, atol=1e-5, err_msg=case)
        # the stored target exports the same way (what training saw)
        stored = PreprocessedCase(data, case).load("target")[0]
        np.testing.assert_allclose(export_prediction(stored, props, plans, cfg, invert=False)[les], reference[les],
                                   rtol=0.01, atol=1e-5, err_msg=case)
        # lesions above p99.5 keep their value above +1 (a clip at p99.5 would have flattened them)
        hot = les & (flair > params["high"])
        assert hot.any() and exported[hot].min() > 1.0
    # the problem this fixes: 42 % and 11 % of the lesion voxels lie above the case's p99.5
    assert above_p995["MS-patient07"] > 0.4 and above_p995["MS-patient19"] > 0.1


def test_mr_source_parameters_equal_in_training_and_inference(planned: dict[str, Path]) -> None:
    """Training (with mask) and inference (no mask) fit the source on the same region and normalize it the same."""
    from autotrans.inference.cases import preprocess_case

    plans = Plans.load(planned["mr_pre"] / "autotransPlans.json")
    cfg = plans.configuration("3d_fullres")
    data = planned["mr_pre"] / cfg.data_identifier
    for case, a in sorted(_raw_cases(planned["mr_raw"]).items()):
        stored = PreprocessedCase(data, case).properties["source_normalization_params"]
        _, with_mask = preprocess_arrays(a.source, a.geometry, plans, cfg, a.mask, a.target, a.lesions)
        src_inf, without = preprocess_case(a.source, a.geometry, plans, "3d_fullres")
        assert with_mask["source_normalization_params"] == without["source_normalization_params"] == stored, case
        # crops may differ (mask bbox vs non-background bbox), the normalized values where they overlap do not
        # (no resampling on the demo grid)
        src_tr = PreprocessedCase(data, case).load("source")
        full_tr, full_inf = (np.full((src_tr.shape[0], *a.geometry.shape_zyx), np.nan, np.float32) for _ in range(2))
        for full, arr, box in ((full_tr, src_tr, with_mask["crop_bbox"]), (full_inf, src_inf, without["crop_bbox"])):
            full[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)] = np.transpose(
                arr, [0] + [1 + i for i in plans.transpose_backward])
        both = np.isfinite(full_tr) & np.isfinite(full_inf)
        assert both.sum() > 0.5 * a.mask.sum()
        np.testing.assert_array_equal(full_tr[both], full_inf[both])


# ---- PET: a hot lesion survives, a ceiling below it is counted ---------------------------------------

def _insert_sphere(volume: np.ndarray, mask: np.ndarray, value: float, radius: int = 2) -> np.ndarray:
    """Boolean sphere of ``radius`` voxels, fully inside ``mask``, centred at the deepest mask voxel."""
    from scipy.ndimage import distance_transform_edt

    centre = np.unravel_index(np.argmax(distance_transform_edt(mask)), mask.shape)
    grid = np.indices(mask.shape)
    sphere = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    assert mask[sphere].all()
    volume[sphere] = value
    return sphere


def test_pet_lesion_at_three_times_pooled_p999_round_trips(petct_demo: Path, roots: dict[str, Path], caplog) -> None:
    pre = roots["autotrans_preprocessed"] / "Dataset012_DemoCTtoPET"
    assert main_extract_fingerprint(["-d", "12", "-np", "1"]) == 0
    p999 = load_json(pre / "dataset_fingerprint.json")["target_intensity_properties"]["percentile_99_9"]
    case = "CCTH-A01-slab1"
    tgt_file = petct_demo / "targetsTr" / f"{case}.nii.gz"
    pet, geometry = read_image(tgt_file)
    mask = read_image(petct_demo / "masksTr" / f"{case}.nii.gz")[0] > 0
    lesion_suv = 3.0 * p999
    pet = pet.astype(np.float32)
    lesion = _insert_sphere(pet, mask, lesion_suv)
    write_image(pet, geometry, tgt_file)

    assert main_plan_and_preprocess(["-d", "12", "-np", "1"]) == 0  # the changed file is fingerprinted again
    plans = Plans.load(pre / "autotransPlans.json")
    cfg = plans.configuration("3d_fullres")
    norm = plans.target_normalization
    assert norm.transform == "log1p" and norm.ceiling == pytest.approx(PET_CEILING_HEADROOM * lesion_suv, rel=1e-6)
    data = pre / cfg.data_identifier
    assert PreprocessedCase(data, case).properties["clipped_voxels"]["target"] == NO_CLIP
    # preprocess -> export (inverted to SUV), the target passed as the normalized "prediction"
    a = _raw_cases(petct_demo)[case]
    arrays, props = preprocess_arrays(a.source, a.geometry, plans, cfg, a.mask, a.target, a.lesions)
    exported = export_prediction(arrays["target"][0], props, plans, cfg)
    assert np.all(np.abs(exported[lesion] - lesion_suv) <= 0.01 * lesion_suv)
    stored = PreprocessedCase(data, case).load("target")[0]
    assert np.all(np.abs(export_prediction(stored, props, plans, cfg)[lesion] - lesion_suv) <= 0.01 * lesion_suv)

    # the old default (ceiling = pooled p99.9, linear) cuts the lesion: counted per case and warned about once
    caplog.clear()
    caplog.set_level(logging.WARNING)
    assert main_plan_and_preprocess(["-d", "12", "-np", "1", "--pet_ceiling", str(p999),
                                     "--pet_transform", "linear"]) == 0
    counts = PreprocessedCase(data, case).properties["clipped_voxels"]["target"]
    assert counts["above_in_foreground"] >= int(lesion.sum()) and counts["above"] >= counts["above_in_foreground"]
    assert counts["below"] == 0
    warnings = [r.getMessage() for r in caplog.records if "clipped foreground voxels" in r.getMessage()]
    assert len(warnings) == 1 and case in warnings[0]
    low = Plans.load(pre / "autotransPlans.json")
    assert low.target_normalization == SUVNormalization(ceiling=p999, transform="linear", clip=True)
    stored = PreprocessedCase(data, case)
    cut = export_prediction(stored.load("target")[0], stored.properties, low, low.configuration("3d_fullres"))
    assert cut[lesion].max() == pytest.approx(p999, rel=1e-4)


def test_pet_source_is_not_clipped_at_the_ceiling() -> None:
    src = plan_normalization("PET", {"max": 10.0}, False, NormalizationDefaults())
    tgt = plan_normalization("PET", {"max": 10.0}, True, NormalizationDefaults())
    assert src.ceiling == tgt.ceiling == 15.0 and not src.clip and tgt.clip
    x = np.array([0.0, 1.0, 14.0, 40.0, 100.0], np.float32)
    np.testing.assert_allclose(src.inverse(src.forward(x)), x, rtol=1e-5)  # log1p extrapolates above +1
    assert src.forward(x)[-1] > 1.0 and tgt.forward(x)[-1] == pytest.approx(1.0)
    assert src.clip_bounds() == (0.0, None) and tgt.clip_bounds() == (0.0, 15.0)
    assert src.forward(np.array([-0.5], np.float32))[0] == pytest.approx(-1.0)  # floored at 0 SUV


def test_pet_ceiling_from_per_case_maxima_and_overrides() -> None:
    pooled = {"max": 20.0, "percentile_99_9": 12.0}  # a voxel sample missed the hottest voxel ...
    cases = [{"max": 8.0}, {"max": 34.0}, {"max": float("nan")}]  # ... the per-case maxima did not
    assert pet_ceiling(pooled, cases) == pytest.approx(1.5 * 34.0)
    assert pet_ceiling({"percentile_99_9": 12.0}, []) == pytest.approx(1.5 * 12.0)  # no maxima recorded
    assert pet_ceiling(None, []) == 20.0
    n = plan_normalization("PET", pooled, True, NormalizationDefaults(pet_ceiling=7.0, pet_transform="linear"), cases)
    assert n == SUVNormalization(ceiling=7.0, transform="linear", clip=True)


# ---- MR: output scale vs network space ---------------------------------------------------------------

def test_mr_headroom_maps_and_bounds() -> None:
    n = PercentileNormalization(clip=True, headroom=1.5, footroom=0.1)
    params = {"low": 100.0, "high": 300.0}
    x = np.array([70.0, 80.0, 90.0, 100.0, 300.0, 390.0, 400.0, 420.0], np.float32)
    v = n.raw_to_output_scale(x, params)  # p_low -> -1, p_high -> +1, unclipped
    np.testing.assert_allclose(v, [-1.3, -1.2, -1.1, -1.0, 1.0, 1.9, 2.0, 2.2], atol=1e-6)
    y = n.forward(x, params)
    inner = slice(1, 7)  # raw 80 .. 400: inside the planned room [p_low - 0.1 span, p_low + 1.5 span]
    np.testing.assert_allclose(y[inner], 2 * ((v[inner] + 1) / 2 + 0.1) / 1.6 - 1, atol=1e-6)
    assert y[1] == pytest.approx(-1.0) and y[6] == pytest.approx(1.0) and -1 < y[2] < y[5] < 1
    assert y[0] == -1.0 and y[-1] == 1.0  # clipped only beyond the planned room
    assert n.clip_bounds(params) == pytest.approx((80.0, 400.0))
    np.testing.assert_allclose(n.to_output_scale(y[inner]), v[inner], atol=1e-6)
    np.testing.assert_allclose(n.from_output_scale(v[inner]), y[inner], atol=1e-6)
    np.testing.assert_allclose(n.inverse(y[inner], params), x[inner], rtol=1e-6)  # inverse returns raw intensity
    assert n.to_output_scale(np.float32(n.air)) == pytest.approx(-1.2) and n.output_background == -1.0
    # headroom 1, footroom 0: the network space is the output scale (plans written before this change)
    old = PercentileNormalization(clip=True)
    np.testing.assert_allclose(old.to_output_scale(y), y)


def test_mr_rooms_from_case_statistics() -> None:
    cases = [{"min": 0.0, "max": 143.0, "percentile_00_5": 0.0, "percentile_99_5": 111.0},
             {"min": -1.0, "max": 1001.0, "percentile_00_5": 18.0, "percentile_99_5": 959.36}]
    head, foot = mr_target_rooms(cases, (0.5, 99.5))
    assert head == pytest.approx(1.1 * 143 / 111, abs=1e-4) and head >= 1.1 * 143 / 111
    assert foot == pytest.approx(1.1 * 19 / 941.36, abs=1e-4) and foot >= 1.1 * 19 / 941.36
    assert mr_target_rooms([{"min": 0, "max": 1e4, "percentile_00_5": 0, "percentile_99_5": 100}],
                           (0.5, 99.5)) == (MR_HEADROOM_CAP, 0.0)
    assert mr_target_rooms([], (0.5, 99.5)) == (MR_HEADROOM_CAP, MR_FOOTROOM_CAP)
    assert mr_target_rooms(cases, (1.0, 99.0)) == (MR_HEADROOM_CAP, MR_FOOTROOM_CAP)  # not in the fingerprint
    src = plan_normalization("MR", None, False, case_stats=cases)
    assert src == PercentileNormalization(clip=False)


def test_patch_psnr_of_mr_equals_the_output_scale_psnr() -> None:
    """Per-epoch validation reports MR in the per-case output scale (as the final validation and the report, not
    raw scanner units); its MAE and PSNR equal the autotrans standard's there."""
    import torch

    from autotrans.training.validation import physical_patch_errors

    n = PercentileNormalization(clip=True, headroom=1.4, footroom=0.05)
    params = {"low": 10.0, "high": 210.0}
    rng = np.random.default_rng(0)
    target = np.clip(rng.uniform(-1, 1, (1, 1, 8, 8, 8)), -1, 1).astype(np.float32)
    pred = np.clip(target + 0.05 * rng.standard_normal(target.shape), -1, 1).astype(np.float32)
    mask = np.ones(target.shape, np.float32)
    (mae, psnr), = physical_patch_errors(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask),
                                         n, [params])
    raw_t, raw_p = n.inverse(target[0, 0], params), n.inverse(pred[0, 0], params)
    ref = n.raw_to_output_scale(raw_t, params)
    out = n.to_output_scale(pred[0, 0])
    assert mae == pytest.approx(np.abs(out - ref).mean(), rel=1e-4)
    assert mae == pytest.approx(np.abs(raw_p - raw_t).mean() * 2 / (params["high"] - params["low"]), rel=1e-4)
    res = evaluate_case(ref, out, None, modality="MR", value_range=(-1.0, 1.0), range_source="plan")
    assert math.isfinite(psnr) and psnr == pytest.approx(res["metrics"]["psnr"], rel=1e-4)
    assert mae == pytest.approx(res["metrics"]["mae"], rel=1e-4)
