"""Invertible intensity normalization in physical units, one scheme per modality, parameters in the plan.

Every scheme maps the values that matter into [-1, 1] (the range of a tanh / clamped generator) and can be
inverted exactly from the plan plus, for MR, the per-case parameters stored with the case. Padding and
background use each scheme's ``air`` value: the normalized value of air/background, never the 0 of a
z-scored space. The rule for clipping: a *source* channel is never clipped where its values still carry
information (generator inputs need not be bounded), a *target* is bounded only where the generator cannot
reach, and the planner places those bounds beyond the largest value seen in the training data, so on the
training data nothing inside the foreground is clipped. What a scheme does clip is counted per case at
preprocessing (``clip_bounds``; the case's properties JSON, ``clipped_voxels``).

- CT/CBCT (``window``): clip to a fixed HU window (default [-1024, 3071]) and map linearly. Dataset
  percentiles (nnU-Net's CT scheme) would cut bone, which is exactly what MR->CT must synthesize.
- MR (``percentile``): per-case robust scaling inside the region the parameters are fitted on (the
  source's own non-background for a source; the mask for a target). Two spaces:

  * the **output scale** (what predictions are exported and evaluated in, ``unit``):
    ``v = 2 (x - p0.5) / (p99.5 - p0.5) - 1``, p0.5 -> -1, p99.5 -> +1, *not clipped*: a lesion brighter
    than the case's p99.5 keeps its value above +1;
  * the **network space** compresses it so ``v`` in ``[-1 - 2 footroom, 2 headroom - 1]`` fits in
    [-1, 1]: ``y = 2 (r + footroom) / (headroom + footroom) - 1`` with ``r = (v + 1) / 2``. ``headroom`` and
    ``footroom`` are planned from the data (largest ``(max - p0.5) / (p99.5 - p0.5)`` and
    ``(p0.5 - min) / (p99.5 - p0.5)`` over the training cases' targets, times ``MR_ROOM_MARGIN``, capped at
    ``MR_HEADROOM_CAP`` / ``MR_FOOTROOM_CAP``). A target is clipped only at the ends of that range
    (last resort, counted). Sources keep ``headroom = 1, footroom = 0`` and are never clipped.

  ``to_output_scale`` maps network space to the output scale, ``inverse`` network space to raw intensity.
- PET (``suv``): SUV -> [-1, 1] by ``log1p`` (default) or linearly, with SUV ``ceiling`` -> +1. The ceiling
  is ``PET_CEILING_HEADROOM`` times the largest SUV of the training data (per-case maxima from the
  fingerprint, not a pooled voxel sample that can miss the hottest voxel), so no training lesion is cut.
  log1p spends the network range where most of the SUV values are (0-5) while staying exactly invertible.
  Targets are clipped to [0, ceiling] (beyond the ceiling only as a counted last resort); sources are only
  floored at 0 (negative SUV is reconstruction noise, and log1p needs > -1) and extrapolate above it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from autotrans.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: PET ceiling = this factor x the largest SUV in the training data (targets: no training voxel is clipped)
PET_CEILING_HEADROOM = 1.5
#: safety factor on the largest per-case MR ratios (max - p_low) / (p_high - p_low) and (p_low - min) / ...
MR_ROOM_MARGIN = 1.1
#: largest MR target headroom: values up to p_low + 3 (p_high - p_low), i.e. 3 x the case's robust span,
#: fit; beyond that a voxel is an outlier (artefact, vessel flow), clipped and counted. The cap bounds how
#: much the bulk of the tissue is compressed in network space (to >= 2 / (cap + footroom cap) of [-1, 1]).
MR_HEADROOM_CAP = 3.0
#: largest MR target footroom (values down to p_low - 0.5 (p_high - p_low) fit)
MR_FOOTROOM_CAP = 0.5
#: the percentiles the fingerprint records per case (MR rooms can be planned from them only for these)
FINGERPRINT_MR_PERCENTILES = (0.5, 99.5)

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
        """Normalized (network-space) value of background (air for CT, 0 SUV for PET, darkest tissue for MR)."""
        return -1.0

    @property
    def output_background(self) -> float:
        """Value written outside the crop by an export that stays in the output scale (``invert=False``)."""
        return self.air

    def physical_background(self) -> float:
        """Physical value written outside the crop on export."""
        return 0.0

    def fit_case(self, values: np.ndarray) -> dict[str, float]:
        """Per-case parameters from foreground voxels (empty for dataset-level schemes)."""
        return {}

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        """Raw (physical) values -> network space."""
        raise NotImplementedError

    def inverse(self, y: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        """Network space -> raw (physical) values; exact for every value ``forward`` did not clip."""
        raise NotImplementedError

    def clip_bounds(self, case_params: dict[str, float] | None = None) -> tuple[float | None, float | None]:
        """Raw values below / above these are clipped by ``forward`` (None: not clipped on that side)."""
        return None, None

    def to_output_scale(self, y: np.ndarray) -> np.ndarray:
        """Network space -> the scale an export without inversion is written in (identity here)."""
        return np.asarray(y, dtype=np.float32)

    def from_output_scale(self, v: np.ndarray) -> np.ndarray:
        """Inverse of ``to_output_scale``."""
        return np.asarray(v, dtype=np.float32)

    def raw_to_output_scale(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        """Raw values -> the unit predictions are exported in (the plan's ``target_output_scale``), unclipped.

        Physical units for dataset-level schemes (predictions are inverted on export); the per-case output
        scale for MR. Every reference a prediction is scored against is built with this.
        """
        return np.asarray(x, dtype=np.float32)

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

    def clip_bounds(self, case_params: dict[str, float] | None = None) -> tuple[float | None, float | None]:
        return self.window

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
    """Per-case robust scaling: output scale ``p_low`` -> -1, ``p_high`` -> +1 (unclipped); the network space
    fits ``[-1 - 2 footroom, 2 headroom - 1]`` of it into [-1, 1], clipped there only when ``clip``."""

    scheme: ClassVar[str] = "percentile"
    per_case: ClassVar[bool] = True
    p_low: float = 0.5
    p_high: float = 99.5
    clip: bool = False
    headroom: float = 1.0
    footroom: float = 0.0

    def __post_init__(self) -> None:
        if not self.p_high > self.p_low:
            raise ConfigurationError(f"MR percentiles ({self.p_low}, {self.p_high}): upper must exceed lower")
        if not (math.isfinite(self.headroom) and self.headroom >= 1.0):
            raise ConfigurationError(f"MR headroom must be a finite number >= 1, got {self.headroom}")
        if not (math.isfinite(self.footroom) and self.footroom >= 0.0):
            raise ConfigurationError(f"MR footroom must be a finite number >= 0, got {self.footroom}")
        object.__setattr__(self, "headroom", float(self.headroom))
        object.__setattr__(self, "footroom", float(self.footroom))

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

    @property
    def output_background(self) -> float:
        return -1.0  # p_low: background outside the crop is written as the darkest tissue, as documented

    def _params(self, case_params: dict[str, float] | None) -> tuple[float, float]:
        if not case_params or "low" not in case_params:
            raise ValueError("percentile normalization needs the case's 'low'/'high' parameters")
        return float(case_params["low"]), float(case_params["high"])

    @property
    def _span(self) -> float:
        return self.headroom + self.footroom

    def clip_bounds(self, case_params: dict[str, float] | None = None) -> tuple[float | None, float | None]:
        if not self.clip:
            return None, None
        lo, hi = self._params(case_params)
        return lo - self.footroom * (hi - lo), lo + self.headroom * (hi - lo)

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self._params(case_params)
        r = (np.asarray(x, dtype=np.float64) - lo) / (hi - lo)  # 0 at p_low, 1 at p_high
        y = (r + self.footroom) * (2.0 / self._span) - 1.0
        if self.clip:
            np.clip(y, -1.0, 1.0, out=y)
        return y.astype(np.float32)

    def inverse(self, y: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self._params(case_params)
        r = (np.asarray(y, dtype=np.float64) + 1.0) * (self._span / 2.0) - self.footroom
        return (r * (hi - lo) + lo).astype(np.float32)

    def to_output_scale(self, y: np.ndarray) -> np.ndarray:
        r = (np.asarray(y, dtype=np.float64) + 1.0) * (self._span / 2.0) - self.footroom
        return (2.0 * r - 1.0).astype(np.float32)

    def from_output_scale(self, v: np.ndarray) -> np.ndarray:
        r = (np.asarray(v, dtype=np.float64) + 1.0) / 2.0
        return ((r + self.footroom) * (2.0 / self._span) - 1.0).astype(np.float32)

    def raw_to_output_scale(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        lo, hi = self._params(case_params)
        return ((np.asarray(x, dtype=np.float64) - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)


@register
@dataclass(frozen=True)
class SUVNormalization(Normalization):
    """SUV -> [-1, 1] via log1p or linearly (``transform``), ``ceiling`` -> +1; floored at 0 SUV, clipped at
    the ceiling only when ``clip`` (targets; sources extrapolate above it)."""

    scheme: ClassVar[str] = "suv"
    ceiling: float = 20.0
    transform: str = "log1p"
    clip: bool = True

    def __post_init__(self) -> None:
        if self.transform not in ("linear", "log1p"):
            raise ConfigurationError(f"PET transform {self.transform!r}: use 'linear' or 'log1p'")
        if not (math.isfinite(self.ceiling) and self.ceiling > 0):
            raise ConfigurationError(f"PET SUV ceiling must be > 0, got {self.ceiling}")
        object.__setattr__(self, "ceiling", float(self.ceiling))

    @property
    def unit(self) -> str:
        return "SUV"

    def clip_bounds(self, case_params: dict[str, float] | None = None) -> tuple[float | None, float | None]:
        return 0.0, (self.ceiling if self.clip else None)

    def forward(self, x: np.ndarray, case_params: dict[str, float] | None = None) -> np.ndarray:
        c = self.ceiling
        v = np.clip(np.asarray(x, dtype=np.float64), 0.0, c if self.clip else None)
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
    pet_transform: str = "log1p"
    pet_ceiling: float | None = None  # None: PET_CEILING_HEADROOM x the largest per-case SUV of that channel
    mr_percentiles: tuple[float, float] = FINGERPRINT_MR_PERCENTILES
    extra: dict[str, Any] = field(default_factory=dict)


def _finite(stats: dict[str, float] | None, *keys: str) -> bool:
    return bool(stats) and all(k in stats and stats[k] is not None and math.isfinite(float(stats[k])) for k in keys)


def pet_ceiling(stats: dict[str, float] | None, case_stats: Sequence[dict[str, float] | None] = ()) -> float:
    """``PET_CEILING_HEADROOM`` x the largest SUV: the per-case maxima (every foreground voxel) and the pooled
    maximum; a fingerprint without maxima falls back to the pooled p99.9, nothing at all to 20 SUV."""
    maxima = [float(s["max"]) for s in (*case_stats, stats) if _finite(s, "max")]
    if maxima:
        base = max(maxima)
    elif _finite(stats, "percentile_99_9"):
        base = float(stats["percentile_99_9"])
    else:
        return 20.0
    return max(PET_CEILING_HEADROOM * base, 1e-3)


def _round_up(x: float, digits: int = 4) -> float:
    """Readable plan values that never shrink the room (rounded up)."""
    return math.ceil(x * 10**digits) / 10**digits


def mr_target_rooms(case_stats: Sequence[dict[str, float] | None], percentiles: tuple[float, float]
                    ) -> tuple[float, float]:
    """``(headroom, footroom)`` of an MR target from the per-case target statistics of the fingerprint.

    headroom = max over cases of (max - p_low) / (p_high - p_low) x ``MR_ROOM_MARGIN``, at least 1, at most
    ``MR_HEADROOM_CAP``; footroom likewise from (p_low - min). Without usable statistics (none recorded, or
    percentiles other than the fingerprint's p0.5/p99.5) the caps are used: nothing is clipped that fits them.
    """
    usable = [s for s in case_stats if _finite(s, "min", "max", "percentile_00_5", "percentile_99_5")
              and float(s["percentile_99_5"]) > float(s["percentile_00_5"])]
    if tuple(float(p) for p in percentiles) != FINGERPRINT_MR_PERCENTILES or not usable:
        logger.info("MR target: no per-case p%g/p%g statistics in the fingerprint; headroom %g and footroom %g "
                    "(the caps)", *percentiles, MR_HEADROOM_CAP, MR_FOOTROOM_CAP)
        return MR_HEADROOM_CAP, MR_FOOTROOM_CAP
    up = down = 0.0
    for s in usable:
        lo, hi = float(s["percentile_00_5"]), float(s["percentile_99_5"])
        up = max(up, (float(s["max"]) - lo) / (hi - lo))
        down = max(down, (lo - float(s["min"])) / (hi - lo))
    headroom = min(MR_HEADROOM_CAP, max(1.0, up * MR_ROOM_MARGIN))
    footroom = min(MR_FOOTROOM_CAP, max(0.0, down * MR_ROOM_MARGIN))
    if up * MR_ROOM_MARGIN > MR_HEADROOM_CAP or down * MR_ROOM_MARGIN > MR_FOOTROOM_CAP:
        logger.warning("MR target: the brightest/darkest training voxels lie %.3g / %.3g robust spans beyond "
                       "p%g/p%g, more than the caps (%g / %g): they will be clipped (counted per case)",
                       up, down, *percentiles, MR_HEADROOM_CAP, MR_FOOTROOM_CAP)
    return _round_up(headroom), _round_up(footroom)


def plan_normalization(modality: str, stats: dict[str, float] | None, is_target: bool,
                       defaults: NormalizationDefaults = NormalizationDefaults(),
                       case_stats: Sequence[dict[str, float] | None] = ()) -> Normalization:
    """Choose and parametrize the scheme for one channel (a source channel or the target).

    ``stats`` are the pooled foreground statistics of that channel, ``case_stats`` its per-case statistics
    (``fingerprint["cases"][case]["channels"][str(i)]`` or ``[...]["target"]``).
    """
    if modality in ("CT", "CBCT"):
        return WindowNormalization(window=tuple(defaults.ct_window))
    if modality == "MR":
        p = (float(defaults.mr_percentiles[0]), float(defaults.mr_percentiles[1]))
        if not is_target:  # a source keeps its tails: generator inputs need not be bounded
            return PercentileNormalization(p_low=p[0], p_high=p[1], clip=False)
        headroom, footroom = mr_target_rooms(case_stats, p)
        return PercentileNormalization(p_low=p[0], p_high=p[1], clip=True, headroom=headroom, footroom=footroom)
    if modality == "PET":
        ceiling = defaults.pet_ceiling if defaults.pet_ceiling is not None else pet_ceiling(stats, case_stats)
        return SUVNormalization(ceiling=ceiling, transform=defaults.pet_transform, clip=is_target)
    raise ConfigurationError(f"unknown modality {modality!r} (valid: CT, CBCT, MR, PET)")
