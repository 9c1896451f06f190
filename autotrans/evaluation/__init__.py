"""Evaluation of synthetic volumes: challenge-exact metrics, lesion-level agreement, model statistics.

Public API (stable for training validation and the benchmark report):
``evaluate_case`` (arrays), ``evaluate_folders`` (files), ``compare_runs`` (statistics across models).
"""
from __future__ import annotations

from autotrans.evaluation.folders import evaluate_folders, pair_cases, summarize, write_results
from autotrans.evaluation.lesions import stratify
from autotrans.evaluation.standards import (
    METRIC_DIRECTION,
    STANDARD_METRICS,
    STANDARDS,
    EvaluationError,
    evaluate_case,
)
from autotrans.evaluation.statistics import compare_runs

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
