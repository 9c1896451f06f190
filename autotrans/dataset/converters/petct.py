"""PET/CT benchmarks: autoPET (whole-body FDG) and HECKTOR (head & neck), CT → PET by default.

Both come from hybrid scanners, so CT and PET share the patient frame by construction; when their grids
differ (HECKTOR ships native CT and PET grids) the PET and the labels are resampled onto the CT grid by
physical coordinates. Neither ships a body mask, so one is computed from the CT (threshold, largest
component, slice-wise hole filling).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from autotrans.dataset.converters.common import CaseSource, ConversionPlan, find_dirs, parse_direction
from autotrans.dataset.format import ChannelInfo
from autotrans.errors import ConfigurationError

logger = logging.getLogger(__name__)

_MODS = {"ct": ChannelInfo("CT", "CT"), "pet": ChannelInfo("PET", "PET")}

AUTOPET_LICENCE = "CC BY 4.0 (TCIA FDG-PET-CT-Lesions, doi:10.7937/gkr0-xv29); see the dataset's terms"
AUTOPET_REFERENCE = (
    "Gatidis S, Hepp T, Früh M, et al. A whole-body FDG-PET/CT dataset with manually annotated tumor lesions. "
    "Sci Data. 2022;9:601. doi:10.1038/s41597-022-01718-3; and TCIA (Clark K et al., J Digit Imaging 2013)"
)
HECKTOR_LICENCE = "see the dataset's terms (HECKTOR challenge data licence / end-user agreement)"
HECKTOR_REFERENCE = (
    "Andrearczyk V, Oreiller V, Hatt M, Depeursinge A (eds). Head and Neck Tumor Segmentation and Outcome "
    "Prediction (HECKTOR 2022), LNCS 13626, Springer 2023; Oreiller V, Andrearczyk V, et al. Head and neck "
    "tumor segmentation in PET/CT: the HECKTOR challenge. Med Image Anal. 2022;77:102336"
)


def _direction(direction: str | None, kind: str) -> tuple[str, str]:
    srcs, tgt = parse_direction(direction or "ct:pet", _MODS)
    if len(srcs) != 1:
        raise ConfigurationError(f"--direction {direction!r}: {kind} has one source, ct:pet or pet:ct")
    return srcs[0], tgt


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def plan_autopet(source: Path, direction: str | None, region: str | None) -> ConversionPlan:
    """``FDG-PET-CT-Lesions/PETCT_xxx/<study>/{CTres,SUV,SEG}.nii.gz``: one case per study."""
    if region:
        raise ConfigurationError("--region does not apply to autopet (whole-body scans)")
    src, tgt = _direction(direction, "autopet")
    patients = find_dirs(source, lambda d: d.name.startswith("PETCT_"), max_depth=3)
    if not patients:
        raise ConfigurationError(
            f"{source}: no autoPET patient folders found (expected FDG-PET-CT-Lesions/PETCT_xxx/<date>/SUV.nii.gz)"
        )
    plan = ConversionPlan(
        default_name=f"autoPET_{src.upper()}to{tgt.upper()}",
        source_channels=[_MODS[src]],
        target=_MODS[tgt],
        description=(
            f"autoPET whole-body FDG PET/CT ({src.upper()}→{tgt.upper()}); PET in SUVbw, CT resampled to the PET grid "
            "(CTres) as distributed. Mask = body mask computed from the CT; lesions = manual tumour segmentation (SEG)."
        ),
        licence=AUTOPET_LICENCE,
        reference=AUTOPET_REFERENCE,
        extra={"source_dataset": "autopet", "direction": f"{src}:{tgt}"},
    )
    for pdir in patients:
        studies = sorted(d for d in pdir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not studies:
            plan.problems.append((pdir.name, f"no study folder in {pdir}"))
            continue
        used: set[str] = set()
        for study in studies:
            m = re.match(r"(\d{2}-\d{2}-\d{4})", study.name)
            tag = m.group(1) if m else _safe(study.name)[:20]
            case_id = f"{pdir.name}_{tag}"
            k = 2
            while case_id in used:
                case_id, k = f"{pdir.name}_{tag}-{k}", k + 1
            used.add(case_id)
            ct = next((study / n for n in ("CTres.nii.gz", "CT.nii.gz") if (study / n).is_file()), None)
            pet = study / "SUV.nii.gz" if (study / "SUV.nii.gz").is_file() else None
            seg = study / "SEG.nii.gz" if (study / "SEG.nii.gz").is_file() else None
            if ct is None:
                plan.problems.append((case_id, f"CT missing in {study} (expected CTres.nii.gz)"))
            if pet is None:
                plan.problems.append((case_id, f"PET missing in {study} (expected SUV.nii.gz)"))
            if ct is None or pet is None:
                continue
            files = {"ct": ct, "pet": pet}
            plan.cases.append(
                CaseSource(case_id=case_id, images=[files[src]], target=files[tgt], lesions=seg,
                           mask_rule="body_from_ct", ct_role="image0" if src == "ct" else "target")
            )
    return plan


_HECKTOR_RE = re.compile(r"^(.+)__(CT|PT)\.nii\.gz$", re.IGNORECASE)


def plan_hecktor(source: Path, direction: str | None, region: str | None) -> ConversionPlan:
    """``imagesTr/CENTRE-NNN__{CT,PT}.nii.gz`` + ``labelsTr/CENTRE-NNN.nii.gz`` (and ``imagesTs``)."""
    if region:
        raise ConfigurationError("--region does not apply to hecktor (head and neck only)")
    src, tgt = _direction(direction, "hecktor")
    roots = find_dirs(source, lambda d: (d / "imagesTr").is_dir() or (d / "imagesTs").is_dir(), max_depth=3)
    if not roots:
        raise ConfigurationError(
            f"{source}: no HECKTOR imagesTr/ or imagesTs/ folder found (expected imagesTr/CHUM-001__CT.nii.gz)"
        )
    plan = ConversionPlan(
        default_name=f"HECKTOR_{src.upper()}to{tgt.upper()}",
        source_channels=[_MODS[src]],
        target=_MODS[tgt],
        description=(
            f"HECKTOR head & neck FDG PET/CT ({src.upper()}→{tgt.upper()}); PET (SUV as distributed) and labels "
            "resampled to the CT grid by physical coordinates when grids differ. Mask = body mask from the CT; "
            "lesions = GTV labels (1 primary tumour, 2 lymph nodes)."
        ),
        licence=HECKTOR_LICENCE,
        reference=HECKTOR_REFERENCE,
        reference_role="image0" if src == "ct" else "target",
        extra={"source_dataset": "hecktor", "direction": f"{src}:{tgt}"},
    )
    seen: set[str] = set()
    for root in roots:
        for split in ("Tr", "Ts"):
            img_dir = root / f"images{split}"
            if not img_dir.is_dir():
                continue
            found: dict[str, dict[str, Path]] = {}
            for f in sorted(img_dir.iterdir()):
                m = _HECKTOR_RE.match(f.name)
                if m:
                    found.setdefault(m.group(1), {})[m.group(2).upper()] = f
                elif not f.name.startswith("."):
                    logger.debug("ignoring %s (not CASE__CT/PT.nii.gz)", f)
            for case_id, mods in sorted(found.items()):
                if case_id in seen:
                    plan.problems.append((case_id, f"case found twice (again in {img_dir})"))
                    continue
                seen.add(case_id)
                for key in ("CT", "PT"):
                    if key not in mods:
                        plan.problems.append((case_id, f"{key} missing in {img_dir} (expected {case_id}__{key}.nii.gz)"))
                if len(mods) < 2:
                    continue
                label = root / f"labels{split}" / f"{case_id}.nii.gz"
                files = {"ct": mods["CT"], "pet": mods["PT"]}
                plan.cases.append(
                    CaseSource(case_id=case_id, images=[files[src]], target=files[tgt], split=split,
                               lesions=label if label.is_file() else None,
                               mask_rule="body_from_ct", ct_role="image0" if src == "ct" else "target")
                )
    if not plan.cases and not plan.problems:
        raise ConfigurationError(f"{source}: imagesTr/imagesTs hold no CASE__CT.nii.gz / CASE__PT.nii.gz pairs")
    return plan
