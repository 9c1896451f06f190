"""BraTS brain tumour MRI (GLI, MET, MEN, PED, SSA ... and the 2021 naming): MR contrast → MR contrast.

BraTS volumes are co-registered to the SRI24 atlas, resampled to 1 mm and skull-stripped, so any
contrast can be translated into any other; the direction picks the source contrast(s) and the target.
The brain mask is the union of non-zero voxels (skull stripping zeroes everything else) and the lesion
map is the tumour segmentation when the case has one (validation cases do not).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from autotrans.dataset.converters.common import CaseSource, ConversionPlan, find_dirs, parse_direction
from autotrans.dataset.format import ChannelInfo
from autotrans.errors import ConfigurationError

logger = logging.getLogger(__name__)

CONTRASTS = {
    "t1n": ChannelInfo("T1", "MR"),
    "t1c": ChannelInfo("T1c", "MR"),
    "t2w": ChannelInfo("T2", "MR"),
    "t2f": ChannelInfo("FLAIR", "MR"),
}
# BraTS 2021 and earlier file suffixes for the same contrasts.
_LEGACY = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
_NEW_RE = re.compile(r"^BraTS-[A-Z]+-\d{5}-\d{3}$")
_OLD_RE = re.compile(r"^BraTS\d{2,4}_\d{5}$")

LICENCE = "see the dataset's terms (BraTS data use agreement of the challenge edition you downloaded, Synapse)"
REFERENCE = (
    "Menze BH, Jakab A, Bauer S, et al. The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS). "
    "IEEE Trans Med Imaging. 2015;34(10):1993-2024. doi:10.1109/TMI.2014.2377694; "
    "Baid U, Ghodasara S, Mohan S, et al. The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor "
    "Segmentation and Radiogenomic Classification. arXiv:2107.02314; cite also the edition-specific paper "
    "(e.g. BraSyn: Li HB et al., arXiv:2305.09011)."
)


def _case_file(case_dir: Path, key: str) -> Path | None:
    name = case_dir.name
    if _NEW_RE.match(name):
        p = case_dir / f"{name}-{key}.nii.gz"
    else:
        p = case_dir / f"{name}_{_LEGACY[key]}.nii.gz"
    return p if p.is_file() else None


def plan_brats(source: Path, direction: str | None, region: str | None) -> ConversionPlan:
    """Describe a BraTS download; ``direction`` like ``t2w:t2f`` or ``t1n,t2w:t2f`` (default T2→FLAIR)."""
    if region:
        raise ConfigurationError("--region does not apply to brats (all cases are brain MRI)")
    srcs, tgt = parse_direction(direction or "t2w:t2f", CONTRASTS)
    case_dirs = find_dirs(source, lambda d: bool(_NEW_RE.match(d.name) or _OLD_RE.match(d.name)), max_depth=3)
    if not case_dirs:
        raise ConfigurationError(
            f"{source}: no BraTS case folders found (expected BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2w.nii.gz "
            "or BraTS2021_00000/BraTS2021_00000_t2.nii.gz)"
        )
    tumour_types = sorted({d.name.split("-")[1] for d in case_dirs if _NEW_RE.match(d.name)})
    name_part = "".join(CONTRASTS[s].name for s in srcs)
    plan = ConversionPlan(
        default_name=f"BraTS_{name_part}to{CONTRASTS[tgt].name}",
        source_channels=[CONTRASTS[s] for s in srcs],
        target=CONTRASTS[tgt],
        description=(
            f"BraTS {'/'.join(tumour_types) or 'legacy'} brain MRI, {'+'.join(CONTRASTS[s].name for s in srcs)} → "
            f"{CONTRASTS[tgt].name}; atlas-registered, 1 mm, skull-stripped. Mask = non-zero voxels of all "
            "contrasts; lesions = tumour segmentation where available."
        ),
        licence=LICENCE,
        reference=REFERENCE,
        extra={"source_dataset": "brats", "direction": f"{','.join(srcs)}:{tgt}"},
    )
    seen: set[str] = set()
    for d in case_dirs:
        if d.name in seen:
            plan.problems.append((d.name, f"case folder found twice (second at {d})"))
            continue
        seen.add(d.name)
        files = {k: _case_file(d, k) for k in [*srcs, tgt]}
        missing = [k for k, p in files.items() if p is None]
        if missing:
            for k in missing:
                plan.problems.append((d.name, f"{CONTRASTS[k].name} ({k}) missing in {d}"))
            continue
        plan.cases.append(
            CaseSource(
                case_id=d.name,
                images=[files[s] for s in srcs],
                target=files[tgt],
                lesions=_case_file(d, "seg"),
                mask_rule="nonzero",
            )
        )
    return plan
