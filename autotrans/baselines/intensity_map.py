"""``intensity_map``: a per-intensity look-up table from the normalized source to the normalized target.

Fitted on the fold's training cases only, inside their masks (all voxels of the crop without masks): the source
channel 0 values are cut into ``BINS`` quantile bins (equal voxel counts, so every bin's statistic rests on
thousands of voxels on real data) and each bin gets the target's median, the MAE-optimal constant for the bin.
The table is therefore the best any function of the source intensity alone can do on the training voxels (under
MAE): the floor a learned translation, which also sees context, has to clear. Prediction interpolates linearly
between the bin centres and holds the end values outside them.

``monotone=True`` (``MONOTONE``) makes the medians monotone by weighted isotonic regression (pool adjacent
violators, voxel counts as weights; rising or falling, whichever fits better): a histogram match fitted with the
pairs. It is off by default because the relations that matter are not monotone — T2 -> FLAIR (bright CSF turns
dark) and MR -> CT (dark bone turns bright while dark air stays dark) — and a monotone fit there collapses to
nearly one value (measured on the demo brains: documentation/benchmark.md). The table (``x``, ``y``, whether
monotone and which direction, training cases, voxel count) is ``baseline.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.baselines.base import Baseline, register_baseline

logger = logging.getLogger(__name__)

BINS = 512
#: make the table monotone (a histogram match) instead of the per-bin medians
MONOTONE = False
#: at most this many mask voxels per training case enter the fit (a seeded sample: fits in memory, same result)
MAX_VOXELS_PER_CASE = 2_000_000
SEED = 0


def isotonic(y: np.ndarray, w: np.ndarray, increasing: bool = True) -> np.ndarray:
    """Weighted least-squares monotone fit of ``y`` over its index (scikit-learn's pool adjacent violators)."""
    from sklearn.isotonic import IsotonicRegression

    x = np.arange(len(y), dtype=np.float64)
    fit = IsotonicRegression(increasing=increasing).fit(x, y.astype(np.float64), sample_weight=w.astype(np.float64))
    return fit.predict(x)


def sample_pairs(data_dir: Path, cases: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(source channel 0, target) values inside each case's mask, from the preprocessed store."""
    from autotrans.preprocessing.store import PreprocessedCase

    rng = np.random.default_rng(SEED)
    xs, ys = [], []
    for case in cases:
        pc = PreprocessedCase(data_dir, case)
        src = np.asarray(pc.load("source")[0], dtype=np.float32)
        tgt = np.asarray(pc.load("target"), dtype=np.float32).reshape(src.shape)
        mask = pc.load("mask")
        sel = np.ones(src.shape, bool) if mask is None else np.asarray(mask).reshape(src.shape) > 0
        x, y = src[sel], tgt[sel]
        if x.size > MAX_VOXELS_PER_CASE:
            keep = rng.choice(x.size, MAX_VOXELS_PER_CASE, replace=False)
            x, y = x[keep], y[keep]
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


@register_baseline("intensity_map")
class IntensityMapBaseline(Baseline):
    description = ("a per-intensity look-up table (target median per source bin) from the normalized source to the "
                   "normalized target, fitted inside the masks on the fold's training cases")

    def __init__(self, plans: Any, configuration: Any, monotone: bool = MONOTONE) -> None:
        super().__init__(plans, configuration)
        self.monotone = bool(monotone)

    def fit(self, data_dir: Path, train_cases: list[str]) -> None:
        super().fit(data_dir, train_cases)
        x, y = sample_pairs(Path(data_dir), train_cases)
        if x.size == 0:
            raise ValueError(f"intensity_map: no mask voxels in the training cases {', '.join(train_cases)}")
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        # x is sorted: each bin is a slice [start, stop) between quantile edges (ties never straddle two bins)
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, BINS + 1))[1:-1])
        bounds = np.unique(np.concatenate([[0], np.searchsorted(x, edges, side="left"), [x.size]]))
        slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        centres = np.array([x[sl].mean() for sl in slices], dtype=np.float64)
        medians = np.array([np.median(y[sl]) for sl in slices], dtype=np.float64)
        counts = np.array([sl.stop - sl.start for sl in slices], dtype=np.float64)
        bins = slices
        values, direction = medians, None
        if self.monotone:
            fits = {inc: isotonic(medians, counts, inc) for inc in (True, False)}
            err = {inc: float((counts * (f - medians) ** 2).sum()) for inc, f in fits.items()}
            increasing = err[True] <= err[False]
            values, direction = fits[increasing], "increasing" if increasing else "decreasing"
        self.params.update(x=[float(v) for v in centres], y=[float(v) for v in values], monotone=self.monotone,
                           direction=direction, voxels=int(x.size), bins=int(len(bins)),
                           statistic="median of the target per source bin",
                           space="network (normalized) source channel 0 -> target")
        logger.info("intensity_map: %d bins from %d voxels of %d training case(s)%s", len(bins), x.size,
                    len(train_cases), f", monotone ({direction})" if direction else "")

    def predict_normalized(self, source: np.ndarray) -> np.ndarray:
        xs, ys = np.asarray(self.params["x"]), np.asarray(self.params["y"])
        return np.interp(source[0], xs, ys).astype(np.float32)
