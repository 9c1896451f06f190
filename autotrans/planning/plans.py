"""Typed access to plans.json, so no code outside planning/ reads it as a raw dict."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrans.errors import ConfigurationError
from autotrans.preprocessing.normalization import Normalization, normalization_from_dict
from autotrans.utils.files import load_json


@dataclass(frozen=True)
class Configuration:
    """One configuration (``3d_fullres``, ``3d_lowres`` or a user-added one) of a plan."""

    name: str
    data: dict[str, Any]

    @property
    def data_identifier(self) -> str:
        return self.data["data_identifier"]

    @property
    def spacing(self) -> list[float]:
        """Target spacing, already transposed (``transpose_forward`` applied)."""
        return list(self.data["spacing"])

    @property
    def patch_size(self) -> list[int]:
        return list(self.data["patch_size"])

    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    @property
    def architecture(self) -> dict[str, Any]:
        return self.data["architecture"]

    def resampling(self, kind: str) -> dict[str, Any]:
        return self.data["resampling"][kind]

    def family(self, name: str) -> dict[str, Any]:
        fams = self.data.get("families", {})
        if name not in fams:
            raise ConfigurationError(f"configuration {self.name!r} has no section for family {name!r} (has: {', '.join(fams)})")
        return fams[name]


class Plans:
    """A loaded plans.json with accessors for what preprocessing, training and inference need."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._source_norm = [normalization_from_dict(d) for d in data["normalization"]["source"]]
        self._target_norm = normalization_from_dict(data["normalization"]["target"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plans":
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"{path}: plans not found (run autotrans_plan_and_preprocess first)")
        return cls(load_json(path))

    @property
    def name(self) -> str:
        return self.data["plans_name"]

    @property
    def dataset_name(self) -> str:
        return self.data["dataset_name"]

    @property
    def transpose_forward(self) -> list[int]:
        return list(self.data["transpose_forward"])

    @property
    def transpose_backward(self) -> list[int]:
        return list(self.data["transpose_backward"])

    @property
    def source_modalities(self) -> list[str]:
        return [c["modality"] for c in self.data["source_channels"]]

    @property
    def target_modality(self) -> str:
        return self.data["target"]["modality"]

    @property
    def source_normalization(self) -> list[Normalization]:
        return list(self._source_norm)

    @property
    def target_normalization(self) -> Normalization:
        return self._target_norm

    @property
    def configuration_names(self) -> list[str]:
        return list(self.data["configurations"])

    def configuration(self, name: str) -> Configuration:
        cfgs = self.data["configurations"]
        if name not in cfgs:
            raise ConfigurationError(f"unknown configuration {name!r} (plans have: {', '.join(cfgs)})")
        cfg = dict(cfgs[name])
        parent = cfg.pop("inherits_from", None)
        if parent is not None:  # nnU-Net style inheritance for user-added configurations
            base = dict(self.configuration(parent).data)
            base.update(cfg)
            cfg = base
        return Configuration(name=name, data=cfg)
