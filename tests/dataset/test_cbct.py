"""CBCT simulator on a real CT (TCIA CC-Tumor-Heterogeneity CCTH-A01, pelvis), small crops for speed.

The CT is the slab shipped in tests/data (whole axial 3 mm slices 100..106 of the CCTH-A01 CT, see its
ATTRIBUTION.md); the tests use its first four slices (100..104: femoral heads and bladder)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from autotrans.cli import simulate_cbct as cli
from autotrans.dataset.cbct import CBCTSimulationParams, build_simulated_cbct_dataset, simulate_cbct
from autotrans.dataset.format import discover_cases, load_dataset_json
from autotrans.errors import ConfigurationError
from autotrans.io import Geometry, read_geometry, read_image, write_image
from tests.paths import fixture_file

Z = slice(0, 4)  # of the slab: pelvis slices 100..104, femoral heads and bladder, many dense edges for streaks


@pytest.fixture(scope="module")
def ct_crop() -> tuple[np.ndarray, np.ndarray, Geometry]:
    ct, geo = read_image(fixture_file("ccth_a01/slab_ct.nii.gz"))
    mask, _ = read_image(fixture_file("ccth_a01/slab_body.nii.gz"), dtype=np.uint8)
    return ct[Z], mask[Z] > 0, geo


def _streak_energy(img: np.ndarray, ct: np.ndarray, region: np.ndarray) -> float:
    """Mean squared high-pass (Laplacian of Gaussian) response of the error image inside ``region``.

    Streaks and noise are high-frequency errors; smooth HU shifts (cupping, gain/offset) barely register.
    """
    hp = np.stack([ndimage.gaussian_laplace((s - c).astype(np.float64), 1.0) for s, c in zip(img, ct)])
    return float(np.mean(hp[region] ** 2))


def test_ideal_model_reproduces_ct_and_defaults_add_artefacts(ct_crop):
    ct, body, geo = ct_crop
    ideal = simulate_cbct(ct, geo.spacing_zyx, np.random.default_rng(0), CBCTSimulationParams.ideal())
    cbct = simulate_cbct(ct, geo.spacing_zyx, np.random.default_rng(0))
    assert cbct.shape == ct.shape and cbct.dtype == np.float32
    mae_ideal = np.abs(ideal - ct)[body].mean()
    mae = np.abs(cbct - ct)[body].mean()
    assert mae_ideal < 25.0, f"dense noise-free FBP should reproduce the CT, MAE {mae_ideal:.1f} HU"
    assert mae > 2.0 * mae_ideal and mae > 40.0, f"artefacts too weak: MAE {mae:.1f} vs ideal {mae_ideal:.1f}"
    # sparse views, noise and scatter streaks: far more high-frequency error than the ideal model
    assert _streak_energy(cbct, ct, body) > 3.0 * _streak_energy(ideal, ct, body)
    # HU stays plausible: the body's median HU (fat/soft tissue) within 100 HU of the CT's, bone still bright
    assert abs(np.median(cbct[body]) - np.median(ct[body])) < 100.0
    bone = ct > 500
    assert cbct[bone].mean() > cbct[body & ~bone].mean() + 250.0
    assert cbct.min() >= -1024.0 and cbct.max() <= 3071.0


def test_fewer_views_give_more_streaks_and_scatter_gives_cupping(ct_crop):
    ct, body, geo = ct_crop
    quiet = dict(photons_per_ray=1e12, scatter_to_primary=0.0, shading_hu=0.0, noise_hu=0.0, hu_gain=1.0, hu_offset=0.0)
    sparse = simulate_cbct(ct, geo.spacing_zyx, np.random.default_rng(1), CBCTSimulationParams(n_projections=30, **quiet))
    dense = simulate_cbct(ct, geo.spacing_zyx, np.random.default_rng(1), CBCTSimulationParams(n_projections=180, **quiet))
    assert _streak_energy(sparse, ct, body) > 2.0 * _streak_energy(dense, ct, body)
    quiet["scatter_to_primary"] = 1.0
    scatter = simulate_cbct(ct, geo.spacing_zyx, np.random.default_rng(1), CBCTSimulationParams(n_projections=180, **quiet))
    depth = ndimage.distance_transform_edt(body, sampling=geo.spacing_zyx)
    deep, shallow = body & (depth > 60), body & (depth < 20) & (depth > 5)
    shift = scatter - dense
    assert shift[deep].mean() < shift[shallow].mean() - 30.0, "scatter should darken the centre most (cupping)"


def test_seeded_and_deterministic(ct_crop):
    ct, _, geo = ct_crop
    small = ct[:2, 40:120, 30:130]
    a = simulate_cbct(small, geo.spacing_zyx, np.random.default_rng(7))
    b = simulate_cbct(small, geo.spacing_zyx, np.random.default_rng(7))
    c = simulate_cbct(small, geo.spacing_zyx, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_fov_and_gain_offset(ct_crop):
    ct, _, geo = ct_crop
    small = ct[:1]
    quiet = dict(photons_per_ray=1e12, scatter_to_primary=0.0, shading_hu=0.0, noise_hu=0.0)
    base = simulate_cbct(small, geo.spacing_zyx, np.random.default_rng(0), CBCTSimulationParams(hu_gain=1.0, hu_offset=0.0, **quiet))
    shifted = simulate_cbct(small, geo.spacing_zyx, np.random.default_rng(0), CBCTSimulationParams(hu_gain=0.9, hu_offset=-50.0, **quiet))
    inside = (base > -900) & (base < 2000)
    np.testing.assert_allclose(shifted[inside], 0.9 * base[inside] - 50.0, atol=0.05)
    fov = simulate_cbct(small, geo.spacing_zyx, np.random.default_rng(0), CBCTSimulationParams(fov_diameter_mm=200.0, **quiet))
    assert fov[0, 0, 0] == -1000.0 and fov[0, 79, 79] == pytest.approx(base[0, 79, 79] * 0.95 - 30.0, abs=1e-3)
    with pytest.raises(ConfigurationError, match="n_projections"):
        CBCTSimulationParams(n_projections=2)


def test_build_dataset_and_cli(ct_crop, tmp_path, monkeypatch):
    monkeypatch.setenv("autotrans_raw", str(tmp_path / "raw"))
    ct, body, geo = ct_crop
    ct_small, body_small = ct[:2, 20:140, 10:150], body[:2, 20:140, 10:150]
    # a real crop written with its true physical position (x/y crop shifts the origin too)
    origin = np.asarray(geo.origin) + np.asarray(geo.spacing) * [10, 20, Z.start]
    g = Geometry(size=ct_small.shape[::-1], spacing=geo.spacing, origin=tuple(origin), direction=geo.direction)
    write_image(ct_small.astype(np.int16), g, tmp_path / "cts" / "ccth.nii.gz")
    write_image(body_small.astype(np.uint8), g, tmp_path / "masks" / "ccth.nii.gz")
    out = build_simulated_cbct_dataset([("ccth", tmp_path / "cts" / "ccth.nii.gz", tmp_path / "masks" / "ccth.nii.gz")],
                                       5, "SimCBCT", seed=3)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["simulated"] is True and "simulated from real CT" in meta["description"]
    assert meta["simulation"]["seed"] == 3
    dj = load_dataset_json(out)
    assert dj.source_channels[0].modality == "CBCT" and dj.target.modality == "CT"
    found = discover_cases(out, dj)
    assert not found.problems and set(found.cases) == {"ccth"}
    for f in (found.cases["ccth"].images[0], found.cases["ccth"].target, found.cases["ccth"].mask):
        assert read_geometry(f).mismatch(g) is None
    target, _ = read_image(found.cases["ccth"].target)
    np.testing.assert_array_equal(target, ct_small)
    # CLI: same seed and case id give the same CBCT as the library
    rc = cli.main([str(tmp_path / "cts" / "ccth.nii.gz"), "-o", str(tmp_path / "one.nii.gz"), "--seed", "3"])
    assert rc == 0
    one, _ = read_image(tmp_path / "one.nii.gz")
    lib, _ = read_image(found.cases["ccth"].images[0])
    np.testing.assert_allclose(one, lib, atol=1e-3)
    # refusing to overwrite is one clear line on stderr and rc 1
    rc = cli.main([str(tmp_path / "cts"), "-d", "5", "-n", "SimCBCT"])
    assert rc == 1
    # dataset through the CLI with a folder of CTs, a mask folder and a parameter override
    rc = cli.main([str(tmp_path / "cts"), "-d", "6", "--mask-dir", str(tmp_path / "masks"), "--n-projections", "30",
                   "--fov-diameter-mm", "300"])
    assert rc == 0
    meta = json.loads((tmp_path / "raw" / "Dataset006_SimulatedCBCTtoCT" / "dataset.json").read_text())
    assert meta["simulated"] is True and meta["simulation"]["params"]["n_projections"] == 30
    mask, _ = read_image(tmp_path / "raw" / "Dataset006_SimulatedCBCTtoCT" / "masksTr" / "ccth.nii.gz")
    assert 0 < mask.sum() < body_small.sum()  # body mask cut to the 300 mm field of view


def test_cli_errors(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.nii.gz")]) == 1
    assert "not found" in capsys.readouterr().err
