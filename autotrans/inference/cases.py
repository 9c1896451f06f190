"""Input cases for prediction: discovery in the raw naming, up-front checks, intensity sanity, preprocessing.

Everything that can be checked from file names and headers is checked before any network runs, so a bad
input folder fails in seconds with one line per problem instead of after an hour of predictions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.dataset.units import CT_MIN_PLAUSIBLE_FLOOR
from autotrans.errors import ConfigurationError, DatasetError
from autotrans.io import Geometry, ImageReadError, SUPPORTED_ENDINGS, read_geometry, read_image
from autotrans.planning.plans import Plans
from autotrans.preprocessing.preprocessor import preprocess_arrays
from autotrans.utils.files import is_hidden

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class InputCase:
    case_id: str
    files: tuple[Path, ...]  # source channels in order
    ending: str


def _split_name(name: str) -> tuple[str, int, str] | None | bool:
    """``(case, channel, ending)``; None for an image named otherwise; False for a non-image file."""
    lower = name.lower()
    for ending in SUPPORTED_ENDINGS:
        if lower.endswith(ending):
            stem = name[: -len(ending)]
            if len(stem) >= 6 and stem[-5] == "_" and stem[-4:].isdigit():
                return stem[:-5], int(stem[-4:]), name[len(stem):]
            return None
    return False


def discover_inputs(folder: Path, num_channels: int) -> list[InputCase]:
    """Cases ``{CASE}_XXXX{ending}`` in ``folder``; all naming problems are reported together."""
    if not folder.is_dir():
        raise ConfigurationError(f"input folder {folder} does not exist")
    found: dict[str, dict[int, Path]] = {}
    endings: dict[str, set[str]] = {}
    problems: list[tuple[str, str]] = []
    for f in sorted(folder.iterdir()):
        if is_hidden(f) or not f.is_file():  # hidden: temporaries of an interrupted write, editors' files
            continue
        parsed = _split_name(f.name)
        if parsed is False:
            logger.warning("%s: not an image (%s), ignored", f, ", ".join(SUPPORTED_ENDINGS))
            continue
        if parsed is None:
            problems.append((f.name, f"not named {{CASE}}_XXXX with one of {', '.join(SUPPORTED_ENDINGS)}"))
            continue
        case, ch, ending = parsed
        if ch >= num_channels:
            problems.append((case, f"channel {ch:04d} but the model takes {num_channels} source channel(s)"))
            continue
        found.setdefault(case, {})[ch] = f
        endings.setdefault(case, set()).add(ending)
    cases = []
    for case in sorted(found):
        missing = [c for c in range(num_channels) if c not in found[case]]
        if missing:
            problems.append((case, f"missing source channel file(s) {', '.join(f'{case}_{c:04d}' for c in missing)}"))
        elif len(endings[case]) > 1:
            problems.append((case, f"channels use different file endings {sorted(endings[case])}"))
        else:
            cases.append(InputCase(case, tuple(found[case][c] for c in range(num_channels)), endings[case].pop()))
    if problems:
        raise DatasetError(problems, header=f"input folder {folder}")
    if not cases:
        raise ConfigurationError(f"input folder {folder} holds no cases named {{CASE}}_0000{{ending}} "
                                 f"(endings: {', '.join(SUPPORTED_ENDINGS)})")
    return cases


def check_headers(cases: list[InputCase]) -> None:
    """Read every header once: unreadable files and channels of different geometry fail up front."""
    problems: list[tuple[str, str]] = []
    for c in cases:
        ref: Geometry | None = None
        for i, f in enumerate(c.files):
            try:
                g = read_geometry(f)
            except ImageReadError as e:
                problems.append((c.case_id, str(e)))
                continue
            if ref is None:
                ref = g
            elif (diff := ref.mismatch(g)) is not None:
                problems.append((c.case_id, f"channel {i:04d} geometry differs from channel 0000: {diff}"))
    if problems:
        raise DatasetError(problems, header="input cases")


def intensity_warnings(case_id: str, source: np.ndarray, plans: Plans, fingerprint: dict[str, Any]) -> list[str]:
    """Plausibility of each channel's values for what the plan trained on (warnings, never errors).

    CT/CBCT must be in HU: raw scanner values (0..4095, rescale slope/intercept not applied) lack air at
    -1000 HU. Every channel's median inside its non-background is compared with the training foreground
    range from the fingerprint: far outside it, the model extrapolates and its output means little.
    """
    out = []
    stats = fingerprint.get("foreground_intensity_properties_per_channel", {})
    for c, modality in enumerate(plans.source_modalities):
        ch = source[c]
        lo, hi = float(ch.min()), float(ch.max())
        if modality in ("CT", "CBCT") and lo > CT_MIN_PLAUSIBLE_FLOOR:
            out.append(f"{case_id}: channel {c:04d} ({modality}) values {lo:g}..{hi:g} do not look like HU "
                       f"(no air near -1000 HU; raw scanner values without rescale slope/intercept?)")
            continue
        st = stats.get(str(c))
        if modality == "MR" or not st:
            continue  # MR has no absolute scale: only its per-case percentiles matter
        fg = ch[ch > -500] if modality in ("CT", "CBCT") else ch[ch != 0]
        if fg.size == 0:
            continue
        med = float(np.median(fg))
        p_lo, p_hi = float(st["percentile_00_5"]), float(st["percentile_99_5"])
        margin = p_hi - p_lo
        if not p_lo - margin <= med <= p_hi + margin:
            out.append(f"{case_id}: channel {c:04d} ({modality}) median {med:g} is far outside the training "
                       f"foreground range {p_lo:g}..{p_hi:g}: the prediction is unlikely to be meaningful")
    return out


def load_source(case: InputCase) -> tuple[np.ndarray, Geometry]:
    """Read all channels as ``(C, z, y, x)`` float32; non-finite voxels are an error (they poison a network)."""
    arrays = []
    geometry: Geometry | None = None
    for i, f in enumerate(case.files):
        arr, g = read_image(f)
        if geometry is None:
            geometry = g
        elif (diff := geometry.mismatch(g)) is not None:
            raise ValueError(f"channel {i:04d} geometry differs from channel 0000: {diff}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{f.name} contains NaN or Inf voxels")
        arrays.append(arr)
    assert geometry is not None
    return np.stack(arrays), geometry


def preprocess_case(source: np.ndarray, geometry: Geometry, plans: Plans, cfg_name: str
                    ) -> tuple[np.ndarray, dict[str, Any]]:
    """The training preprocessing (``preprocess_arrays``, no second implementation) without target or mask."""
    arrays, props = preprocess_arrays(source, geometry, plans, plans.configuration(cfg_name))
    return arrays["source"], props


def load_and_preprocess(task: tuple[InputCase, Plans, str, dict[str, Any]]) -> dict[str, Any]:
    """Worker entry (picklable): read, check and preprocess one case; errors come back as text, not raised."""
    case, plans, cfg_name, fingerprint = task
    try:
        source, geometry = load_source(case)
        warnings = intensity_warnings(case.case_id, source, plans, fingerprint)
        data, props = preprocess_case(source, geometry, plans, cfg_name)
    except (ImageReadError, ValueError) as e:
        return {"case": case, "error": str(e)}
    props["case"] = case.case_id
    return {"case": case, "data": data, "properties": props, "warnings": warnings}
