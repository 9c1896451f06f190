"""One validation scale named everywhere (issue 15.6), a readable progress.png after one epoch (15.11), and
one file on disk for checkpoints that hold the same weights (15.12)."""
from __future__ import annotations

import errno
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from autotrans.preprocessing.normalization import PercentileNormalization, SUVNormalization, WindowNormalization
from autotrans.results import link_checkpoint, load_checkpoint, save_checkpoint
from autotrans.training import run_training
from autotrans.training.progress import VAL_MAE, VAL_MAE_EMA, VAL_PSNR, History, plot_progress, summarize_epoch
from autotrans.training.validation import MR_SCALE, validation_unit
from tests.training.helpers import fold_dir, settings


def _state(value: float) -> dict:
    return {"family": "test_residual", "configuration": "3d_fullres", "plans_sha1": "x", "overrides": {},
            "networks": {"w": torch.full((4,), value)}}


# --- 15.6: one scale, named ------------------------------------------------------------------------------------
def test_validation_unit_names_the_final_validation_scale() -> None:
    assert validation_unit(PercentileNormalization()) == MR_SCALE == "normalized MR scale"
    assert validation_unit(SUVNormalization()) == "SUV"
    assert validation_unit(WindowNormalization()) == "HU"


def test_epoch_line_names_the_unit() -> None:
    line = summarize_epoch(3, {VAL_MAE: 0.4123, VAL_MAE_EMA: 0.5, VAL_PSNR: 21.0, "train/loss": 0.2}, MR_SCALE)
    assert line.startswith("epoch 3: val MAE 0.4123 (normalized MR scale), EMA 0.5, PSNR 21 dB; ")
    assert "train/loss=0.2" in line and "val/mae=" not in line
    assert summarize_epoch(0, {"train/loss": 1.0}, "HU") == "epoch 0: train/loss=1"  # no validation: no unit


# --- 15.11: progress.png after one epoch -----------------------------------------------------------------------
def _drawn_pixels(path: Path) -> int:
    """Non-white, non-black pixels: the coloured series (axes, ticks and text are black or grey)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    coloured = (img.max(axis=-1) - img.min(axis=-1)) > 0.2
    return int(coloured.sum())


def test_progress_png_after_one_epoch_shows_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.training import progress

    figures = []
    monkeypatch.setattr(progress.plt, "close", figures.append)
    h = History()
    h.record(0, {"train/loss": 0.5, VAL_MAE: 0.41, VAL_MAE_EMA: 0.41, VAL_PSNR: 20.0, "lr/generator": 1e-4,
                 "epoch_time": 2.0, "train_time": 1.5, "val_time": 0.5})
    one = tmp_path / "one.png"
    plot_progress(h, one, MR_SCALE)
    assert one.is_file() and len(figures) == 1
    axes = [ax for ax in figures[0].axes if ax.get_lines()]
    assert len(axes) == 5  # four panels and the PSNR twin: every one has data
    for ax in axes:  # a single point is only visible as a marker (a line needs two points)
        assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi
    assert _drawn_pixels(one) > 400  # markers in every panel (legend swatches alone are ~300 pixels)
    h.record(1, {"train/loss": 0.4, VAL_MAE: 0.39, VAL_MAE_EMA: 0.40, VAL_PSNR: 21.0, "lr/generator": 1e-4,
                 "epoch_time": 2.0, "train_time": 1.5, "val_time": 0.5})
    two = tmp_path / "two.png"
    plot_progress(h, two, MR_SCALE)
    assert _drawn_pixels(two) > 200


def test_progress_png_title_and_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    seen: dict[str, list[str]] = {"title": [], "ylabel": []}
    orig_title, orig_label = matplotlib.figure.Figure.suptitle, matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, t, **kw: (seen["title"].append(t), orig_title(self, t, **kw))[1])
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda self, t, **kw: (seen["ylabel"].append(t), orig_label(self, t, **kw))[1])
    h = History()
    h.record(0, {VAL_MAE: 0.41})
    plot_progress(h, tmp_path / "p.png", MR_SCALE)
    assert seen["title"] == ["1 epoch (epoch 0)"]
    assert "validation MAE (normalized MR scale)" in seen["ylabel"]


# --- 15.12: one file for the same weights ----------------------------------------------------------------------
def test_link_is_one_file_and_a_later_write_leaves_the_other(tmp_path: Path) -> None:
    best, final = tmp_path / "checkpoint_best.pth", tmp_path / "checkpoint_final.pth"
    save_checkpoint(_state(1.0), best)
    assert link_checkpoint(best, final) == "link"
    assert os.path.samefile(best, final) and os.stat(best).st_nlink == 2
    assert torch.equal(load_checkpoint(final)["networks"]["w"], torch.full((4,), 1.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    save_checkpoint(_state(2.0), best)  # a later best: atomic rename replaces that name only
    assert not os.path.samefile(best, final)
    assert torch.equal(load_checkpoint(final)["networks"]["w"], torch.full((4,), 1.0))
    assert torch.equal(load_checkpoint(best)["networks"]["w"], torch.full((4,), 2.0))
    save_checkpoint(_state(3.0), final)  # and the other way round
    assert torch.equal(load_checkpoint(best)["networks"]["w"], torch.full((4,), 2.0))


def test_link_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    save_checkpoint(_state(1.0), a)
    save_checkpoint(_state(5.0), b)
    link_checkpoint(a, b)
    assert os.path.samefile(a, b)


def test_link_falls_back_to_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    save_checkpoint(_state(1.0), a)
    assert link_checkpoint(a, b) == "copy"
    assert not os.path.samefile(a, b) and torch.equal(load_checkpoint(b)["networks"]["w"], torch.full((4,), 1.0))


def test_link_other_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(OSError) as e:
        link_checkpoint(tmp_path / "missing.pth", tmp_path / "b.pth")
    assert e.value.filename == str(tmp_path / "b.pth") and not (tmp_path / "b.pth").exists()


def test_one_epoch_run_end_to_end(tiny_brain: Path, roots: dict[str, Path], caplog: pytest.LogCaptureFixture
                                  ) -> None:
    """One epoch: best and final are one file; the log and the checkpoint's history use the normalized MR scale;
    resume, --c and predicting with checkpoint_best.pth still work."""
    from autotrans.inference import load_predictor

    with caplog.at_level(logging.INFO):
        summary = run_training(settings(num_epochs=1))
    fd = fold_dir(roots["autotrans_results"])
    best, final = fd / "checkpoint_best.pth", fd / "checkpoint_final.pth"
    assert os.path.samefile(best, final)
    state = load_checkpoint(final)
    assert state["val_unit"] == MR_SCALE
    mae = state["history"][VAL_MAE][0]
    assert 0 < mae < 4  # the per-case output scale (raw MR intensities of these brains are in the hundreds)
    assert any("val MAE" in r.getMessage() and "(normalized MR scale)" in r.getMessage() for r in caplog.records)
    assert summary is not None and math.isfinite(summary["mean"]["mae"])
    assert _drawn_pixels(fd / "progress.png") > 200
    predictor = load_predictor(dataset="11", configuration="3d_fullres", model="test_residual", folds=["0"],
                               checkpoint="checkpoint_best.pth", device="cpu", tta=False)
    assert predictor.model.folds[0].fold == "0"
    # continuing to 2 epochs: final is rewritten by rename, best keeps epoch 1 unless epoch 2 is better
    run_training(settings(num_epochs=2, continue_training=True))
    assert load_checkpoint(final)["epoch"] == 2
    assert load_checkpoint(best)["epoch"] in (1, 2)
    assert os.path.samefile(best, final) == (load_checkpoint(best)["epoch"] == 2)
    assert np.isfinite(load_checkpoint(final)["history"][VAL_MAE]).all()
