"""Normalization round trips on real data, through the whole preprocess -> export chain."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotrans.io import read_image
from autotrans.planning.planner import PlannerOptions, plan_experiment
from autotrans.planning.plans import Plans
from autotrans.preprocessing.normalization import (NormalizationDefaults, PercentileNormalization, SUVNormalization,
                                                   WindowNormalization, normalization_from_dict)
from autotrans.preprocessing.preprocessor import export_prediction, preprocess_arrays
from autotrans.dataset.format import load_dataset_json
from autotrans.errors import ConfigurationError

DEMO = Path(__file__).resolve().parents[2] / "autotrans" / "dataset" / "demo_data"


def _plans_for(folder: Path, case: str, defaults: NormalizationDefaults = NormalizationDefaults()) -> tuple[Plans, dict]:
    """Plan a single case at its own spacing, so the chain has no resampling and only normalization is tested."""
    src, g = read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
    tgt, _ = read_image(folder / "targetsTr" / f"{case}.nii.gz")
    mask, _ = read_image(folder / "masksTr" / f"{case}.nii.gz")
    fp = {"spacings": [list(g.spacing_zyx)] * 2, "shapes_after_crop": [list(g.shape_zyx)] * 2,
          "foreground_intensity_properties_per_channel": {"0": {"percentile_99_9": float(np.percentile(src[mask > 0], 99.9))}},
          "target_intensity_properties": {"percentile_99_9": float(np.percentile(tgt[mask > 0], 99.9))}}
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


def test_pet_round_trip_within_001_suv_below_ceiling() -> None:
    folder = DEMO / "Dataset902_DemoCTtoPET"
    for transform in ("linear", "log1p"):
        plans, d = _plans_for(folder, "CCTH-A01-slab1", NormalizationDefaults(pet_transform=transform))
        norm = plans.target_normalization
        assert isinstance(norm, SUVNormalization) and norm.transform == transform
        _, props, exported = _chain(plans, d)
        pet, mask = d["tgt"], d["mask"] > 0
        box = tuple(slice(a, b) for a, b in props["crop_bbox"])
        below = pet[box] < norm.ceiling
        assert np.abs(exported[box][below] - pet[box][below]).max() < 0.01
        assert np.allclose(exported[box][~below], norm.ceiling, atol=0.01)
        assert 0 < norm.ceiling <= pet[mask].max()


def test_mr_round_trip_exact_to_recorded_scale() -> None:
    folder = DEMO / "Dataset901_DemoT2toFLAIR"
    plans, d = _plans_for(folder, "MS-patient07")
    norm = plans.target_normalization
    assert isinstance(norm, PercentileNormalization) and norm.clip  # a target lives in the generator's range
    normalized, props, exported = _chain(plans, d)
    params = props["target_normalization_params"]
    flair, mask = d["tgt"], d["mask"] > 0
    assert params["low"] == pytest.approx(np.percentile(flair[mask], 0.5))
    assert params["high"] == pytest.approx(np.percentile(flair[mask], 99.5))
    assert normalized.min() >= -1 and normalized.max() <= 1
    box = tuple(slice(a, b) for a, b in props["crop_bbox"])
    inside = (flair[box] >= params["low"]) & (flair[box] <= params["high"])
    err = np.abs(exported[box][inside] - flair[box][inside])
    assert err.max() < 1e-3 * (params["high"] - params["low"])
    # the source channel is not clipped: its round trip is exact everywhere
    src_norm = plans.source_normalization[0]
    p = src_norm.fit_case(d["src"][mask])
    assert np.allclose(src_norm.inverse(src_norm.forward(d["src"], p), p), d["src"], atol=1e-3)


def test_mr_target_without_case_parameters_stays_normalized() -> None:
    folder = DEMO / "Dataset901_DemoT2toFLAIR"
    plans, d = _plans_for(folder, "MS-patient07")
    cfg = plans.configuration("3d_fullres")
    arrays, props = preprocess_arrays(d["src"][None], d["geometry"], plans, cfg, d["mask"], d["tgt"])
    with pytest.raises(ValueError, match="per-case parameters"):
        export_prediction(arrays["target"][0], props, plans, cfg, None)
    out = export_prediction(arrays["target"][0], props, plans, cfg, None, invert=False)
    assert out.shape == d["tgt"].shape and out.min() >= -1.0 and out.max() <= 1.0


def test_scheme_registry_rejects_unknown_and_bad_parameters() -> None:
    with pytest.raises(ConfigurationError, match="valid: percentile, suv, window"):
        normalization_from_dict({"scheme": "zscore"})
    with pytest.raises(ConfigurationError, match="upper bound"):
        WindowNormalization(window=(100, -100))
    with pytest.raises(ConfigurationError, match="linear"):
        SUVNormalization(ceiling=10, transform="sqrt")
    n = normalization_from_dict(SUVNormalization(ceiling=7.5, transform="log1p").to_dict())
    assert n == SUVNormalization(ceiling=7.5, transform="log1p")
