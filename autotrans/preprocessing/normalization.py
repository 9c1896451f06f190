"""Invertible intensity normalization in physical units, one scheme per modality, parameters in the plan.

Every scheme maps to roughly [-1, 1] (the range of a tanh generator) and can be inverted exactly from the
plan plus, for MR, the per-case parameters stored with the case. Padding and background use each scheme's
``air`` value: the normalized value of air/background, never the 0 of a z-scored space.

- CT/CBCT (``window``): clip to a fixed HU window (default [-1024, 3071]) and map linearly. Dataset
  percentiles (nnU-Net's CT scheme) would cut bone, which is exactly what MR->CT must synthesize.
- MR (``percentile``): per-case robust scaling inside the mask, p0.5 -> -1 and p99.5 -> +1. MR has no
  absolute scale, so a target stays in this normalized scale (as BraSyn evaluates), which the plan records.
- PET (``suv``): SUV clipped to [0, ceiling] (ceiling from the fingerprint's p99.9) then linear or log1p.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from autotrans.errors import ConfigurationError

_REGISTRY: dict[str, type["Normalization"]] = {}


def register(cls: type["Normalization"]) -> type["Normalization"]:
    _REGISTRY[cls.scheme] = cls
    return cls


def normalization_from_dict(d: dict[str, Any]) -> "Normalization":
    """Build a scheme from its plan entry; unknown names list the valid ones."""
    name = d.get("scheme")
    if name not in _REGISTRY:
        raise ConfigurationError(f"unknown normalization scheme {name!r} (valid: {', '.join(sorted(_REGISTRY))})")
    kwargs = {k: v for k, v in d.items() if k != "scheme" and k in _REGISTRY[name].__dataclass_fields__}
    return _REGISTRY[name](**kwargs)


@dataclass(frozen=True)
class Normalization:
    scheme: ClassVar[str] = ""
    per_case: ClassVar[bool] = False

    @property
    def air(self) -> float:
        """Normalized value of background (air for CT, 0 SUV for PET, darkest tissue for MR)."""
        return -1.0

    def physical_background(self) -> float:
        """Physical value written outside the crop on export."""
        return 0.0

    def fit_case(self, values: np.ndarray) -> dict[str, float]:
        """Per-case parameters from foreground voxels (empty for dataset-level schemes)."""
        return {}

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, **asdict(self), "air_value": self.air,
                "physical_background": self.physical_background(), "unit": self.unit}

    @property
    def unit(self) -> str:
        return ""


@register
@dataclass(frozen=True)
class WindowNormalization(Normalization):
    """Clip to ``window`` (HU) and map linearly to [-1, 1]. Used for CT and CBCT."""

    scheme: ClassVar[str] = "window"
    window: tuple[float, float] = (-1024.0, 3071.0)

    def __post_init__(self) -> None:
        lo, hi = self.window
        if not hi > lo:
            raise ConfigurationError(f"HU window {self.window}: upper bound must exceed lower bound")
        object.__setattr__(self, "window", (float(lo), float(hi)))

    def physical_background(self) -> float:
        return self.window[0]

    @property
    def unit(self) -> str:
        return "HU"

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self.window
        y = np.clip(np.asarray(x, dtype=np.float32), lo, hi)
        y -= lo
        y *= np.float32(2.0 / (hi - lo))
        y -= 1.0
        return y

    def inverse(self, y: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self.window
        x = np.asarray(y, dtype=np.float64) + 1.0
        x *= (hi - lo) / 2.0
        x += lo
        return x.astype(np.float32)


@register
@dataclass(frozen=True)
class PercentileNormalization(Normalization):
    """Per-case robust scaling inside the mask: ``p_low`` -> -1, ``p_high`` -> +1; optional clipping."""

    scheme: ClassVar[str] = "percentile"
    per_case: ClassVar[bool] = True
    p_low: float = 0.5
    p_high: float = 99.5
    clip: bool = False

    def fit_case(self, values: np.ndarray) -> dict[str, float]:
        if values.size == 0:
            raise ValueError("no foreground voxels to fit MR percentiles")
        lo, hi = np.percentile(values.astype(np.float64), (self.p_low, self.p_high))
        if hi <= lo:  # constant image: keep the mapping invertible
            hi = lo + 1.0
        return {"low": float(lo), "high": float(hi)}

    @property
    def unit(self) -> str:
        return f"MR normalized per case (p{self.p_low:g} -> -1, p{self.p_high:g} -> +1)"

    def _params(self, case_params: dict[str, float] | None) -> tuple[float, float]:
        if not case_params or "low" not in case_params:
            raise ValueError("percentile normalization needs the case's 'low'/'high' parameters")
        return float(case_params["low"]), float(case_params["high"])

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self._params(case_params)
        y = (np.asarray(x, dtype=np.float64) - lo) * (2.0 / (hi - lo)) - 1.0
        if self.clip:
            np.clip(y, -1.0, 1.0, out=y)
        return y.astype(np.float32)

    def inverse(self, y: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self._params(case_params)
        return ((np.asarray(y, dtype=np.float64) + 1.0) * ((hi - lo) / 2.0) + lo).astype(np.float32)


@register
@dataclass(frozen=True)
class SUVNormalization(Normalization):
    """SUV clipped to [0, ``ceiling``], mapped to [-1, 1] linearly or via log1p (``transform``)."""

    scheme: ClassVar[str] = "suv"
    ceiling: float = 20.0
    transform: str = "linear"

    def __post_init__(self) -> None:
        if self.transform not in ("linear", "log1p"):
            raise ConfigurationError(f"PET transform {self.transform!r}: use 'linear' or 'log1p'")
        if not self.ceiling > 0:
            raise ConfigurationError(f"PET SUV ceiling must be > 0, got {self.ceiling}")
        object.__setattr__(self, "ceiling", float(self.ceiling))

    @property
    def unit(self) -> str:
        return "SUV"

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        c = self.ceiling
        v = np.clip(np.asarray(x, dtype=np.float64), 0.0, c)
        if self.transform == "log1p":
            y = np.log1p(v) * (2.0 / np.log1p(c)) - 1.0
        else:
            y = v * (2.0 / c) - 1.0
        return y.astype(np.float32)

    def inverse(self, y: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        c = self.ceiling
        t = (np.asarray(y, dtype=np.float64) + 1.0) / 2.0
        v = np.expm1(t * np.log1p(c)) if self.transform == "log1p" else t * c
        return np.clip(v, 0.0, None).astype(np.float32)


@dataclass(frozen=True)
class NormalizationDefaults:
    """User-facing knobs of the planner's normalization choice (CLI flags map onto these)."""

    ct_window: tuple[float, float] = (-1024.0, 3071.0)
    pet_transform: str = "linear"
    pet_ceiling: float | None = None  # None: the fingerprint's p99.9 of that channel
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    extra: dict[str, Any] = field(default_factory=dict)


def plan_normalization(modality: str, stats: dict[str, float] | None, is_target: bool,
                       defaults: NormalizationDefaults = NormalizationDefaults()) -> Normalization:
    """Choose and parametrize the scheme for one channel (a source channel or the target)."""
    if modality in ("CT", "CBCT"):
        return WindowNormalization(window=tuple(defaults.ct_window))
    if modality == "MR":
        # A target is clipped so it lies in the generator's output range; sources keep their tails.
        return PercentileNormalization(p_low=defaults.mr_percentiles[0], p_high=defaults.mr_percentiles[1], clip=is_target)
    if modality == "PET":
        ceiling = defaults.pet_ceiling
        if ceiling is None:
            ceiling = float(stats["percentile_99_9"]) if stats else 20.0
            ceiling = max(ceiling, 1e-3)
        return SUVNormalization(ceiling=ceiling, transform=defaults.pet_transform)
    raise ConfigurationError(f"unknown modality {modality!r} (valid: CT, CBCT, MR, PET)")
