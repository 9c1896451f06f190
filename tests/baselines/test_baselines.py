"""The reference baselines on the real demo brains (T2 -> FLAIR): identity applies only within a modality
family, the intensity map sees only the fold's training cases (and its monotone option is monotone), and both
predict in the inference chain's geometry and units."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from autotrans.baselines import BaselineNotApplicable, get_baseline
from autotrans.planning.plans import Plans
from autotrans.preprocessing.store import PreprocessedCase, _write_b2nd, case_ids

CONFIG = "3d_fullres"


def _make(name: str, plans: Plans):
    return get_baseline(name)(plans, plans.configuration(CONFIG))


def _with_modalities(plans: Plans, source: str, target: str) -> Plans:
    data = copy.deepcopy(plans.data)
    data["source_channels"][0]["modality"] = source
    data["target"]["modality"] = target
    return Plans(data)


def test_identity_only_within_a_modality_family(demo_planned) -> None:
    plans = demo_planned[0]
    assert _make("identity", plans).not_applicable() is None  # MR -> MR
    for src, tgt in (("MR", "CT"), ("CT", "PET")):
        b = _make("identity", _with_modalities(plans, src, tgt))
        assert "different modalities" in b.not_applicable()
        with pytest.raises(BaselineNotApplicable, match=f"source channel 0 \\({src}\\) and target \\({tgt}\\)"):
            b.fit(demo_planned[1], [])
    assert _make("identity", _with_modalities(plans, "CBCT", "CT")).not_applicable() is None
    assert _make("intensity_map", _with_modalities(plans, "MR", "CT")).not_applicable() is None


def test_identity_maps_the_source_into_the_target_scale(demo_planned) -> None:
    """MR -> MR: the source in its own per-case output scale, exported like any prediction (same shape and
    geometry as the raw case; inside the brain equal to the source's p0.5 -> -1, p99.5 -> +1 scaling)."""
    from autotrans.io import read_image

    plans, data_dir = demo_planned
    raw = data_dir.parents[2] / "autotrans_raw" / plans.dataset_name / "imagesTr"
    case = case_ids(data_dir)[0]
    source, geo = read_image(next(raw.glob(f"{case}_0000.*")))
    pred = _make("identity", plans).predict(source[None], geo, case)
    assert pred.shape == source.shape
    props = PreprocessedCase(data_dir, case).properties
    params = props["source_normalization_params"][0]  # what the preprocessing fitted on this case's source
    inside = source > np.percentile(source, 60)
    expected = plans.source_normalization[0].raw_to_output_scale(source, params)
    assert np.corrcoef(pred[inside], expected[inside])[0, 1] > 0.98
    assert np.abs(pred[inside] - expected[inside]).mean() < 0.05


def test_intensity_map_fitted_on_training_cases_only(demo_planned, tmp_path: Path) -> None:
    plans, data_dir = demo_planned
    cases = case_ids(data_dir)
    train, held_out = cases[1:], cases[0]
    fitted = _make("intensity_map", plans)
    fitted.fit(data_dir, train)
    p = fitted.params
    assert p["train_cases"] == train and held_out not in p["train_cases"] and p["bins"] > 50
    assert p["monotone"] is False and p["direction"] is None  # per-bin target medians by default
    assert np.all(np.diff(p["x"]) > 0) and min(p["y"]) >= -1 and max(p["y"]) <= 1
    # T2 -> FLAIR is not monotone: bright CSF turns dark, so the medians fall at the top of the T2 range
    assert max(p["y"]) - p["y"][-1] > 0.2
    # the monotone option (a histogram match fitted with the pairs) is monotone
    mono = get_baseline("intensity_map")(plans, plans.configuration(CONFIG), monotone=True)
    mono.fit(data_dir, train)
    dy = np.diff(mono.params["y"])
    assert (dy >= 0).all() if mono.params["direction"] == "increasing" else (dy <= 0).all()
    # scramble the held-out case's target: the map fitted on the training cases is the same, to the bit
    copy_dir = tmp_path / "data"
    shutil.copytree(data_dir, copy_dir)
    target = PreprocessedCase(copy_dir, held_out).load("target")
    (copy_dir / f"{held_out}_target.b2nd").unlink()
    _write_b2nd(np.random.default_rng(0).uniform(-1, 1, target.shape).astype(target.dtype),
                copy_dir / f"{held_out}_target.b2nd", list(plans.configuration(CONFIG).patch_size))
    refit = _make("intensity_map", plans)
    refit.fit(copy_dir, train)
    assert refit.params == p
    # ...while a different training set gives a different map (the fit depends on the data it sees)
    other = _make("intensity_map", plans)
    other.fit(copy_dir, cases[:1] + cases[2:])
    assert other.params["y"] != p["y"]
    # predictions interpolate the table and hold its end values beyond it
    src = np.array([[[[-5.0, p["x"][0], p["x"][-1], 9.0]]]], dtype=np.float32)
    out = fitted.predict_normalized(src)
    assert out[0, 0, 0] == out[0, 0, 1] == pytest.approx(p["y"][0]) and out[0, 0, 3] == pytest.approx(p["y"][-1])
    # saved and loaded back unchanged (baseline.json)
    fitted.save(tmp_path / "baseline.json")
    assert _make("intensity_map", plans).load(tmp_path / "baseline.json").params == p
