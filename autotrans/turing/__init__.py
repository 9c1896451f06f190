"""Visual Turing test: blinded reader studies of real versus synthetic volumes.

``create_study`` builds a study folder, ``make_server`` serves the reader web app, and
``analyze_studies`` turns the answers into statistics and a report.
"""
from __future__ import annotations

from autotrans.turing.analysis import AnalysisError, analyze_studies, binomial_test, clopper_pearson, fleiss_kappa
from autotrans.turing.server import make_server
from autotrans.turing.study import Study, StudyError, SyntheticSource, create_study, parse_synthetic, reader_links

__all__ = [
    "AnalysisError",
    "Study",
    "StudyError",
    "SyntheticSource",
    "analyze_studies",
    "binomial_test",
    "clopper_pearson",
    "create_study",
    "fleiss_kappa",
    "make_server",
    "parse_synthetic",
    "reader_links",
]
