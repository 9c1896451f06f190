"""The baseline interface and its registry.

A baseline maps a preprocessed (normalized) source ``(C, z, y, x)`` to a normalized target ``(z, y, x)``;
everything around it — reading, cropping, resampling, normalizing, inverting to HU / SUV / the plan's MR scale,
un-cropping — is the inference chain's, so a baseline's prediction differs from a model's only in the mapping.
Fitted parameters are a small JSON (``baseline.json`` in the fold folder of the results), readable and
reproducible.
"""
from __future__ import annotations

import difflib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autotrans.errors import ConfigurationError
from autotrans.planning.plans import Configuration, Plans

_BASELINES: dict[str, type["Baseline"]] = {}
#: modality families in which a source is already "the target, badly": same physical quantity
MODALITY_FAMILIES = {"CT": "CT", "CBCT": "CT", "MR": "MR", "PET": "PET"}


class BaselineNotApplicable(ConfigurationError):
    """The baseline makes no sense for this dataset (e.g. identity for MR -> CT); the report shows the note."""


def register_baseline(name: str) -> Callable[[type["Baseline"]], type["Baseline"]]:
    def deco(cls: type["Baseline"]) -> type["Baseline"]:
        cls.name = name
        _BASELINES[name] = cls
        return cls

    return deco


def available_baselines() -> list[str]:
    return sorted(_BASELINES)


def is_baseline(name: str) -> bool:
    return name in _BASELINES


def get_baseline(name: str) -> type["Baseline"]:
    if name not in _BASELINES:
        close = difflib.get_close_matches(name, list(_BASELINES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(f"unknown baseline {name!r}{hint}; available: {', '.join(available_baselines())}")
    return _BASELINES[name]


class Baseline(ABC):
    """A training-free mapping from the normalized source to the normalized target."""

    name: str = ""
    #: one line for the report and the docs
    description: str = ""

    def __init__(self, plans: Plans, configuration: Configuration) -> None:
        self.plans = plans
        self.configuration = configuration
        self.params: dict[str, Any] = {}

    def not_applicable(self) -> str | None:
        """Why this baseline makes no sense for the plan's modalities (None: it applies)."""
        return None

    def check(self) -> None:
        reason = self.not_applicable()
        if reason:
            raise BaselineNotApplicable(f"{self.name}: {reason}")

    def fit(self, data_dir: Path, train_cases: list[str]) -> None:
        """Fit on the fold's training cases in the preprocessed folder ``data_dir`` (default: nothing to fit)."""
        self.check()
        self.params = {"baseline": self.name, "train_cases": list(train_cases)}

    @abstractmethod
    def predict_normalized(self, source: np.ndarray) -> np.ndarray:
        """Normalized source ``(C, z, y, x)`` -> normalized target ``(z, y, x)`` (network space)."""

    def predict(self, source: np.ndarray, geometry: Any, case_id: str = "case") -> np.ndarray:
        """Raw source ``(C, z, y, x)`` in its geometry -> prediction in the target's physical units (HU, SUV) or
        the plan's MR output scale, in the source's geometry: the inference chain's preprocessing and export."""
        from autotrans.inference.cases import preprocess_case
        from autotrans.inference.predictor import export_ensemble

        data, props = preprocess_case(source, geometry, self.plans, self.configuration.name)
        props["case"] = case_id
        pred = self.predict_normalized(data).astype(np.float32)
        invert = not self.plans.target_normalization.per_case  # as Predictor.invert
        return export_ensemble([pred], props, self.plans, self.configuration, invert, False)[0]

    def save(self, path: Path) -> None:
        from autotrans.utils.files import save_json

        save_json(self.params, path)

    def load(self, path: Path) -> "Baseline":
        self.check()
        with open(path) as f:
            self.params = json.load(f)
        return self
