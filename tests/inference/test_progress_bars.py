"""Progress that stays readable (issue 15.9): nested bars only on a terminal, a latent window counts tiles x
sampling steps, and output to a file holds no cursor-movement escape codes."""
from __future__ import annotations

import io
import sys

import pytest
import torch

from autotrans.inference.windows import sliding_window
from autotrans.utils import progress as progress_module
from autotrans.utils.progress import FILE_MININTERVAL, progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_nested_bars_are_off_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    outer = progress(range(3), desc="cases", file=err)
    inner = progress(range(5), desc="tiles", leave=False, file=err)
    assert not outer.disable and inner.disable
    assert outer.mininterval == FILE_MININTERVAL
    for _ in outer:
        for _ in inner:
            pass
    outer.close()
    text = err.getvalue()
    assert "cases" in text and "tiles" not in text and "\x1b[" not in text


def test_a_bar_inside_another_is_off_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import tqdm

    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    outer = tqdm(range(2), desc="benchmark", file=err)  # a plain tqdm bar, not made by the helper
    inner = progress(range(3), desc="predict", file=err)
    assert inner.disable
    inner.close()
    outer.close()
    assert "\x1b[" not in err.getvalue()


def test_nested_bars_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", err)
    inner = progress(range(5), desc="tiles", leave=False, file=err)
    assert not inner.disable and inner.mininterval != FILE_MININTERVAL
    inner.close()


def test_a_closed_or_replaced_stderr_counts_as_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", object())
    assert not progress_module.stderr_is_tty()


def test_sliding_window_bar_counts_tiles_times_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []

    class Bar:
        def __init__(self) -> None:
            self.n = 0

        def update(self, k: int) -> None:
            self.n += k

        def close(self) -> None:
            pass

    def spy(iterable=None, **kw):  # noqa: ANN001, ANN202
        bar = Bar()
        seen.append({**kw, "updates": bar})
        return bar

    import autotrans.inference.windows as windows

    monkeypatch.setattr(windows, "progress", spy)
    vol = torch.zeros((1, 16, 16, 16))
    sliding_window(vol, lambda x: x, (8, 8, 8), step_size=1.0, desc="sample (7 steps/tile)", steps_per_tile=7)
    (call,) = seen
    assert call["total"] == 8 * 7 and call["unit"] == "step" and call["leave"] is False
    assert call["updates"].n == 8 * 7  # every tile's steps were counted
    seen.clear()
    sliding_window(vol, lambda x: x, (8, 8, 8), step_size=1.0)
    assert seen[0]["total"] == 8 and seen[0]["unit"] == "tile"
