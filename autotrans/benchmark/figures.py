"""Report figures (matplotlib, Agg): boxplots per metric and example slices in three planes.

Slices show every model at the same point and with the same intensity window as the real target, so the
eye compares models, not display settings.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.utils.files import atomic_path

logger = logging.getLogger(__name__)

METRIC_LABELS = {"mae": "MAE", "mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)


def boxplots(values: dict[str, dict[str, list[float]]], metrics: list[str], title: str, path: Path) -> None:
    """One panel per metric, one box per model (cases pooled over folds); points drawn over the boxes,
    because with a handful of cases the points say more than the box."""
    plt = _plt()
    models = list(values)
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 + 2.0 * len(metrics) + 0.3 * len(models), 3.4),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        data = [np.asarray([v for v in values[m].get(metric, []) if np.isfinite(v)], dtype=float) for m in models]
        ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(d.size, i) + np.linspace(-0.08, 0.08, d.size) if d.size > 1 else np.full(d.size, i),
                       d, s=12, color="tab:blue", zorder=3)
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(models, rotation=45, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title above the column headers
    _save(fig, path)


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


def window(arr: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """p0.5/p99.5 inside the mask (whole volume without one)."""
    vals = arr[mask > 0] if mask is not None and (mask > 0).any() else arr.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _planes(arr: np.ndarray, p: tuple[int, int, int], spacing_xyz: tuple[float, ...]) -> list[tuple[np.ndarray, float]]:
    """Axial, coronal, sagittal slices through ``p`` with the aspect ratio of the physical spacing."""
    sx, sy, sz = spacing_xyz
    return [(arr[p[0]], sy / sx), (arr[:, p[1], :][::-1], sz / sx), (arr[:, :, p[2]][::-1], sz / sy)]


def example_slices(rows: list[tuple[str, np.ndarray, tuple[float, float]]], point: tuple[int, int, int],
                   spacing_xyz: tuple[float, ...], title: str, path: Path,
                   lesion: np.ndarray | None = None) -> None:
    """A grid of ``(label, volume, window)`` rows x (axial, coronal, sagittal); lesion outline on the first
    row that is not the source (the real target) when a lesion map is given."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.3 * len(rows) + 0.4), squeeze=False)
    lesion_planes = _planes(lesion.astype(float), point, spacing_xyz) if lesion is not None else None
    for r, (label, arr, (lo, hi)) in enumerate(rows):
        for c, (img, aspect) in enumerate(_planes(arr, point, spacing_xyz)):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            if lesion_planes is not None and r == 1 and lesion_planes[c][0].any():
                ax.contour(lesion_planes[c][0], levels=[0.5], colors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(("axial", "coronal", "sagittal")[c], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
