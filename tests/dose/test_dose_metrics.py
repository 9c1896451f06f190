"""Gamma index (against pymedphys and analytic cases) and the DVH / dose-comparison metrics."""
from __future__ import annotations

import math

import numpy as np
import pymedphys  # test extra: the comparison below must fail, not skip, without it
import pytest
from scipy import ndimage

from autotrans.dose.gamma import gamma_index, gamma_pass_rate, pass_rate
from autotrans.dose.metrics import dose_comparison, dose_difference_map, dvh_metrics, vdose
from autotrans.errors import ConfigurationError

SPACING = (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def smooth_pair() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Two Gaussian dose lobes (max ~60 Gy) on 20x25x30 voxels of 3 mm; evaluated = shift 1.5 mm, +2 %, noise."""
    shape = (20, 25, 30)
    axes = tuple(np.arange(n) * SPACING[0] for n in shape)
    z, y, x = np.meshgrid(*axes, indexing="ij")
    c = [n * SPACING[0] / 2 for n in shape]
    ref = 60 * np.exp(-(((z - c[0]) / 15) ** 2 + ((y - c[1]) / 18) ** 2 + ((x - c[2]) / 21) ** 2) / 2)
    ref += 25 * np.exp(-(((z - c[0] - 6) / 8) ** 2 + ((y - c[1] + 9) / 6) ** 2 + ((x - c[2] - 12) / 9) ** 2) / 2)
    shifted = ndimage.shift(ref, (0, 0, 1.5 / SPACING[2]), order=3, mode="nearest")
    ev = shifted * 1.02 + np.random.default_rng(0).normal(0.0, 0.3, shape)
    return ref, ev, axes


@pytest.mark.parametrize("dose_percent,dta_mm", [(3, 3), (2, 2), (1, 1)])
def test_gamma_agrees_with_pymedphys(smooth_pair, dose_percent: float, dta_mm: float) -> None:
    ref, ev, axes = smooth_pair
    expected = pymedphys.gamma(axes, ref, axes, ev, dose_percent, dta_mm, lower_percent_dose_cutoff=10,
                               interp_fraction=10, max_gamma=2.0, local_gamma=False, random_subset=None,
                               interp_algo="scipy")
    ours = gamma_index(ref, ev, SPACING, dose_percent, dta_mm, cutoff_percent=10, max_gamma=2.0)
    evaluated = ~np.isnan(expected)
    np.testing.assert_array_equal(~np.isnan(ours), evaluated)  # same cut-off region
    diff = np.abs(ours[evaluated] - expected[evaluated])
    # both sample the same trilinear dose at DTA/10 steps, on a cubic lattice here and on spherical shells there
    assert diff.max() < 0.12 and np.percentile(diff, 95) < 0.04, (diff.max(), np.percentile(diff, 95))
    assert abs(pass_rate(ours) - pass_rate(expected)) <= 0.5
    assert 50 < pass_rate(ours) <= 100


def test_pruned_search_equals_exhaustive_lattice_search() -> None:
    """The shell/cell pruning must be exact: compare with trying every lattice offset on every voxel
    (anisotropic spacing, points beyond the grid excluded, gamma capped at max_gamma)."""
    rng = np.random.default_rng(1)
    shape, spacing = (9, 11, 13), np.array([3.0, 2.5, 2.0])
    ref = ndimage.gaussian_filter(rng.random(shape), 1.5)
    ref = (ref - ref.min()) / (ref.max() - ref.min()) * 100  # 0 .. 100 Gy, so the 30 % cut-off bites
    ev = ref * 1.03 + rng.normal(0, 0.4, shape)
    dose_percent, dta, max_gamma, fraction = 2.0, 2.5, 1.5, 4
    step = dta / fraction
    k = np.arange(-6, 7)
    lattice = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3) * step
    lattice = lattice[np.linalg.norm(lattice, axis=1) <= max_gamma * dta + 1e-9]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    best = np.full(shape, np.inf)
    for offset in lattice:
        pos = grid + (offset / spacing)[:, None, None, None]
        inside = np.all([(pos[a] > -1e-9) & (pos[a] < shape[a] - 1 + 1e-9) for a in range(3)], axis=0)
        value = ndimage.map_coordinates(ev, pos, order=1, mode="nearest")
        g = np.hypot((value - ref) / (dose_percent / 100 * ref.max()), np.linalg.norm(offset) / dta)
        best = np.where(inside, np.minimum(best, g), best)
    mask = ref >= 0.3 * ref.max()
    ours = gamma_index(ref, ev, tuple(spacing), dose_percent, dta, cutoff_percent=30, max_gamma=max_gamma,
                       interp_fraction=fraction)
    assert 0 < mask.sum() < mask.size and np.isnan(ours[~mask]).all()
    np.testing.assert_allclose(ours[mask], np.minimum(best, max_gamma)[mask], rtol=0, atol=1e-12)


def test_identical_doses_give_zero_gamma_and_full_pass(smooth_pair) -> None:
    ref = smooth_pair[0]
    gamma = gamma_index(ref, ref.copy(), SPACING, 2, 2)
    above = ref >= 0.1 * ref.max()
    assert np.all(gamma[above] == 0) and np.isnan(gamma[~above]).all()
    assert gamma_pass_rate(ref, ref, SPACING, 1, 1) == 100.0


@pytest.mark.parametrize("offset_percent,expected", [(2.0, 2 / 3), (5.0, 5 / 3), (8.0, 2.0)])
def test_uniform_dose_offset_gives_offset_over_criterion(offset_percent: float, expected: float) -> None:
    """No gradient anywhere: searching cannot help, gamma = offset / dose criterion (capped at max_gamma)."""
    ref = np.full((8, 9, 10), 50.0)
    gamma = gamma_index(ref, ref + offset_percent / 100 * 50.0, (2.0, 2.5, 3.0), 3, 3, max_gamma=2.0)
    np.testing.assert_allclose(gamma, expected, rtol=1e-12)


def test_shifted_ramp_matches_closed_form() -> None:
    """Ramp dose = 43 + x Gy/mm, evaluated shifted by s = 1.2 mm. Minimising (b(u - s)/D)^2 + (u/d)^2 gives
    gamma = s / sqrt(d^2 + (D/b)^2); with D = 3 % of 100 Gy = 3 Gy = b*d it is s / (d*sqrt(2)) at u = s/2,
    a lattice point (0.6 mm = 2 steps of 0.3 mm), and trilinear interpolation of a ramp is exact."""
    x = np.arange(20) * 3.0
    ref = np.broadcast_to(43.0 + x, (6, 7, 20)).copy()
    assert ref.max() == 100.0
    gamma = gamma_index(ref, ref - 1.2, SPACING, 3, 3)
    np.testing.assert_allclose(gamma[:, :, :-1], 1.2 / (3 * math.sqrt(2)), rtol=1e-9)
    # last column: the matching point lies beyond the grid, which is never extrapolated
    assert np.all(gamma[:, :, -1] > gamma[:, :, 0])


def test_mask_and_cutoff_restrict_the_evaluated_voxels(smooth_pair) -> None:
    ref, ev, _ = smooth_pair
    mask = np.zeros(ref.shape, bool)
    mask[5:15, 5:20, 5:25] = True
    full = gamma_index(ref, ev, SPACING, 2, 2)
    masked = gamma_index(ref, ev, SPACING, 2, 2, mask=mask)
    assert np.isnan(masked[~mask]).all()
    np.testing.assert_array_equal(masked[mask], full[mask])  # the search still uses the whole evaluated grid
    assert pass_rate(full, mask) == pass_rate(masked)
    assert math.isnan(pass_rate(np.full((2, 2, 2), np.nan)))


def test_gamma_rejects_invalid_inputs() -> None:
    ref = np.ones((4, 4, 4))
    with pytest.raises(ConfigurationError):
        gamma_index(ref, np.ones((4, 4, 5)), SPACING, 3, 3)
    with pytest.raises(ConfigurationError):
        gamma_index(ref, ref, (3.0, 3.0), 3, 3)
    with pytest.raises(ConfigurationError):
        gamma_index(ref, ref, SPACING, 0, 3)
    with pytest.raises(ConfigurationError):
        gamma_index(ref, np.where(ref > 0, np.nan, ref), SPACING, 3, 3)
    with pytest.raises(ConfigurationError):
        gamma_index(np.zeros((4, 4, 4)), ref, SPACING, 3, 3)


def _ramp_cube() -> tuple[np.ndarray, np.ndarray]:
    """Doses 0.00 .. 9.99 Gy (1000 distinct values) in a 10^3 cube, inside a 12^3 grid of 100 Gy background."""
    dose = np.full((12, 12, 12), 100.0)
    dose[1:11, 1:11, 1:11] = (np.arange(1000) / 100).reshape(10, 10, 10)
    mask = np.zeros(dose.shape, bool)
    mask[1:11, 1:11, 1:11] = True
    return dose, mask


def test_dvh_metrics_on_a_linear_ramp() -> None:
    dose, mask = _ramp_cube()
    m = dvh_metrics(dose, mask, voxel_volume_cc=0.027)
    # D_x = (100 - x)th percentile, linear between order statistics at position (100 - x)/100 * 999
    assert m["D50"] == pytest.approx(4.995)  # the mid value of 0 .. 9.99
    assert m["D98"] == pytest.approx(0.02 * 999 / 100)
    assert m["D95"] == pytest.approx(0.05 * 999 / 100)
    assert m["D2"] == pytest.approx(0.98 * 999 / 100)
    assert m["Dmean"] == pytest.approx(4.995) and m["Dmax"] == 9.99 and m["Dmin"] == 0.0
    assert m["n_voxels"] == 1000 and m["volume_cc"] == pytest.approx(27.0)
    assert dvh_metrics(dose, mask)["volume_cc"] is None


def test_vdose_counts_voxels_at_or_above_threshold() -> None:
    dose, mask = _ramp_cube()
    assert vdose(dose, mask, 5.0) == 50.0  # 5.00 .. 9.99 Gy, threshold inclusive
    assert vdose(dose, mask, 20.0) == 0.0
    assert vdose(dose, mask, 0.0) == 100.0
    with pytest.raises(ConfigurationError):
        vdose(dose, np.zeros_like(mask), 5.0)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 60 Gy spherical target in a body cylinder, 16^3 voxels of 3 mm, smooth fall-off."""
    z, y, x = np.meshgrid(*(np.arange(16) - 7.5,) * 3, indexing="ij")
    r = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    dose = 62.0 / (1 + np.exp((r - 4.0) / 1.2))
    target = r <= 3.5
    body = np.sqrt(y ** 2 + x ** 2) <= 7.0
    return dose, target, body


def test_dose_comparison_of_identical_doses_is_all_zero(phantom) -> None:
    dose, target, body = phantom
    out = dose_comparison(dose, dose.copy(), SPACING, target, body, prescription_gy=60.0)
    for key in ("gamma_3%3mm", "gamma_2%2mm", "gamma_1%1mm"):
        assert out[key] == 100.0 and out[f"{key}_target"] == 100.0
    assert "body_V5_diff" in out and "body_V20_diff" in out
    diffs = {k: v for k, v in out.items() if not k.startswith("gamma_")}
    assert all(v == 0.0 for v in diffs.values()), diffs
    low = dose_comparison(dose, dose, SPACING, target, body, prescription_gy=10.0, criteria=((3, 3),))
    assert "body_V5_diff" in low and "body_V20_diff" not in low and "gamma_2%2mm" not in low


def test_dose_comparison_of_a_uniform_offset(phantom) -> None:
    dose, target, body = phantom
    ev = dose + 1.2  # 2 % of the 60 Gy prescription everywhere
    out = dose_comparison(dose, ev, SPACING, target, body, prescription_gy=60.0, criteria=((3, 3),))
    for name in ("D98", "D95", "D50", "D2", "Dmean"):
        assert out[f"target_{name}_diff_gy"] == pytest.approx(1.2)
        assert out[f"target_{name}_diff_pct"] == pytest.approx(2.0)
    for key in ("body_Dmean_diff", "body_mae", "cutoff_mae", "body_max_abs_diff"):
        assert out[f"{key}_gy"] == pytest.approx(1.2) and out[f"{key}_pct"] == pytest.approx(2.0)
    assert out["body_V5_diff"] >= 0 and out["body_V20_diff"] >= 0  # more dose: V_x can only grow
    assert out["gamma_3%3mm"] == 100.0  # 1.2 Gy < 3 % of 62 Gy even without searching
    np.testing.assert_allclose(dose_difference_map(dose, ev), 1.2)


def test_dose_comparison_rejects_bad_inputs(phantom) -> None:
    dose, target, body = phantom
    with pytest.raises(ConfigurationError):
        dose_comparison(dose, dose, SPACING, target, body, prescription_gy=0.0)
    with pytest.raises(ConfigurationError):
        dose_comparison(dose, dose, SPACING, np.zeros_like(target), body, prescription_gy=60.0)
    with pytest.raises(ConfigurationError):
        dose_difference_map(dose, dose[:-1])
