"""Reference baselines that need no training: models to the benchmark, not families to the trainer.

A baseline has a ``fit(train cases) / predict(case)`` face (``Baseline``): it is fitted on the fold's training
cases in the preprocessed store and predicts a held-out case through the inference chain's own preprocessing
and export (``autotrans.inference.cases.preprocess_case``, ``export_ensemble``), so its predictions are in the
same geometry and units as every model's and are scored by the same evaluation. The benchmark grid runs a
baseline task like a model task (``autotrans_benchmark -m identity intensity_map ...``) and the report marks
its rows as baselines. See documentation/benchmark.md, "Baselines".

- ``identity``: the source's first channel, in the target's units, where source and target are the same
  modality family (CT/CBCT, MR, PET); skipped with a note elsewhere.
- ``intensity_map``: a monotone look-up table from the normalized source to the normalized target, fitted
  inside the masks on the fold's training cases only.
"""
from __future__ import annotations

from autotrans.baselines.base import (
    Baseline,
    BaselineNotApplicable,
    available_baselines,
    get_baseline,
    is_baseline,
    register_baseline,
)
from autotrans.baselines import identity, intensity_map  # noqa: F401  (importing registers them)

__all__ = ["Baseline", "BaselineNotApplicable", "available_baselines", "get_baseline", "is_baseline",
           "register_baseline"]
