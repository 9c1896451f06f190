"""The whole chain with exact test generators: preprocessing -> windows -> blending -> inversion -> export."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_erosion

from autotrans.inference import load_predictor, predict_folder
from autotrans.io import read_geometry, read_image
from autotrans.planning.plans import Plans
from tests.inference.conftest import PYRADIOMICS, REMIND_T1C, smooth_ct
from tests.inference.helpers import make_model
from tests.paths import fixture_file



def _rotation() -> tuple[float, ...]:
    """A proper oblique rotation (about z by 20 degrees, then x by 10 degrees)."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def _write(path: Path, arr: np.ndarray, spacing, origin, direction) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return img


def _assert_same_geometry(a: Path, b: Path) -> None:
    """Bit-identical size, spacing, origin and direction, as ITK reads them."""
    ga, gb = read_geometry(a), read_geometry(b)
    assert ga.size == gb.size
    np.testing.assert_array_equal(ga.spacing, gb.spacing)
    np.testing.assert_array_equal(ga.origin, gb.origin)
    np.testing.assert_array_equal(ga.direction, gb.direction)


def test_identity_chain_reproduces_ct_in_hu(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path) -> None:
    """Same spacing as the plan: resampling is a no-op, so HU come back exactly (within the window)."""
    make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}})
    src = next((cbct_plan.parents[1] / "autotrans_raw" / cbct_plan.name / "imagesTr").glob("*_0000.nii.gz"))
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "pat1_0000.nii.gz").write_bytes(src.read_bytes())
    predictor = load_predictor(device="cpu")
    predict_folder(predictor, inp, tmp_path / "out", num_processes_preprocessing=0, num_processes_export=0)
    out = tmp_path / "out" / "pat1.nii.gz"
    _assert_same_geometry(src, out)
    x, _ = read_image(src)
    y, _ = read_image(out)
    body = x > -500  # the crop is the body's bounding box; outside it the CT background -1024 HU
    np.testing.assert_allclose(y[body], np.clip(x[body], -1024, 3071), atol=0.05)
    assert y.min() >= -1024 - 1e-3


def test_identity_chain_other_spacing_oblique(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path) -> None:
    """Spacing unlike the plan's, oblique direction, odd origin: geometry exact, HU within resampling tolerance."""
    make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}, "1": {}})
    arr = smooth_ct((30, 52, 47))
    src = tmp_path / "in" / "obl_0000.mha"
    _write(src, arr, (4.3, 5.1, 7.7), (-123.25, 17.5, 1001.125), _rotation())
    predictor = load_predictor(device="cpu", save_uncertainty=True)
    predict_folder(predictor, src.parent, tmp_path / "out", num_processes_preprocessing=1, num_processes_export=1)
    out = tmp_path / "out" / "obl.mha"
    _assert_same_geometry(src, out)
    y, _ = read_image(out)
    body = binary_erosion(arr > -300, iterations=2)  # the body's edge is sharper than the 6 mm plan grid
    err = np.abs(y[body] - arr[body])
    assert np.median(err) < 5 and np.percentile(err, 99) < 40, (np.median(err), np.percentile(err, 99))
    assert np.abs(y - arr).max() > 1  # resampling really happened (the check above is not vacuous)
    std, _ = read_image(tmp_path / "out" / "obl_std.mha")
    assert np.abs(std).max() < 1e-3  # two identical folds agree everywhere


def test_two_folds_mean_and_std_in_hu(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path) -> None:
    """Constant folds a, b (normalized): mean (a+b)/2 inverted once; std |a-b|/2 in HU; no seams."""
    make_model(roots["autotrans_results"], cbct_plan, "test_constant", {"0": {"value": -0.2}, "1": {"value": 0.4}})
    arr = smooth_ct((33, 41, 70))
    src = tmp_path / "in" / "c_0000.nii.gz"
    _write(src, arr, (6.0, 6.0, 6.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    predictor = load_predictor(device="cpu", save_uncertainty=True)
    predict_folder(predictor, src.parent, tmp_path / "out", num_processes_preprocessing=0, num_processes_export=0)
    y, _ = read_image(tmp_path / "out" / "c.nii.gz")
    std, _ = read_image(tmp_path / "out" / "c_std.nii.gz")
    hu = lambda v: (v + 1) * (3071 + 1024) / 2 - 1024  # noqa: E731
    inside = y > -1024 + 1
    assert inside.mean() > 0.3
    np.testing.assert_allclose(y[inside], hu(0.1), atol=0.05)  # a constant volume: no seams
    np.testing.assert_allclose(std[inside], (hu(0.4) - hu(-0.2)) / 2, atol=0.05)
    np.testing.assert_allclose(std[~inside], 0, atol=1e-6)


@pytest.mark.parametrize("mirror_axes,tta,flat", [([2], True, True), ([2], False, False), (None, True, False)])
def test_mirror_tta_only_where_trained(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path,
                                       mirror_axes, tta: bool, flat: bool) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_ramp", {"0": {}}, mirror_axes=mirror_axes)
    predictor = load_predictor(device="cpu", tta=tta)
    data = np.zeros((1, 48, 48, 64), dtype=np.float32)  # exactly one patch
    pred = predictor.predict_folds(data, "x")[0]
    spread = float(pred.max() - pred.min())
    assert (spread < 1e-6) == flat, spread


def test_stochastic_seed_and_steps(roots: dict[str, Path], cbct_plan: Path) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_noise", {"0": {}})
    data = np.zeros((1, 50, 40, 66), dtype=np.float32)
    a = load_predictor(device="cpu", seed=3).predict_folds(data, "case1")[0]
    b = load_predictor(device="cpu", seed=3).predict_folds(data, "case1")[0]
    c = load_predictor(device="cpu", seed=4).predict_folds(data, "case1")[0]
    d = load_predictor(device="cpu", seed=3).predict_folds(data, "case2")[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)
    loud = load_predictor(device="cpu", seed=3, steps=10).predict_folds(data, "case1")[0]
    assert loud.std() > 5 * a.std()  # --steps reached the family as overrides['sampling_steps']


def test_python_api_sitk_image_in_and_out(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}})
    img = sitk.GetImageFromArray(smooth_ct((20, 30, 25)))
    img.SetSpacing((5.5, 6.5, 7.0))
    img.SetOrigin((3.0, -4.0, 5.0))
    img.SetDirection(_rotation())
    out = load_predictor(device="cpu").predict_image(img)
    assert out.GetSize() == img.GetSize() and out.GetSpacing() == img.GetSpacing()
    assert out.GetOrigin() == img.GetOrigin() and out.GetDirection() == img.GetDirection()
    a, b = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(out)
    assert np.median(np.abs(a - b)[a > -300]) < 10
    sitk.WriteImage(img, str(tmp_path / "x.mha"))  # a path works the same way
    from_path = load_predictor(device="cpu").predict_image(tmp_path / "x.mha")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_path), b)
    assert from_path.GetDirection() == img.GetDirection()


def test_remind_oblique_head_geometry_exact(roots: dict[str, Path], remind_plan: Path, tmp_path: Path) -> None:
    """A real ReMIND T1c file as input (the shipped 68 x 59 x 55 crop: oblique, origin far from 0, larger than
    the plan's patch, so several windows are blended)."""
    make_model(roots["autotrans_results"], remind_plan, "test_identity", {"0": {}})
    src = tmp_path / "in" / "head_0000.nii.gz"
    src.parent.mkdir()
    shutil.copy(fixture_file(REMIND_T1C), src)
    predict_folder(load_predictor(device="cpu"), src.parent, tmp_path / "out", num_processes_preprocessing=0,
                   num_processes_export=0)
    out = tmp_path / "out" / "head.nii.gz"
    _assert_same_geometry(src, out)
    g = read_geometry(src)
    assert abs(g.direction[1]) > 0.01 and any(abs(o) > 1 for o in g.origin)  # really oblique, non-zero origin
    x, _ = read_image(src)
    y, _ = read_image(out)
    fg = x != 0
    assert np.corrcoef(x[fg], y[fg])[0, 1] > 0.99  # MR stays in the plan's normalized scale, monotone in x
    # the identity passes the source's network-space values (about [-1.5, 2.5]) into the target's output scale
    norm = Plans.load(remind_plan / "autotransPlans.json").target_normalization
    lo, hi = (float(norm.to_output_scale(np.float32(v))) for v in (-1.5, 2.5))
    assert lo < y.min() and y.max() < hi


def test_pyradiomics_anisotropic_nrrd_geometry_exact(roots: dict[str, Path], nrrd_plan: Path, tmp_path: Path) -> None:
    """A real pyradiomics brain NRRD as input (brain2, all 23 slices of 74 x 66 voxels at 0.78 x 0.78 x 6.5 mm;
    the plan was made from brain1)."""
    make_model(roots["autotrans_results"], nrrd_plan, "test_identity", {"0": {}})
    src = tmp_path / "in" / "b_0000.nrrd"
    src.parent.mkdir()
    shutil.copy(fixture_file(PYRADIOMICS.format("brain2")), src)
    predict_folder(load_predictor(device="cpu"), src.parent, tmp_path / "out", num_processes_preprocessing=0,
                   num_processes_export=0)
    out = tmp_path / "out" / "b.nrrd"
    _assert_same_geometry(src, out)
    x, _ = read_image(src)
    y, _ = read_image(out)
    fg = x != 0
    assert np.corrcoef(x[fg], y[fg])[0, 1] > 0.99


def test_folds_are_averaged_in_physical_units() -> None:
    """log1p PET: folds predicting 5 and 15 SUV average to 10 SUV; the inverse of their normalized mean would give
    8.8 SUV (biased low). The std map is in SUV as well."""
    from autotrans.inference.predictor import export_ensemble
    from autotrans.preprocessing.normalization import SUVNormalization

    norm = SUVNormalization(ceiling=50.0, transform="log1p")
    res = {"order": 3, "order_z": 1, "anisotropy_threshold": 3}
    plans = Plans({"source_channels": [{"name": "CT", "modality": "CT"}], "target": {"name": "PET", "modality": "PET"},
                   "normalization": {"source": [{"scheme": "window"}], "target": norm.to_dict()},
                   "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                   "configurations": {"3d_fullres": {"spacing": [2.0, 2.0, 2.0],
                                                     "resampling": {"target": res}}}})
    shape = [6, 7, 8]
    props = {"transpose_forward": [0, 1, 2], "shape_after_crop": shape, "spacing_zyx": [2.0, 2.0, 2.0],
             "shape_before_crop": shape, "crop_bbox": [[0, s] for s in shape], "case": "c"}
    folds = [np.full(shape, norm.forward(np.float32(v)), dtype=np.float32) for v in (5.0, 15.0)]
    mean, std = export_ensemble(folds, props, plans, plans.configuration("3d_fullres"), True, True)
    np.testing.assert_allclose(mean, 10.0, rtol=1e-4)
    np.testing.assert_allclose(std, 5.0, rtol=1e-4)
    assert float(norm.inverse(np.mean(folds, axis=0)).mean()) == pytest.approx(8.8, abs=0.05)  # what it was
