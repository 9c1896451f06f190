"""The data-wait fraction (issue 17.5): measured per epoch, logged, kept in the history and drawn in progress.png."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from autotrans.results import load_checkpoint
from autotrans.training import run_training
from autotrans.training.engine import DATA_WAIT_WARNING
from autotrans.training.progress import DATA_WAIT, TRAIN_TIME, History, plot_progress
from tests.training.helpers import fold_dir, settings


def test_plot_draws_the_data_wait_fraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.training import progress

    figures = []
    monkeypatch.setattr(progress.plt, "close", figures.append)
    h = History()
    h.record(0, {"train/loss": 0.5, "epoch_time": 2.0, "train_time": 1.5, DATA_WAIT: 0.25})
    plot_progress(h, tmp_path / "p.png")
    lines = [line for ax in figures[0].axes for line in ax.get_lines() if "data wait" in str(line.get_label())]
    assert len(lines) == 1 and list(lines[0].get_ydata()) == [25.0]  # in percent of the step time


def test_data_wait_is_logged_and_recorded(tiny_brain: Path, roots: dict[str, Path], caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader slowed by 250 ms per batch: the fraction counts at least that wait against the epoch's training
    time, it is in the epoch line and in the checkpoint's history, and a high one names the loader as the
    bottleneck."""
    from autotrans.training import engine

    make = engine.make_train_augmenter

    def slow(*args, **kw):
        stream = make(*args, **kw)

        def batches():
            while True:
                time.sleep(0.25)
                yield next(stream)
        return batches()

    monkeypatch.setattr(engine, "make_train_augmenter", slow)
    with caplog.at_level(logging.INFO):
        run_training(settings(num_epochs=1, iterations=4, val_iterations=1, final_validation=False))
    history = load_checkpoint(fold_dir(roots["autotrans_results"]) / "checkpoint_final.pth")["history"]
    fraction = history[DATA_WAIT]
    assert len(fraction) == 1 and 4 * 0.25 / history[TRAIN_TIME][0] - 1e-3 <= fraction[0] <= 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 0:") and f"{DATA_WAIT}=" in m for m in messages)
    assert any("waiting for batches" in m for m in messages) == (fraction[0] > DATA_WAIT_WARNING)
