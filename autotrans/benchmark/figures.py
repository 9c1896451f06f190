"""Report figures (matplotlib, Agg): per-case metrics per model and example slices in three planes.

Slices show every model at the same point and with the same intensity window as the real target, so the
eye compares models, not display settings (orientation and windows: :mod:`autotrans.benchmark.slices`).
Metric plots say which direction is better and start their axes at a meaningful value; with fewer than
:data:`MIN_BOX_N` cases per model they show the points alone, since a box of one or two values is no summary.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.utils.files import atomic_path

logger = logging.getLogger(__name__)

METRIC_LABELS = {"mae": "MAE", "mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}
#: True: higher is better
HIGHER_IS_BETTER = {"mae": False, "mse": False, "psnr": True, "ssim": True, "ms_ssim": True}
#: fewest values per model for a box (and for "mean ± std" in the tables); below it: the values themselves
MIN_BOX_N = 3


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)


def _y_limits(metric: str, values: list[np.ndarray]) -> tuple[float, float]:
    """Axes that start from a meaningful value, not the data's range: 0 for the errors (MAE, MSE) and for PSNR
    (dB), 0..1 for SSIM and MS-SSIM (lower only if a value is negative); the top is the data's maximum plus 10 %."""
    finite = np.concatenate([v for v in values if v.size] or [np.zeros(0)])
    top = float(finite.max()) if finite.size else 1.0
    low = float(finite.min()) if finite.size else 0.0
    if metric in ("ssim", "ms_ssim"):  # negative only for anti-correlated images: then show it
        return (0.0 if low >= 0 else float(np.floor(low * 10) / 10)), 1.0
    bottom = 0.0 if low >= 0 else float(np.floor(low))  # a PSNR below 0 dB is shown, not cut off
    return bottom, (top * 1.1 if top > 0 else 1.0)


def boxplots(values: dict[str, dict[str, list[float]]], metrics: list[str], title: str, path: Path,
             baselines: set[str] | frozenset[str] = frozenset()) -> bool:
    """One panel per metric, one column per model (cases pooled over folds), in the order of ``values``; points
    drawn over the boxes, because with a handful of cases the points say more than the box. Boxes only for models
    with at least :data:`MIN_BOX_N` values (returns whether any box was drawn). Each panel says whether higher or
    lower is better. Baselines: grey, "(baseline)" in the label."""
    plt = _plt()
    models = list(values)
    names = [f"{m} (baseline)" if m in baselines else m for m in models]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 + 2.0 * len(metrics) + 0.3 * len(models), 3.8),
                             squeeze=False)
    any_box = False
    for ax, metric in zip(axes[0], metrics):
        data = [np.asarray([v for v in values[m].get(metric, []) if np.isfinite(v)], dtype=float) for m in models]
        boxed = [i for i, d in enumerate(data) if d.size >= MIN_BOX_N]
        if boxed:
            any_box = True
            bp = ax.boxplot([data[i] for i in boxed], positions=[i + 1 for i in boxed], showfliers=False,
                            patch_artist=True, widths=0.5)
            for box, i in zip(bp["boxes"], boxed):
                box.set_facecolor("0.85" if models[i] in baselines else "white")
                box.set_edgecolor("0.45" if models[i] in baselines else "black")
        for i, (d, m) in enumerate(zip(data, models), start=1):
            ax.scatter(np.full(d.size, i) + np.linspace(-0.08, 0.08, d.size) if d.size > 1 else np.full(d.size, i),
                       d, s=14, color="0.4" if m in baselines else "tab:blue", zorder=3)
            if d.size < MIN_BOX_N:
                for v in d:
                    ax.annotate(f"{v:.3g}", (i, v), xytext=(4, 0), textcoords="offset points", fontsize=7,
                                va="center")
        ax.set_xlim(0.4, len(models) + 0.9)  # room for the values written beside the last points
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        for tick, m in zip(ax.get_xticklabels(), models):
            if m in baselines:
                tick.set_fontstyle("italic")
                tick.set_color("0.35")
        ax.set_ylim(*_y_limits(metric, data))
        better = "higher is better ↑" if HIGHER_IS_BETTER.get(metric, False) else "lower is better ↓"
        n = sorted({d.size for d in data})
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)}\n{better}; n = {'/'.join(map(str, n))}", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the title above the panel titles
    _save(fig, path)
    return any_box


def focus_point(shape: tuple[int, ...], lesions: np.ndarray | None, mask: np.ndarray | None) -> tuple[int, int, int]:
    """Centre of the largest lesion, else of the mask, else of the volume (array (z, y, x) indices)."""
    from scipy import ndimage

    if lesions is not None and (lesions > 0).any():
        labels, n = ndimage.label(lesions > 0, structure=np.ones((3, 3, 3)))
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        sel = labels == (int(np.argmax(sizes)) + 1)
    elif mask is not None and (mask > 0).any():
        sel = mask > 0
    else:
        return tuple(s // 2 for s in shape)  # type: ignore[return-value]
    centre = np.round(np.argwhere(sel).mean(axis=0)).astype(int)
    return tuple(int(c) for c in centre)  # type: ignore[return-value]


#: width of the slice figure (inches at 100 dpi: the report page's 1200 px)
SLICE_FIGURE_WIDTH = 12.0


def example_slices(rows: list[tuple[str, np.ndarray, Any]], point: tuple[int, int, int],
                   spacing_xyz: tuple[float, ...], title: str, path: Path,
                   lesion: np.ndarray | None = None, units: dict[str, str] | None = None) -> bool:
    """A grid of ``(label, display-grid volume, slices.Window)`` rows x (axial, coronal, sagittal), each row with
    its window's colour bar. Panels are sized by their physical extent (the page's full width); the reference
    lesion outline goes on the second row (the real target) when ``lesion`` has voxels in a plane. Returns
    whether an outline was drawn (the caption promises one only then)."""
    from autotrans.benchmark.slices import PLANES, planes

    plt = _plt()
    shape = rows[0][1].shape
    sx, sy, sz = (float(v) for v in spacing_xyz)
    ext_x, ext_y, ext_z = shape[2] * sx, shape[1] * sy, shape[0] * sz
    widths = [ext_x, ext_x, ext_y]
    bar = 0.035 * sum(widths)
    avail = SLICE_FIGURE_WIDTH - 1.3  # the row labels and colour-bar ticks take the rest
    scale = avail / (sum(widths) + bar)  # inches per mm
    row_h = scale * max(ext_y, ext_z) + 0.15
    fig = plt.figure(figsize=(SLICE_FIGURE_WIDTH, row_h * len(rows) + 0.9), layout="constrained")
    grid = fig.add_gridspec(len(rows), 4, width_ratios=[*widths, bar])
    lesion_planes = planes(lesion.astype(np.float32), point, spacing_xyz) if lesion is not None else None
    outlined = False
    for r, (label, arr, win) in enumerate(rows):
        im = None
        for c, (img, aspect) in enumerate(planes(arr, point, spacing_xyz)):
            ax = fig.add_subplot(grid[r, c])
            ax.set_anchor("N")  # panels of unequal height hang from one line: the plane titles align
            im = ax.imshow(img, cmap=win.cmap, vmin=win.lo, vmax=win.hi, aspect=aspect, interpolation="nearest")
            if lesion_planes is not None and r == 1 and lesion_planes[c][0].any():
                ax.contour(lesion_planes[c][0], levels=[0.5], colors="red", linewidths=0.7)
                outlined = True
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(PLANES[c], fontsize=9)
        cax = fig.add_subplot(grid[r, 3])
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=7)
        if units and label in units:
            cb.set_label(units[label], fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return outlined
