"""Evaluation of synthetic volumes: challenge-exact metrics, lesion-level agreement, model statistics.

Public API (stable for training validation and the benchmark report):
``evaluate_case`` (arrays), ``evaluate_folders`` (files), ``compare_runs`` (statistics across models).
"""
from __future__ import annotations

import importlib
from typing import Any

#: the public names and the submodule each lives in: imported on first use (PEP 562), so a command's ``--help``
#: that only needs ``autotrans.evaluation.standards``' constants does not pay for SciPy and the statistics
_EXPORTS = {
    "evaluate_folders": "folders", "pair_cases": "folders", "summarize": "folders", "write_results": "folders",
    "stratify": "lesions", "METRIC_DIRECTION": "standards", "STANDARD_METRICS": "standards",
    "STANDARDS": "standards", "EvaluationError": "standards", "evaluate_case": "standards",
    "compare_runs": "statistics",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"autotrans.evaluation.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autotrans.evaluation' has no attribute {name!r}")


__all__ = [
    "METRIC_DIRECTION",
    "STANDARDS",
    "STANDARD_METRICS",
    "EvaluationError",
    "compare_runs",
    "evaluate_case",
    "evaluate_folders",
    "pair_cases",
    "stratify",
    "summarize",
    "write_results",
]
