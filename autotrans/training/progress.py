"""Per-epoch history, the training log file and progress.png.

The history is a plain dict of lists (one entry per epoch) so it pickles into checkpoints and a resumed
run continues the same curves. progress.png is drawn with matplotlib's Agg backend: training runs on
headless servers, and a display backend would fail there.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autotrans.utils.files import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

#: history keys the engine writes itself (the family's step outputs come as ``train/<name>``)
VAL_MAE, VAL_MAE_EMA, VAL_PSNR, EPOCH_TIME = "val/mae", "val/mae_ema", "val/psnr", "epoch_time"
#: an epoch's training and per-epoch validation seconds (EPOCH_TIME is their sum)
TRAIN_TIME, VAL_TIME = "train_time", "val_time"
#: fraction of the training step time spent blocked on the data loader (0: the loader keeps up)
DATA_WAIT = "data_wait"


class History:
    """Epoch-wise values; ``record`` appends, ``to_dict``/``from_dict`` round-trip through checkpoints."""

    def __init__(self, data: dict[str, list[float]] | None = None) -> None:
        self.data: dict[str, list[float]] = defaultdict(list, {k: list(v) for k, v in (data or {}).items()})
        self.epochs: list[int] = list(self.data.pop("_epoch", []))

    def record(self, epoch: int, values: dict[str, float]) -> None:
        """Keys missing this epoch get NaN so every series stays aligned with ``epochs``."""
        self.epochs.append(epoch)
        for key in set(self.data) | set(values):
            series = self.data[key]
            series.extend([math.nan] * (len(self.epochs) - 1 - len(series)))
            series.append(float(values.get(key, math.nan)))

    def to_dict(self) -> dict[str, list[float]]:
        return {"_epoch": list(self.epochs), **{k: list(v) for k, v in self.data.items()}}

    def last(self, key: str) -> float:
        series = self.data.get(key, [])
        return series[-1] if series else math.nan


def new_log_path(fold_dir: Path) -> Path:
    """``training_log_<time>.txt``: one per invocation, so a resumed run keeps the earlier logs."""
    return fold_dir / time.strftime("training_log_%Y_%m_%d_%H_%M_%S.txt")


def add_log_file(path: Path) -> logging.Handler:
    """Send every log record of this process to ``path`` (appending; removed again by the caller)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def plot_progress(history: History, path: Path, unit: str = "physical units") -> None:
    """Four panels: training losses (G/D and others), validation MAE (in ``unit``)/EMA/PSNR, learning rates,
    epoch time with the data-wait fraction (% of step time blocked on the loader) on a second axis.

    Every series is drawn with point markers, so a run of one epoch (a line needs two points) still shows its
    values instead of four empty panels; the title then says "1 epoch"."""
    if not history.epochs:
        return
    x = history.epochs
    n = len(x)
    marker = "o" if n < 30 else None  # markers on short runs (one epoch: the only thing drawn); plain lines after

    def plot(ax: Any, key: str, style: str = "-", **kw: Any) -> None:
        ax.plot(x, history.data[key], style, marker=marker, markersize=4, **kw)

    fig, axes = plt.subplots(4, 1, figsize=(10, 16))
    fig.suptitle(f"{n} epoch{'s' if n != 1 else ''} (epochs {x[0]}-{x[-1]})" if n > 1 else f"1 epoch (epoch {x[0]})")
    ax = axes[0]
    for key in sorted(k for k in history.data if k.startswith("train/")):
        plot(ax, key, label=key[len("train/"):])
    ax.set_ylabel("training loss")
    _legend(ax, "upper right")
    ax = axes[1]
    for key, style in ((VAL_MAE, "-"), (VAL_MAE_EMA, "--")):
        if key in history.data:
            plot(ax, key, style, label=key)
    ax.set_ylabel(f"validation MAE ({unit})")
    _legend(ax, "upper left")
    if VAL_PSNR in history.data:
        twin = ax.twinx()
        plot(twin, VAL_PSNR, ":", color="tab:green", label="val/psnr")
        twin.set_ylabel("validation PSNR (dB)")
        twin.legend(loc="upper right", fontsize="small")
    ax = axes[2]
    for key in sorted(k for k in history.data if k.startswith("lr/")):
        plot(ax, key, label=key)
    ax.set_ylabel("learning rate")
    _legend(ax, "upper right")
    ax = axes[3]
    for key, label in ((EPOCH_TIME, "epoch"), (TRAIN_TIME, "training"), (VAL_TIME, "validation")):
        if key in history.data:
            plot(ax, key, label=label)
    ax.set_ylabel("time (s)")
    _legend(ax, "upper left")
    if DATA_WAIT in history.data:  # how much of that time the step waited for data: the loader's verdict
        twin = ax.twinx()
        twin.plot(x, [100 * v for v in history.data[DATA_WAIT]], ":", color="tab:red", marker=marker, markersize=4,
                  label="data wait (% of step time)")
        twin.set_ylabel("data wait (% of step time)")
        twin.set_ylim(0, 100)
        twin.legend(loc="upper right", fontsize="small")
    for ax in axes:
        ax.set_xlabel("epoch")
        if n == 1:  # one point: matplotlib would centre it in a zero-width range; give the axis a visible span
            ax.set_xlim(x[0] - 1, x[0] + 1)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _legend(ax: Any, loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty panel (e.g. no validation) gets no legend
        ax.legend(loc=loc, fontsize="small")


def summarize_epoch(epoch: int, values: dict[str, Any], unit: str = "physical units") -> str:
    """The epoch's log line; the validation MAE first and with its unit (``val MAE 0.41 (normalized MR scale)``),
    so it is never read against numbers of another scale."""
    head = []
    if isinstance(values.get(VAL_MAE), float) and not math.isnan(values[VAL_MAE]):
        head.append(f"val MAE {values[VAL_MAE]:.4g} ({unit})")
        if isinstance(values.get(VAL_MAE_EMA), float):
            head.append(f"EMA {values[VAL_MAE_EMA]:.4g}")
        if isinstance(values.get(VAL_PSNR), float) and not math.isnan(values[VAL_PSNR]):
            head.append(f"PSNR {values[VAL_PSNR]:.4g} dB")
    skip = {VAL_MAE, VAL_MAE_EMA, VAL_PSNR} if head else set()
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())
                      if k not in skip and isinstance(v, float) and not math.isnan(v))
    return f"epoch {epoch}: " + "; ".join(part for part in (", ".join(head), shown) if part)
