"""Lesion-level metrics: hand cases for the shape measures, and the size effect they must reveal."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from autotrans.evaluation import evaluate_case, stratify
from autotrans.evaluation.lesions import _sphere_kernel, dice, hd95, lesion_metrics, size_class
from tests.evaluation.helpers import perturb


def test_dice_and_hd95_hand_cases() -> None:
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[5, 5, 2] = True
    b[5, 5, 5] = True
    assert dice(a, b) == 0.0
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(6.0)  # 3 voxels along x at 2 mm
    b[5, 5, 2] = True
    assert dice(a, b) == pytest.approx(2 * 1 / 3)
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a), (1, 1, 1)))


def test_size_classes_and_peak_sphere_volume() -> None:
    assert [size_class(v) for v in (0.1, 0.5, 4.99, 5.0, 30)] == ["<0.5 mL", "0.5-5 mL", "0.5-5 mL", ">5 mL", ">5 mL"]
    k = _sphere_kernel((1.0, 1.0, 1.0))
    assert k.sum() / 1000.0 == pytest.approx(1.0, rel=0.05)  # a 1 mL sphere on a 1 mm grid
    assert k.shape == (13, 13, 13)


def _pet_phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """SUV 1 background with SUV 8 spheres of ~0.1, ~1.8 and ~14 mL on a 2 mm grid."""
    shape = (40, 64, 96)
    zz, yy, xx = np.indices(shape)
    ref = np.ones(shape, np.float32)
    lesions = np.zeros(shape, np.uint8)
    for (cz, cy, cx), r in (((20, 32, 15), 1.5), ((20, 32, 45), 3.8), ((20, 32, 75), 7.5)):
        ball = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        ref[ball] = 8.0
        lesions[ball] = 1
    return ref, lesions, (2.0, 2.0, 2.0)


def test_pet_lesions_show_small_lesions_are_hardest() -> None:
    """A blurred (partial-volume) prediction: uptake errors and shape disagreement grow as lesions shrink."""
    ref, lesions, spacing = _pet_phantom()
    pred = ndi.gaussian_filter(ref, 1.5)
    rows = sorted(lesion_metrics(ref, pred, lesions, np.ones(ref.shape, bool), "PET", spacing),
                  key=lambda r: r["volume_ml"])
    assert [r["size_class"] for r in rows] == ["<0.5 mL", "0.5-5 mL", ">5 mL"]
    assert rows[0]["suvmax_ref"] == 8.0 and rows[0]["suvpeak_ref"] < 8.0  # the 1 mL sphere overhangs the lesion
    assert rows[2]["suvpeak_ref"] == pytest.approx(8.0)
    err = [abs(r["suvmax_rel_err"]) for r in rows]
    assert err[0] > err[1] > err[2] >= 0
    assert all(r["suvmax_rel_err"] < 0 for r in rows)  # blurring lowers the maximum
    assert rows[0]["dice"] < rows[2]["dice"] and rows[2]["dice"] > 0.8
    strata = stratify(rows)
    assert strata["<0.5 mL"]["abs_suvmax_rel_err"]["mean"] > strata[">5 mL"]["abs_suvmax_rel_err"]["mean"]
    assert strata["all"]["n"] == 3


def test_pet_perfect_prediction_has_zero_errors() -> None:
    ref, lesions, spacing = _pet_phantom()
    rows = lesion_metrics(ref, ref.copy(), lesions, np.ones(ref.shape, bool), "PET", spacing)
    for r in rows:
        assert r["mae"] == 0 and r["suvmax_rel_err"] == 0 and r["suvpeak_rel_err"] == 0
        assert r["dice"] == 1.0 and r["hd95_mm"] == 0.0
        assert r["volume_ml"] == pytest.approx(r["voxels"] * 8 / 1000)


def test_mr_lesions_contrast_and_k_recorded(flair: dict) -> None:
    img, les = flair["img"], flair["lesions"]
    flat = img.copy()
    flat[les] = np.median(img[~les])  # a prediction that erased the lesions
    res = evaluate_case(img, flat, None, les, "MR", spacing=flair["spacing"], mr_k=2.0)
    rows = res["lesions"]
    assert res["info"]["mr_k"] == 2.0 and res["info"]["lesion_count"] == len(rows) > 3
    big = max(rows, key=lambda r: r["voxels"])
    assert big["contrast_ref"] > 0 and big["contrast_rel_err"] < -0.5  # contrast mostly lost
    assert big["dice"] < 0.5
    good = evaluate_case(img, perturb(img, 2.0), None, les, "MR", spacing=flair["spacing"])["lesions"]
    gbig = max(good, key=lambda r: r["voxels"])
    assert abs(gbig["contrast_rel_err"]) < abs(big["contrast_rel_err"]) and gbig["dice"] > big["dice"]


def test_ct_lesions_report_volume_and_mae_only() -> None:
    ref = np.zeros((12, 12, 12), np.float32)
    les = np.zeros(ref.shape, np.uint8)
    les[2:4, 2:4, 2:4] = 1
    les[8, 8, 8] = 1  # touches the first lesion only diagonally? no: separate component
    les[4, 4, 4] = 1  # 26-connected to the first cube through its corner
    pred = ref + 10
    rows = evaluate_case(ref, pred, None, les, "CT", spacing=(1, 1, 1))["lesions"]
    assert [r["voxels"] for r in rows] == [9, 1]
    assert all(r["mae"] == 10 for r in rows) and "dice" not in rows[0]
