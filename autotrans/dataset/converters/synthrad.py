"""SynthRAD2023 and SynthRAD2025: MRI→CT (Task 1) and CBCT→CT (Task 2) for radiotherapy.

Both challenges ship one folder per case named after task, region, centre and number (``1BA001``:
task 1, brain, centre A; ``2HNA001``: task 2, head & neck, centre A) holding ``mr``/``cbct``, ``ct`` and
``mask`` already rigidly registered and resampled to one grid. The case id therefore carries the task and
region, so we find case folders by name at any depth rather than trusting the wrapping folders, which
differ between the Zenodo archives.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from autotrans.dataset.converters.common import CaseSource, ConversionPlan, find_dirs, parse_direction
from autotrans.dataset.format import ChannelInfo
from autotrans.errors import ConfigurationError
from autotrans.io import SUPPORTED_ENDINGS

logger = logging.getLogger(__name__)

_MODS = {"mr": ChannelInfo("MR", "MR"), "cbct": ChannelInfo("CBCT", "CBCT"), "ct": ChannelInfo("CT", "CT")}
# Which task holds which pair; the reverse directions are allowed for completeness (e.g. CT→MR).
_TASK_OF_PAIR = {frozenset({"mr", "ct"}): "1", frozenset({"cbct", "ct"}): "2"}

EDITIONS = {
    "synthrad2023": {
        "case_re": re.compile(r"^([12])([BP])([A-Z])(\d{3})$"),
        "regions": {"B": "brain", "P": "pelvis"},
        "example": "Task1/brain/1BA001/{mr,ct,mask}.nii.gz",
        "licence": "CC BY-NC 4.0 as stated on the Zenodo record (doi:10.5281/zenodo.7260705); see the dataset's terms",
        "reference": (
            "Thummerer A, van der Bijl E, Galapon A Jr, et al. SynthRAD2023 Grand Challenge dataset: generating "
            "synthetic CT for radiotherapy. Med Phys. 2023;50(7):4664-4674. doi:10.1002/mp.16529"
        ),
    },
    "synthrad2025": {
        "case_re": re.compile(r"^([12])(HN|TH|AB)([A-Z])(\d{3})$"),
        "regions": {"HN": "HN", "TH": "TH", "AB": "AB"},
        "example": "Task1/HN/1HNA001/{mr,ct,mask}.mha",
        "licence": "see the dataset's terms (SynthRAD2025 Zenodo records and challenge rules)",
        "reference": (
            "Thummerer A, van der Bijl E, Galapon A Jr, et al. SynthRAD2025 Grand Challenge dataset: generating "
            "synthetic CTs for radiotherapy from head to abdomen. Med Phys. 2025. arXiv:2502.17609"
        ),
    },
}


def _find_file(case_dir: Path, stem: str) -> Path | None:
    for ending in SUPPORTED_ENDINGS:
        p = case_dir / f"{stem}{ending}"
        if p.is_file():
            return p
    return None


def plan_synthrad(edition: str, source: Path, direction: str | None, region: str | None) -> ConversionPlan:
    """Describe a SynthRAD download as a conversion plan (no file is read beyond directory listings)."""
    ed = EDITIONS[edition]
    srcs, tgt = parse_direction(direction or "mr:ct", {k: k for k in _MODS})
    if len(srcs) != 1 or frozenset({srcs[0], tgt}) not in _TASK_OF_PAIR:
        raise ConfigurationError(f"--direction {direction!r}: {edition} offers mr:ct (Task 1) and cbct:ct (Task 2)")
    src = srcs[0]
    task = _TASK_OF_PAIR[frozenset({src, tgt})]
    regions = ed["regions"]
    wanted: set[str] | None = None
    if region and region.lower() != "all":
        by_name = {v.lower(): k for k, v in regions.items()}
        keys = []
        for r in region.split(","):
            if r.strip().lower() not in by_name:
                raise ConfigurationError(
                    f"--region {region!r}: {edition} regions are {', '.join(regions.values())} (or all)"
                )
            keys.append(by_name[r.strip().lower()])
        wanted = set(keys)

    case_re = ed["case_re"]

    def is_case(d: Path) -> bool:
        m = case_re.match(d.name)
        return bool(m) and m.group(1) == task

    case_dirs = find_dirs(source, is_case, max_depth=4)
    if not case_dirs:
        raise ConfigurationError(
            f"{source}: no {edition} Task {task} case folders found (expected a layout like {ed['example']})"
        )
    if wanted is not None:
        case_dirs = [d for d in case_dirs if case_re.match(d.name).group(2) in wanted]
        if not case_dirs:
            raise ConfigurationError(f"{source}: no {edition} Task {task} cases of region {region}")
    plan = ConversionPlan(
        default_name=f"{edition.replace('synthrad', 'SynthRAD')}_{src.upper()}to{tgt.upper()}",
        source_channels=[_MODS[src]],
        target=_MODS[tgt],
        description=(
            f"{edition} Task {task} ({src.upper()}→{tgt.upper()}), regions "
            f"{', '.join(sorted({regions[case_re.match(d.name).group(2)] for d in case_dirs}))}; rigidly registered "
            "pairs on one grid, mask as distributed (body contour; for CBCT intersected with the CBCT field of view)."
        ),
        licence=ed["licence"],
        reference=ed["reference"],
        extra={"source_dataset": edition, "direction": f"{src}:{tgt}"},
    )
    seen: dict[str, Path] = {}
    for d in case_dirs:
        if d.name in seen:
            plan.problems.append((d.name, f"case folder found twice: {seen[d.name]} and {d}"))
            continue
        seen[d.name] = d
        src_file, tgt_file, mask = _find_file(d, src), _find_file(d, tgt), _find_file(d, "mask")
        for label, f, stem in (("source", src_file, src), ("target", tgt_file, tgt)):
            if f is None:
                plan.problems.append((d.name, f"{label} {stem} image missing in {d} (expected {stem}.nii.gz or {stem}.mha)"))
        if src_file is None or tgt_file is None:
            continue
        case = CaseSource(case_id=d.name, images=[src_file], target=tgt_file, mask=mask)
        if mask is None:
            logger.warning("%s: no mask in %s; computing a body mask from the CT", d.name, d)
            case.mask_rule, case.ct_role = "body_from_ct", "target" if tgt == "ct" else "image0"
        plan.cases.append(case)
    return plan
