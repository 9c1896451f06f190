"""Sliding window: coverage, no seams, exact blending (MONAI parity), padding, batching, OOM fallback."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from autotrans.inference import windows as sw
from autotrans.inference.windows import compute_starts, importance_map, sliding_window, tile_slices
from tests.inference.helpers import small_conv_net


def identity(x: torch.Tensor) -> torch.Tensor:
    return x[:, :1].clone()


def test_starts_cover_axis_with_requested_overlap() -> None:
    for size in (16, 17, 31, 40, 97):
        for step in (0.25, 0.5, 1.0):
            starts = compute_starts(size, 16, step)
            assert starts[0] == 0 and starts[-1] == size - 16
            assert all(b - a <= 16 * step + 1e-9 for a, b in zip(starts, starts[1:])), (size, step, starts)
    with pytest.raises(ValueError):
        compute_starts(10, 16, 0.5)


def test_importance_map_is_gaussian_with_sigma_patch_over_8() -> None:
    w = importance_map((16, 24, 32), "gaussian").numpy()
    assert w.shape == (16, 24, 32) and w.dtype == np.float32
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], atol=1e-7)  # centred on (p - 1) / 2
    peak = np.prod([np.exp(-0.5 ** 2 / (2 * (p / 8) ** 2)) for p in (16, 24, 32)])  # half a voxel off centre
    assert w.min() == pytest.approx(1e-3) and w.max() == pytest.approx(peak, rel=1e-6)
    # along the last axis: g(x) / g(x + sigma) follows exp(-x^2 / (2 sigma^2)) with sigma = 32 / 8
    line = w[7, 11]
    c = 15.5
    ratio = line[int(c + 0.5) + 3] / line[int(c + 0.5)]
    expected = np.exp(-((3.5) ** 2 - 0.5 ** 2) / (2 * 4.0 ** 2))
    assert ratio == pytest.approx(expected, rel=1e-5)
    assert np.all(importance_map((8, 8, 8), "mean").numpy() == 1)


@pytest.mark.parametrize("blend", ["gaussian", "mean"])
@pytest.mark.parametrize("shape", [(20, 33, 17), (10, 12, 40), (16, 16, 16)])
def test_identity_covers_every_voxel_and_constant_has_no_seams(blend: str, shape: tuple[int, int, int]) -> None:
    vol = torch.from_numpy(np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32))
    out = sliding_window(vol, identity, (16, 16, 16), 0.5, blend, batch_size=3)
    assert out.shape == (1, *shape)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, vol, atol=1e-5, rtol=0)  # a voxel never covered would be NaN or 0
    const = sliding_window(vol, lambda x: torch.full_like(x, 0.37), (16, 16, 16), 0.5, blend)
    assert float(const.min()) == pytest.approx(0.37, abs=1e-6) and float(const.max()) == pytest.approx(0.37, abs=1e-6)


def test_tiles_cover_the_volume_exactly() -> None:
    seen = np.zeros((23, 40, 18), dtype=int)
    for sl in tile_slices(seen.shape, (16, 16, 16), 0.5):
        seen[sl] += 1
    assert seen.min() >= 1


def test_linear_ramp_stays_a_ramp() -> None:
    z, y, x = np.meshgrid(np.arange(30), np.arange(37), np.arange(25), indexing="ij")
    ramp = torch.from_numpy((0.01 * z - 0.02 * y + 0.03 * x).astype(np.float32))[None]
    out = sliding_window(ramp, identity, (16, 16, 16), 0.5, "gaussian")
    torch.testing.assert_close(out, ramp, atol=1e-5, rtol=0)


def test_small_input_is_padded_with_air_and_cropped_back() -> None:
    seen_pad = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen_pad.append(float(x[0, 0, 0, 0, 0]))
        return x[:, :1] * 2

    vol = torch.zeros((1, 6, 20, 5)) + 0.5
    out = sliding_window(vol, spy, (8, 16, 16), 0.5, "gaussian", pad_value=-1.0)
    assert out.shape == (1, 6, 20, 5)
    assert seen_pad[0] == -1.0  # the corner lies in the padding
    torch.testing.assert_close(out, vol * 2)


def test_matches_monai_gaussian_within_1e5() -> None:
    monai_inferers = pytest.importorskip("monai.inferers")
    net = small_conv_net().eval()
    vol = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 40, 32, 24)).astype(np.float32))
    with torch.inference_mode():
        ours = sliding_window(vol, net, (16, 16, 16), 0.5, "gaussian", batch_size=2)
        ref = monai_inferers.sliding_window_inference(vol[None], (16, 16, 16), 2, net, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(ours, ref[0], atol=1e-5, rtol=0)


def test_batch_size_does_not_change_the_result() -> None:
    net = small_conv_net().eval()
    vol = torch.randn(1, 21, 30, 19, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = sliding_window(vol, net, (16, 16, 16), 0.5, batch_size=1)
        b = sliding_window(vol, net, (16, 16, 16), 0.5, batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_accumulators_fall_back_to_cpu_on_cuda_oom(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """No GPU here: pretend the accumulators were asked for on CUDA and that allocation runs out of memory."""
    real = sw._allocate
    calls = []

    def fake(shape, device):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real(shape, device)

    monkeypatch.setattr(sw, "_allocate", fake)
    vol = torch.randn(1, 20, 20, 20, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        out = sliding_window(vol, identity, (16, 16, 16), 0.5, device="cpu", accumulate_device="cuda")
    assert calls[0] == "cuda" and "cpu" in calls
    assert "accumulating on the CPU" in caplog.text
    torch.testing.assert_close(out, vol, atol=1e-5, rtol=0)


def test_oom_mid_volume_redoes_the_batch_on_cpu_with_rewound_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OOM after some tiles: accumulators move to the CPU, the batch is redone, noise stays reproducible."""
    monkeypatch.setattr(sw, "_allocate", lambda shape, device: torch.zeros(tuple(shape)))  # "cuda" tensors on CPU
    vol = torch.randn(1, 24, 24, 24, generator=torch.Generator().manual_seed(0))

    def noisy(gen: torch.Generator, fail_at: int | None):
        count = [0]

        def fn(x: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            noise = torch.randn(x[:, :1].shape, generator=gen)
            if count[0] == fail_at:
                raise torch.OutOfMemoryError("simulated")
            return x[:, :1] + noise
        return fn

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = sliding_window(vol, noisy(g1, None), (16, 16, 16), 0.5, accumulate_device="cpu", generator=g1)
    out = sliding_window(vol, noisy(g2, 3), (16, 16, 16), 0.5, accumulate_device="cuda", generator=g2)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_real_oom_on_cpu_is_raised() -> None:
    def boom(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        sliding_window(torch.zeros(1, 16, 16, 16), boom, (16, 16, 16), 0.5)
