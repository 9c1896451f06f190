"""Normalization round trips on real data, through the whole preprocess -> export chain."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotrans.io import read_image
from autotrans.planning.fingerprint import intensity_stats
from autotrans.planning.planner import PlannerOptions, plan_experiment
from autotrans.planning.plans import Plans
from autotrans.preprocessing.normalization import (NormalizationDefaults, PercentileNormalization, SUVNormalization,
                                                   WindowNormalization, normalization_from_dict)
from autotrans.preprocessing.cropping import nonbackground_mask
from autotrans.preprocessing.preprocessor import export_prediction, preprocess_arrays
from autotrans.dataset.format import load_dataset_json
from autotrans.errors import ConfigurationError

DEMO = Path(__file__).resolve().parents[2] / "autotrans" / "dataset" / "demo_data"


def _plans_for(folder: Path, case: str, defaults: NormalizationDefaults = NormalizationDefaults()) -> tuple[Plans, dict]:
    """Plan a single case at its own spacing, so the chain has no resampling and only normalization is tested.

    The fingerprint holds that case's statistics inside the mask, per case and pooled, as the real one does."""
    src, g = read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
    tgt, _ = read_image(folder / "targetsTr" / f"{case}.nii.gz")
    mask, _ = read_image(folder / "masksTr" / f"{case}.nii.gz")
    src_stats, tgt_stats = intensity_stats(src[mask > 0]), intensity_stats(tgt[mask > 0])
    fp = {"spacings": [list(g.spacing_zyx)] * 2, "shapes_after_crop": [list(g.shape_zyx)] * 2,
          "cases": {case: {"channels": {"0": src_stats}, "target": tgt_stats}},
          "foreground_intensity_properties_per_channel": {"0": src_stats},
          "target_intensity_properties": tgt_stats}
    plans = plan_experiment(fp, load_dataset_json(folder), "Dataset001_T", PlannerOptions(normalization=defaults))
    return Plans(plans), {"src": src, "tgt": tgt, "mask": mask.astype(np.uint8), "geometry": g}


def _chain(plans: Plans, d: dict) -> tuple[np.ndarray, dict, np.ndarray]:
    cfg = plans.configuration("3d_fullres")
    arrays, props = preprocess_arrays(d["src"][None], d["geometry"], plans, cfg, d["mask"], d["tgt"])
    return arrays["target"][0], props, export_prediction(arrays["target"][0], props, plans, cfg, props["target_normalization_params"])


def test_ct_round_trip_within_half_hu() -> None:
    # CT is the *source* of the CT->PET demo: test the CT scheme by planning it as a target (swap roles)
    folder = DEMO / "Dataset902_DemoCTtoPET"
    plans, d = _plans_for(folder, "CCTH-A01-slab1")
    norm = plans.source_normalization[0]
    assert isinstance(norm, WindowNormalization) and norm.window == (-1024.0, 3071.0)
    ct = d["src"]
    back = norm.inverse(norm.forward(ct))
    inside = (ct >= -1024) & (ct <= 3071)
    assert np.abs(back[inside] - ct[inside]).max() < 0.5
    assert norm.forward(np.array([3000.0]))[0] < 1.0  # cortical bone stays inside the window, not cut
    assert ct.min() == -1024 and ct.max() > 300
    assert np.all(back[ct > 3071] == pytest.approx(3071, abs=0.5))


def test_pet_round_trip_within_001_suv_everywhere() -> None:
    """Default plan: ceiling = 1.5 x the case's largest SUV, so the whole crop comes back (log1p and linear)."""
    folder = DEMO / "Dataset902_DemoCTtoPET"
    assert NormalizationDefaults().pet_transform == "log1p"
    for transform in ("log1p", "linear"):
        plans, d = _plans_for(folder, "CCTH-A01-slab0", NormalizationDefaults(pet_transform=transform))
        norm = plans.target_normalization
        assert isinstance(norm, SUVNormalization) and norm.transform == transform and norm.clip
        _, props, exported = _chain(plans, d)
        pet, mask = d["tgt"], d["mask"] > 0
        assert norm.ceiling == pytest.approx(1.5 * pet[mask].max())
        box = tuple(slice(a, b) for a, b in props["crop_bbox"])
        assert np.abs(exported[box] - pet[box]).max() < 0.01
        assert props["clipped_voxels"]["target"] == {"below": 0, "below_in_foreground": 0, "above": 0,
                                                     "above_in_foreground": 0}


def test_pet_explicit_ceiling_still_clips_and_counts() -> None:
    """``--pet_ceiling`` is an explicit override: above it a target is clipped, and the clipped voxels are counted."""
    folder = DEMO / "Dataset902_DemoCTtoPET"
    plans, d = _plans_for(folder, "CCTH-A01-slab1", NormalizationDefaults(pet_ceiling=3.0, pet_transform="linear"))
    norm = plans.target_normalization
    assert norm == SUVNormalization(ceiling=3.0, transform="linear", clip=True)
    _, props, exported = _chain(plans, d)
    pet, mask = d["tgt"], d["mask"] > 0
    box = tuple(slice(a, b) for a, b in props["crop_bbox"])
    below = pet[box] < norm.ceiling
    assert np.abs(exported[box][below] - pet[box][below]).max() < 0.01
    assert np.allclose(exported[box][~below], norm.ceiling, atol=0.01)
    counts = props["clipped_voxels"]["target"]
    assert counts["above"] == int((pet[box] > 3.0).sum()) > 0
    assert counts["above_in_foreground"] == int((pet[mask] > 3.0).sum()) > 0 and counts["below"] == 0


def test_mr_round_trip_exact_to_recorded_scale() -> None:
    folder = DEMO / "Dataset901_DemoT2toFLAIR"
    plans, d = _plans_for(folder, "MS-patient07")
    norm = plans.target_normalization
    flair, mask = d["tgt"], d["mask"] > 0
    # a target lives in the generator's range, with room for the brightest voxel of the (here: one) case
    assert isinstance(norm, PercentileNormalization) and norm.clip
    lo_, hi_ = np.percentile(flair[mask], (0.5, 99.5))
    assert norm.headroom == pytest.approx(1.1 * (flair[mask].max() - lo_) / (hi_ - lo_), abs=1e-4)
    normalized, props, exported = _chain(plans, d)
    params = props["target_normalization_params"]
    assert params["low"] == pytest.approx(lo_) and params["high"] == pytest.approx(hi_)
    assert normalized.min() >= -1 and normalized.max() <= 1
    assert normalized.max() < 1 - 1e-3  # the brightest voxel is not at the clipping bound
    box = tuple(slice(a, b) for a, b in props["crop_bbox"])
    err = np.abs(exported[box] - flair[box])  # everywhere in the crop, lesions above p99.5 included
    assert err.max() < 1e-3 * (params["high"] - params["low"])
    assert props["clipped_voxels"]["target"]["above"] == 0 and props["clipped_voxels"]["target"]["below"] == 0
    # the source channel is not clipped (its round trip is exact everywhere) and its parameters come from
    # its own non-background, not the mask
    src_norm = plans.source_normalization[0]
    assert not src_norm.clip and src_norm.headroom == 1.0 and src_norm.footroom == 0.0
    p = src_norm.fit_case(d["src"][nonbackground_mask(d["src"][None], ["MR"])])
    assert props["source_normalization_params"][0] == p
    assert np.allclose(src_norm.inverse(src_norm.forward(d["src"], p), p), d["src"], atol=1e-3)


def test_mr_target_without_case_parameters_stays_normalized() -> None:
    folder = DEMO / "Dataset901_DemoT2toFLAIR"
    plans, d = _plans_for(folder, "MS-patient07")
    cfg = plans.configuration("3d_fullres")
    arrays, props = preprocess_arrays(d["src"][None], d["geometry"], plans, cfg, d["mask"], d["tgt"])
    with pytest.raises(ValueError, match="per-case parameters"):
        export_prediction(arrays["target"][0], props, plans, cfg, None)
    out = export_prediction(arrays["target"][0], props, plans, cfg, None, invert=False)
    assert out.shape == d["tgt"].shape
    # the documented output scale (p0.5 -> -1, p99.5 -> +1), not the network space: bright voxels exceed +1
    reference = plans.target_normalization.raw_to_output_scale(d["tgt"], props["target_normalization_params"])
    box = tuple(slice(a, b) for a, b in props["crop_bbox"])
    np.testing.assert_allclose(out[box], reference[box], atol=1e-5)
    assert out.max() > 1.2 and out.min() >= -1.0
    outside = np.ones(out.shape, bool)
    outside[box] = False
    assert (out[outside] == -1.0).all()


def test_scheme_registry_rejects_unknown_and_bad_parameters() -> None:
    with pytest.raises(ConfigurationError, match="valid: percentile, suv, window"):
        normalization_from_dict({"scheme": "zscore"})
    with pytest.raises(ConfigurationError, match="upper bound"):
        WindowNormalization(window=(100, -100))
    with pytest.raises(ConfigurationError, match="linear"):
        SUVNormalization(ceiling=10, transform="sqrt")
    n = normalization_from_dict(SUVNormalization(ceiling=7.5, transform="log1p").to_dict())
    assert n == SUVNormalization(ceiling=7.5, transform="log1p")
    with pytest.raises(ConfigurationError, match="headroom"):
        PercentileNormalization(headroom=0.5)
    with pytest.raises(ConfigurationError, match="footroom"):
        PercentileNormalization(footroom=-0.1)
    m = PercentileNormalization(clip=True, headroom=1.4, footroom=0.02)
    assert normalization_from_dict(m.to_dict()) == m
    # plans written before headroom/footroom/clip existed load with the old behaviour
    assert normalization_from_dict({"scheme": "percentile", "p_low": 0.5, "p_high": 99.5, "clip": True}) == \
        PercentileNormalization(clip=True, headroom=1.0, footroom=0.0)
    assert normalization_from_dict({"scheme": "suv", "ceiling": 20.0, "transform": "linear"}).clip
