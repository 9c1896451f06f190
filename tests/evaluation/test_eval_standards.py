"""Standards: hand-computed tiny cases, parity with the straightforward implementation on real data,
and clear errors for bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autotrans.errors import AutotransError, ConfigurationError
from autotrans.evaluation import evaluate_case
from autotrans.evaluation.standards import autotrans_standard, brasyn, synthrad2023, synthrad2025
from tests.evaluation.evalref_impl import (
    load_torchmetrics_ssim,
    ref_autotrans,
    ref_brasyn,
    ref_synthrad2023,
    ref_synthrad2025,
)
from tests.evaluation.helpers import perturb

RTOL = 1e-6


def assert_rel(got: dict[str, float], want: dict[str, float], rtol: float = RTOL) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rtol, abs=0), k


# ---- hand-computed tiny cases -------------------------------------------------------------------

def test_constant_images_hand_values() -> None:
    """Constant 0 HU vs 100 HU in a full mask: variances vanish, SSIM is the luminance term."""
    ref = np.zeros((12, 12, 12), np.float32)
    pred = np.full_like(ref, 100.0)
    mask = np.ones(ref.shape, bool)
    got = synthrad2023(ref, pred, mask)
    a, b, c1 = 1024.0, 1124.0, (0.01 * 4024) ** 2
    assert got["mae"] == pytest.approx(100.0)
    assert got["psnr"] == pytest.approx(10 * math.log10(4024**2 / 100**2))
    assert got["ssim"] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def test_masking_and_clipping_hand_values() -> None:
    """MAE ignores voxels outside the mask and is not clipped; PSNR clips both images first."""
    ref = np.zeros((10, 10, 10), np.float32)
    pred = np.zeros_like(ref)
    mask = np.zeros(ref.shape, bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels
    pred[5, 5, 5] = 5000.0  # inside: error 5000, clipped error 3000 (2023) / 3071 (2025)
    pred[0, 0, 0] = 999.0  # outside the mask: ignored
    g23, g25 = synthrad2023(ref, pred, mask), synthrad2025(ref, pred, mask)
    assert g23["mae"] == pytest.approx(5000 / 216) and g25["mae"] == pytest.approx(5000 / 216)
    assert g23["psnr"] == pytest.approx(10 * math.log10(4024**2 / (3000**2 / 216)))
    assert g25["psnr"] == pytest.approx(10 * math.log10(4095**2 / (3071**2 / 216)))


def test_identical_images_score_one() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 300, (20, 24, 28)).astype(np.float32)
    mask = np.zeros(ref.shape, bool)
    mask[3:17, 4:20, 5:25] = True
    assert synthrad2023(ref, ref, mask)["ssim"] == pytest.approx(1.0, abs=1e-12)
    got = synthrad2025(ref, ref, mask)
    assert got["ms_ssim"] == pytest.approx(1.0, abs=1e-12) and got["mae"] == 0 and math.isinf(got["psnr"])


# ---- parity with the straightforward implementation on real volumes ----------------------------

def test_synthrad_parity_on_real_ct(petct: dict) -> None:
    ct, mask = petct["ct"], petct["mask"]
    pred = perturb(ct, 40.0)
    assert_rel(synthrad2023(ct, pred, mask), ref_synthrad2023(ct, pred, mask))
    assert_rel(synthrad2025(ct, pred, mask), ref_synthrad2025(ct, pred, mask))


def test_synthrad_parity_on_real_pet_in_hu_like_units(petct: dict) -> None:
    """PET content (hot spots, cold background) scaled into the CT range exercises other structures."""
    pet = petct["pet"] * 150.0 - 1000.0
    pred = perturb(pet, 60.0, seed=3)
    mask = petct["mask"]
    assert_rel(synthrad2023(pet, pred, mask), ref_synthrad2023(pet, pred, mask))
    assert_rel(synthrad2025(pet, pred, mask), ref_synthrad2025(pet, pred, mask))


def test_autotrans_parity_on_real_pet(petct: dict) -> None:
    pet, mask = petct["pet"], petct["mask"]
    pred = np.clip(perturb(pet, 0.3, seed=5), 0, None)
    hi = float(np.percentile(pet[mask], 99.9))
    res = evaluate_case(pet, pred, mask, modality="PET")
    assert res["info"]["range"] == [0.0, pytest.approx(hi)]
    assert res["info"]["range_source"] == "reference masked p99.9"
    assert_rel(res["metrics"], ref_autotrans(pet, pred, mask, 0.0, hi))
    fixed = evaluate_case(pet, pred, mask, modality="PET", suv_ceiling=10.0)
    assert fixed["info"]["range"] == [0.0, 10.0] and fixed["info"]["range_source"] == "--suv_ceiling"


def test_autotrans_ct_equals_synthrad2025_where_defined(petct: dict) -> None:
    """Where both volumes lie inside SynthRAD2025's range (as every exported CT prediction does), the unclipped
    autotrans standard and the clipping challenge code agree."""
    lo, hi = -1024.0, 3071.0
    ct, mask = np.clip(petct["ct"], lo, hi), petct["mask"]
    pred = np.clip(perturb(ct, 40.0, seed=1), lo, hi)
    a, s = autotrans_standard(ct, pred, mask, lo, hi), synthrad2025(ct, pred, mask)
    assert a["mae"] == s["mae"] and a["psnr"] == pytest.approx(s["psnr"], rel=1e-12)
    assert a["ms_ssim"] == pytest.approx(s["ms_ssim"], rel=1e-12)


def _blob_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth positive volume in [0, 10] with a hot blob peaking at 30 (3x hi = 10), and its mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:24, :24, :24].astype(np.float64)
    base = 2.0 + 0.3 * np.sin(x / 3.0) + 0.2 * np.cos(y / 4.0) + 0.05 * rng.standard_normal((24, 24, 24))
    blob = 28.0 * np.exp(-((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2) / (2 * 2.0**2))
    mask = np.zeros(base.shape, bool)
    mask[2:22, 2:22, 2:22] = True
    return base + blob, mask


def test_autotrans_scores_reference_values_above_hi() -> None:
    """A prediction that stops at hi where the reference is hotter is penalised by PSNR and SSIM too, not only
    by MAE: nothing is clipped, [lo, hi] only sets the peak and the data range."""
    lo, hi = 0.0, 10.0
    ref, mask = _blob_volume()
    assert (ref[mask] > hi).sum() > 20
    capped = np.minimum(ref, hi)  # what a clipping standard would have compared against
    got = autotrans_standard(ref, capped, mask, lo, hi)
    assert got["mae"] > 0 and math.isfinite(got["psnr"])  # a clipping standard: PSNR inf, SSIM 1
    assert got["ssim"] < 0.999 and got["ms_ssim"] < 0.999
    # the same prediction against the clipped reference would look perfect: the reference is not clipped
    perfect = autotrans_standard(capped, capped, mask, lo, hi)
    assert math.isinf(perfect["psnr"]) and perfect["ssim"] == pytest.approx(1.0, abs=1e-12)
    # and a prediction that reproduces the hot blob scores better on every metric than one that stops at hi
    close = ref + 0.05 * np.random.default_rng(1).standard_normal(ref.shape)
    better = autotrans_standard(ref, close, mask, lo, hi)
    assert better["mae"] < got["mae"] and better["psnr"] > got["psnr"] and better["ssim"] > got["ssim"]
    assert_rel(got, ref_autotrans(ref, capped, mask, lo, hi))


def test_autotrans_psnr_is_mse_on_the_same_unclipped_errors() -> None:
    lo, hi = -1.0, 1.0  # e.g. the MR output scale, with a reference lesion at +2.5
    ref, mask = _blob_volume(seed=3)
    ref = ref / 12.0 - 1.0
    pred = ref + 0.1 * np.random.default_rng(4).standard_normal(ref.shape)
    pred[12, 12, 12] = -1.5  # far below lo as well
    got = evaluate_case(ref, pred, mask, modality="MR", value_range=(lo, hi), range_source="plan")["metrics"]
    err = ref[mask] - pred[mask]
    assert got["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-12)
    assert got["mse"] == pytest.approx(np.mean(err**2), rel=1e-12)
    assert got["psnr"] == pytest.approx(10 * math.log10((hi - lo) ** 2 / got["mse"]), rel=1e-12)


def test_mr_range_default_and_recorded(flair: dict) -> None:
    img = flair["img"]
    pred = perturb(img, 5.0)
    res = evaluate_case(img, pred, None, modality="MR")
    lo, hi = np.percentile(img, [0.5, 99.5])
    assert res["info"]["range"] == [pytest.approx(lo), pytest.approx(hi)]
    assert_rel(res["metrics"], ref_autotrans(img, pred, np.ones(img.shape, bool), float(lo), float(hi)))
    res2 = evaluate_case(img, pred, None, modality="MR", value_range=(0, 500), range_source="plan")
    assert res2["info"]["range"] == [0.0, 500.0] and res2["info"]["range_source"] == "plan"


def test_brasyn_matches_torchmetrics(flair: dict) -> None:
    if load_torchmetrics_ssim() is None:
        pytest.skip("torchmetrics not installed (pip install torchmetrics) - needed for the BraSyn parity test")
    crop = (slice(0, 24), slice(9, 33), slice(16, 40))  # ~250 lesion voxels; float64 conv3d in torch is slow: keep it small
    img, les = flair["img"][crop], flair["lesions"][crop]
    assert les.any()
    pred = perturb(img, 8.0, seed=2)
    assert_rel(brasyn(img, pred, les, "c"), ref_brasyn(img, pred, les))


# ---- bad input -----------------------------------------------------------------------------------

def test_bad_inputs_name_the_case() -> None:
    a = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(AutotransError, match="caseA: mask is empty"):
        evaluate_case(a, a, np.zeros_like(a), case="caseA")
    with pytest.raises(AutotransError, match="caseB: prediction shape"):
        evaluate_case(a, a[:4], case="caseB")
    bad = a.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(AutotransError, match="caseC: prediction contains NaN"):
        evaluate_case(a, bad, case="caseC")
    with pytest.raises(AutotransError, match="caseD: standard brasyn needs a lesion map"):
        evaluate_case(a, a, modality="MR", standard="brasyn", case="caseD")
    with pytest.raises(ConfigurationError, match="scores CT targets"):
        evaluate_case(a, a, modality="PET", standard="synthrad2023")
    with pytest.raises(AutotransError, match="caseE: empty intensity range"):
        evaluate_case(a, a, modality="MR", case="caseE")
