"""Latent-family inference: scaled sliding windows, encode -> shared-noise latent window -> decode, timings.json.

The fake latent family is exact so any deviation is the inference code's fault: its encoder is average pooling
by ``f`` (channel 0 repeated to ``Lc`` channels), its decoder nearest (or trilinear) upsampling of channel 0,
and its sampler ``z_source + noise_scale * noise``. With nearest decoding the whole chain then equals
``upsample(pool(padded volume) + noise_scale * noise[0])`` computed on the whole volume at once: any seam, any
misaligned tile or any per-tile noise would show up as a difference.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from autotrans.families.base import Family, register_family
from autotrans.inference import load_predictor, predict_folder
from autotrans.inference.latent import latent_padding, predict_latent_volume
from autotrans.inference.windows import sliding_window
from tests.inference.conftest import smooth_ct
from tests.inference.helpers import _Holder, make_model


@register_family("test_latent")
class FakeLatentFamily(Family):
    """The latent protocol with exact, cheap operations (see the module docstring)."""

    latent = True
    stochastic = True

    def build(self) -> None:
        self.net = _Holder(0.0).to(self.device)
        self.downsampling_factor = int(self.overrides.get("factor", 4))
        self.latent_channels = int(self.overrides.get("latent_channels", 2))
        self.latent_patch_size = list(self.overrides.get("latent_patch", [4, 4, 4]))
        self.sampling_steps = int(self.hparam("sampling_steps", 3))
        self.noise_scale = float(self.overrides.get("noise_scale", 0.0))
        self.decode_mode = str(self.overrides.get("decode_mode", "nearest"))
        self.needs_source_image = bool(self.overrides.get("needs_source_image", False))
        self.calls: dict[str, list[tuple[int, ...]]] = {"encode": [], "sample": [], "decode": []}

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net}

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise AssertionError("latent families are predicted through predict_latent_volume")

    def encode_source(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["encode"].append(tuple(x.shape))
        return F.avg_pool3d(x[:, :1], self.downsampling_factor).repeat(1, self.latent_channels, 1, 1, 1)

    def decode_target(self, z: torch.Tensor) -> torch.Tensor:
        self.calls["decode"].append(tuple(z.shape))
        kw = {"align_corners": False} if self.decode_mode == "trilinear" else {}
        up = F.interpolate(z[:, :1], scale_factor=self.downsampling_factor, mode=self.decode_mode, **kw)
        return up.clamp(-1, 1)

    def sample_latent(self, z_source: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None,
                      source_image: torch.Tensor | None = None) -> torch.Tensor:
        self.calls["sample"].append(tuple(z_source.shape))
        assert z_source.shape == noise.shape
        assert (source_image is not None) == self.needs_source_image
        if source_image is not None:  # the image tile must be exactly the one behind the latent tile
            f = self.downsampling_factor
            assert source_image.shape[2:] == tuple(s * f for s in z_source.shape[2:])
            torch.testing.assert_close(self.encode_source(source_image), z_source, atol=1e-5, rtol=0)
            self.calls.setdefault("checked", []).append(tuple(source_image.shape))
        return z_source + self.noise_scale * noise


def fake(**overrides) -> FakeLatentFamily:
    fam = FakeLatentFamily.__new__(FakeLatentFamily)
    fam.overrides = dict(overrides)
    fam.device = torch.device("cpu")
    fam.configuration = type("Cfg", (), {"data": {}})()
    fam.build()
    return fam


def smooth_volume(shape: tuple[int, int, int]) -> torch.Tensor:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    v = 0.5 * np.sin(1.3 * x + 0.4) * np.cos(0.9 * y) + 0.3 * z
    return torch.from_numpy(v.astype(np.float32))[None]


def reference(volume: torch.Tensor, fam: FakeLatentFamily, noise: torch.Tensor | None, pad_value: float = -1.0
              ) -> torch.Tensor:
    """The fake family applied to the whole padded volume at once (no tiles), cropped back."""
    f = fam.downsampling_factor
    amounts = latent_padding(tuple(volume.shape[1:]), f, [p * f for p in fam.latent_patch_size])
    flat = [x for a, b in reversed(amounts) for x in (a, b)]
    padded = F.pad(volume, flat, value=pad_value)
    z = F.avg_pool3d(padded[None, :1], f)[0, 0]
    if noise is not None:
        z = z + fam.noise_scale * noise[0]
    up = F.interpolate(z[None, None], scale_factor=f, mode="nearest")[0].clamp(-1, 1)
    return up[(slice(None), *(slice(a, a + s) for (a, _), s in zip(amounts, volume.shape[1:])))]


# --- scaled sliding window -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scale,f", [(0.5, 2), (0.25, 4), ([0.25, 0.25, 0.25], 4)])
def test_scaled_window_with_pooling_equals_the_pooled_volume(scale, f: int) -> None:
    vol = torch.randn(1, 40, 24, 36, generator=torch.Generator().manual_seed(0))
    for blend in ("gaussian", "mean"):
        out = sliding_window(vol, lambda x: F.avg_pool3d(x, f), (16, 16, 16), 0.5, blend, batch_size=3, scale=scale)
        assert out.shape == (1, 40 // f, 24 // f, 36 // f)
        torch.testing.assert_close(out, F.avg_pool3d(vol[None], f)[0], atol=1e-5, rtol=0)


def test_scaled_window_with_upsampling_equals_the_upsampled_volume() -> None:
    vol = torch.randn(2, 11, 9, 14, generator=torch.Generator().manual_seed(1))
    out = sliding_window(vol, lambda x: F.interpolate(x, scale_factor=4, mode="nearest"), (4, 4, 4), 0.5,
                         "gaussian", batch_size=2, scale=4)
    assert out.shape == (2, 44, 36, 56)
    torch.testing.assert_close(out, F.interpolate(vol[None], scale_factor=4, mode="nearest")[0], atol=1e-5, rtol=0)


def test_scaled_window_pads_small_volumes_on_the_scale_grid() -> None:
    vol = torch.zeros(1, 6, 20, 4) + 0.5
    seen = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return F.avg_pool3d(x, 2)

    out = sliding_window(vol, spy, (8, 16, 8), 0.5, scale=0.5, pad_value=-1.0)
    assert out.shape == (1, 3, 10, 2)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))  # the air padding is cut off again
    assert float(seen[0].min()) == -1.0


def test_scaled_window_keeps_the_oom_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.inference import windows as sw

    real = sw._allocate

    def fake_alloc(shape, device):
        if device.type == "cuda":
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real(shape, device)

    monkeypatch.setattr(sw, "_allocate", fake_alloc)
    vol = torch.randn(1, 24, 20, 28, generator=torch.Generator().manual_seed(0))
    out = sliding_window(vol, lambda x: F.avg_pool3d(x, 4), (16, 16, 16), 0.5, device="cpu",
                         accumulate_device="cuda", scale=0.25)
    torch.testing.assert_close(out, F.avg_pool3d(vol[None], 4)[0], atol=1e-5, rtol=0)


def test_scale_one_is_the_plain_window() -> None:
    vol = torch.randn(1, 21, 30, 19, generator=torch.Generator().manual_seed(0))
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    with torch.inference_mode():
        a = sliding_window(vol, net, (16, 16, 16), 0.5, batch_size=2)
        b = sliding_window(vol, net, (16, 16, 16), 0.5, batch_size=2, scale=1.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("scale,patch,shape", [
    (0, (16, 16, 16), (16, 16, 16)), (-0.5, (16, 16, 16), (16, 16, 16)), (float("nan"), (16, 16, 16), (16, 16, 16)),
    ((1, 2), (16, 16, 16), (16, 16, 16)), ("x", (16, 16, 16), (16, 16, 16)),
    (0.25, (10, 16, 16), (20, 16, 16)),   # patch 10 / 4 is not whole
    (0.25, (16, 16, 16), (18, 16, 16)),   # volume 18 / 4 is not whole
    (0.3, (16, 16, 16), (16, 16, 16)),    # 16 * 0.3 is not whole
    (1 / 7.3, (16, 16, 16), (16, 16, 16)),
])
def test_invalid_scales_are_rejected(scale, patch, shape) -> None:
    with pytest.raises(ValueError, match="scale|whole"):
        sliding_window(torch.zeros(1, *shape), lambda x: x, patch, 0.5, scale=scale)


def test_scaled_window_checks_the_output_tile_size() -> None:
    with pytest.raises(RuntimeError, match="times the window's scale"):
        sliding_window(torch.zeros(1, 16, 16, 16), lambda x: x, (16, 16, 16), 0.5, scale=0.5)


# --- predict_latent_volume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(37, 29, 45), (9, 30, 13)])  # odd, not multiples of f; the second < patch
def test_latent_volume_has_the_input_shape_and_no_seams(shape: tuple[int, int, int]) -> None:
    fam = fake(noise_scale=0.0)
    vol = smooth_volume(shape)
    pred, timings = predict_latent_volume(vol, fam, 0.5, "gaussian", 2, -1.0, "cpu", torch.Generator().manual_seed(0))
    assert pred.shape == (1, *shape) and pred.dtype == torch.float32
    # many overlapping tiles in every window, yet the result is the whole-volume computation
    assert len(fam.calls["encode"]) > 1 or min(shape) < 16
    torch.testing.assert_close(pred, reference(vol, fam, None), atol=1e-5, rtol=0)
    assert set(timings) >= {"encode_s", "sample_s", "decode_s", "steps", "tiles"}
    assert timings["steps"] == 3 and timings["tiles"] >= 1
    assert all(timings[k] >= 0 for k in ("encode_s", "sample_s", "decode_s"))
    # tiles have the planned sizes: image patch = latent patch * f
    assert {s[2:] for s in fam.calls["encode"]} == {(16, 16, 16)}
    assert {s[2:] for s in fam.calls["sample"]} == {(4, 4, 4)}
    assert {s[2:] for s in fam.calls["decode"]} == {(4, 4, 4)}


def test_padding_is_the_normalized_air() -> None:
    """17 voxels -> 20 (1 before, 2 after): the first latent voxel averages one air voxel with three of 0.5."""
    fam = fake()
    vol = torch.full((1, 17, 16, 16), 0.5)
    pred, _ = predict_latent_volume(vol, fam, 0.5, "gaussian", 1, -1.0, "cpu", None)
    assert pred.shape == (1, 17, 16, 16)
    torch.testing.assert_close(pred[0, :3], torch.full((3, 16, 16), (-1.0 + 3 * 0.5) / 4))
    torch.testing.assert_close(pred[0, 3:15], torch.full((12, 16, 16), 0.5))
    pred_zero_air, _ = predict_latent_volume(vol, fam, 0.5, "gaussian", 1, 0.0, "cpu", None)
    torch.testing.assert_close(pred_zero_air[0, :3], torch.full((3, 16, 16), 1.5 / 4))


def test_noise_is_drawn_once_per_case_and_shared_by_overlapping_tiles() -> None:
    fam = fake(noise_scale=0.1)
    vol = smooth_volume((41, 35, 30))
    pred, timings = predict_latent_volume(vol, fam, 0.5, "gaussian", 3, -1.0, "cpu", torch.Generator().manual_seed(7))
    assert timings["tiles"] > 8
    f = fam.downsampling_factor
    latent_shape = [(s + a + b) // f for (a, b), s in zip(latent_padding(tuple(vol.shape[1:]), f, [16, 16, 16]),
                                                          vol.shape[1:])]
    noise = torch.randn((fam.latent_channels, *latent_shape), generator=torch.Generator().manual_seed(7))
    # one (Lc, d, h, w) draw, sliced by every tile: the blend of overlapping tiles is the noise itself
    torch.testing.assert_close(pred, reference(vol, fam, noise), atol=1e-5, rtol=0)


def test_same_seed_same_output_other_seed_differs_batch_size_irrelevant() -> None:
    fam = fake(noise_scale=0.2)
    vol = smooth_volume((30, 27, 33))

    def run(seed: int, batch: int = 1) -> torch.Tensor:
        return predict_latent_volume(vol, fam, 0.5, "gaussian", batch, -1.0, "cpu",
                                     torch.Generator().manual_seed(seed))[0]

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(run(1, batch=5), a, atol=1e-6, rtol=0)


def test_trilinear_decoder_tiles_match_a_single_window() -> None:
    """A decoder with real border effects: the tiled prediction stays close to one window over the volume."""
    shape = (30, 31, 29)
    vol = smooth_volume(shape)
    tiled, t = predict_latent_volume(vol, fake(decode_mode="trilinear", latent_patch=[4, 4, 4]), 0.5, "gaussian",
                                     4, -1.0, "cpu", None)
    single, t1 = predict_latent_volume(vol, fake(decode_mode="trilinear", latent_patch=[8, 8, 8]), 0.5, "gaussian",
                                       1, -1.0, "cpu", None)
    assert t["tiles"] > 1 and t1["tiles"] == 1
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))  # away from the (padded) volume border
    diff = (tiled - single).abs()[inner]
    assert float(diff.max()) < 0.02, float(diff.max())
    # no seams: the largest step between neighbours is not larger than in the single-window prediction
    for axis in (1, 2, 3):
        assert float(tiled.diff(dim=axis)[inner].abs().max()) <= float(single.diff(dim=axis)[inner].abs().max()) + 0.01


def test_source_image_tiles_reach_families_that_need_them() -> None:
    """ldm_controlnet-style: ``sample_latent(..., source_image=)`` gets the aligned air-padded image tile."""
    fam = fake(needs_source_image=True, noise_scale=0.1)
    one = smooth_volume((27, 35, 22))
    vol = torch.cat([one, 0.5 * one.flip(1)])  # two source channels: both travel with the latent tiles
    g = torch.Generator().manual_seed(3)
    pred, timings = predict_latent_volume(vol, fam, 0.5, "gaussian", 2, -1.0, "cpu", g)
    assert len(fam.calls["checked"]) == len(fam.calls["sample"]) and timings["tiles"] > 1
    assert {s[1:] for s in fam.calls["checked"]} == {(2, 16, 16, 16)}
    plain, _ = predict_latent_volume(vol, fake(noise_scale=0.1), 0.5, "gaussian", 2, -1.0, "cpu",
                                     torch.Generator().manual_seed(3))
    torch.testing.assert_close(pred, plain, atol=1e-6, rtol=0)


def test_sampling_generator_is_passed_to_sample_latent() -> None:
    fam = fake()
    seen = []
    fam.sample_latent = lambda z, n, g: seen.append(g) or z  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(0)
    predict_latent_volume(smooth_volume((16, 16, 20)), fam, 0.5, "gaussian", 1, -1.0, "cpu", g)
    assert seen and all(x is g for x in seen)


# --- predictor and folder -----------------------------------------------------------------------------------

def _write_case(folder: Path, name: str, shape=(20, 30, 28)) -> None:
    img = sitk.GetImageFromArray(smooth_ct(shape))
    img.SetSpacing((6.0, 6.0, 6.0))
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(folder / f"{name}_0000.nii.gz"))


def test_predictor_uses_the_latent_path_with_steps_and_mirror_tta(roots: dict[str, Path], cbct_plan: Path) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_latent", {"0": {"noise_scale": 0.1}, "1": {}},
               mirror_axes=[0, 1, 2])
    data = smooth_volume((23, 37, 41)).numpy()
    predictor = load_predictor(device="cpu", seed=3, steps=7)
    preds = predictor.predict_folds(data, "c1")
    predictor.predict_folds(data, "c2")
    assert [p.shape for p in preds] == [(23, 37, 41)] * 2
    t = predictor.timings["c1"]
    assert set(t) == {"0", "1"}
    assert set(t["0"]) == {"encode_s", "sample_s", "decode_s", "steps", "tiles", "predict_s", "mirror_passes"}
    assert t["0"]["steps"] == 7 and t["0"]["mirror_passes"] == 8  # --steps reached the family; 2^3 mirrors
    again = load_predictor(device="cpu", seed=3, steps=7).predict_folds(data, "c1")
    np.testing.assert_array_equal(again[0], preds[0])
    other = load_predictor(device="cpu", seed=4, steps=7).predict_folds(data, "c1")
    assert not np.allclose(other[0], preds[0])


@pytest.mark.parametrize("axes", [[0, 1, 2], [2], []])
def test_latent_and_sliding_window_families_share_one_tta_policy(roots: dict[str, Path], cbct_plan: Path,
                                                                 axes: list[int]) -> None:
    """Mirror TTA multiplies the network calls of a latent model (sampler calls) and of a sliding-window model
    (generator calls) by the same 2^axes, on by default, off for both with tta=False."""
    data = smooth_volume((23, 37, 41)).numpy()

    def calls(model: str, tta: bool) -> int:
        for old in roots["autotrans_results"].glob("*/*"):
            shutil.rmtree(old)
        make_model(roots["autotrans_results"], cbct_plan, model, {"0": {}}, mirror_axes=axes)
        predictor = load_predictor(device="cpu", tta=tta)
        family = predictor.model.folds[0].family
        counted = {"n": 0}
        name = "sample_latent" if model == "test_latent" else "predict_patch"
        inner = getattr(family, name)

        def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
            counted["n"] += 1
            return inner(*args, **kwargs)

        setattr(family, name, counting)
        predictor.predict_folds(data, "c")
        return counted["n"]

    for model in ("test_latent", "test_identity"):
        assert calls(model, True) == 2 ** len(axes) * calls(model, False) > 0


def test_timings_json_written_and_merged(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path) -> None:
    model = make_model(roots["autotrans_results"], cbct_plan, "test_latent", {"0": {}})
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_case(inp, "a")
    predict_folder(load_predictor(device="cpu"), inp, out, num_processes_preprocessing=0, num_processes_export=0)
    first = json.loads((out / "timings.json").read_text())
    assert first["device"] == "cpu" and first["model"] == f"{cbct_plan.name}/{model.name}"
    assert set(first["a"]["0"]) == {"encode_s", "sample_s", "decode_s", "steps", "tiles", "predict_s", "mirror_passes"}
    _write_case(inp, "b")
    predict_folder(load_predictor(device="cpu"), inp, out, continue_prediction=True,
                   num_processes_preprocessing=0, num_processes_export=0)
    second = json.loads((out / "timings.json").read_text())
    assert second["a"] == first["a"] and set(second) == {"device", "model", "a", "b"}
    assert (out / "a.nii.gz").is_file() and (out / "b.nii.gz").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temporary files


def test_timings_json_for_sliding_window_families(roots: dict[str, Path], cbct_plan: Path, tmp_path: Path) -> None:
    make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}, "1": {}})
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_case(inp, "a")
    out.mkdir()
    (out / "timings.json").write_text("{not json")  # a broken file from a crashed tool is replaced, not fatal
    predict_folder(load_predictor(device="cpu"), inp, out, num_processes_preprocessing=0, num_processes_export=0)
    data = json.loads((out / "timings.json").read_text())
    assert set(data["a"]) == {"0", "1"}
    assert set(data["a"]["0"]) == {"predict_s"} and data["a"]["0"]["predict_s"] > 0
