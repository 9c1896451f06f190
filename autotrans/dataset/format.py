"""The raw dataset format: ``dataset.json`` schema and case discovery.

Layout (see documentation/dataset_format.md)::

    DatasetXXX_Name/dataset.json
    imagesTr/{CASE}_0000{ending}   source channel 0 (more: _0001, ...)
    targetsTr/{CASE}{ending}       target modality
    masksTr/{CASE}{ending}         optional body/ROI mask
    lesionsTr/{CASE}{ending}       optional lesion label map
    imagesTs/ targetsTs/ masksTs/ lesionsTs/   optional held-out test set
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrans.errors import ConfigurationError
from autotrans.io import SUPPORTED_ENDINGS
from autotrans.utils.files import load_json, save_json

MODALITIES = ("CT", "CBCT", "MR", "PET")
SPLITS = ("Tr", "Ts")


@dataclass(frozen=True)
class ChannelInfo:
    name: str
    modality: str


@dataclass(frozen=True)
class DatasetJson:
    """Typed view of ``dataset.json``; validation errors name the field and the allowed values."""

    name: str
    source_channels: tuple[ChannelInfo, ...]
    target: ChannelInfo
    paired: bool
    file_ending: str
    num_training: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "dataset.json") -> "DatasetJson":
        def need(key: str) -> Any:
            if key not in d:
                raise ConfigurationError(f"{where}: missing field {key!r}")
            return d[key]

        def channel(entry: Any, label: str) -> ChannelInfo:
            if not isinstance(entry, dict) or "modality" not in entry:
                raise ConfigurationError(f"{where}: {label} needs {{'name': ..., 'modality': ...}}")
            modality = str(entry["modality"]).upper()
            if modality not in MODALITIES:
                raise ConfigurationError(
                    f"{where}: {label} has unknown modality {entry['modality']!r} (valid: {', '.join(MODALITIES)})"
                )
            return ChannelInfo(name=str(entry.get("name", modality)), modality=modality)

        sc = need("source_channels")
        if not isinstance(sc, dict) or not sc:
            raise ConfigurationError(f"{where}: source_channels must be a non-empty mapping like {{'0': {{...}}}}")
        keys = sorted(sc, key=lambda k: int(k))
        if [int(k) for k in keys] != list(range(len(keys))):
            raise ConfigurationError(f"{where}: source_channels keys must be 0..{len(keys) - 1}, got {keys}")
        ending = str(need("file_ending"))
        if ending not in SUPPORTED_ENDINGS:
            raise ConfigurationError(f"{where}: file_ending {ending!r} not in {SUPPORTED_ENDINGS}")
        known = {"name", "source_channels", "target", "paired", "file_ending", "numTraining"}
        return cls(
            name=str(need("name")),
            source_channels=tuple(channel(sc[k], f"source channel {k}") for k in keys),
            target=channel(need("target"), "target"),
            paired=bool(d.get("paired", True)),
            file_ending=ending,
            num_training=int(d.get("numTraining", 0)),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "source_channels": {str(i): {"name": c.name, "modality": c.modality} for i, c in enumerate(self.source_channels)},
            "target": {"name": self.target.name, "modality": self.target.modality},
            "paired": self.paired,
            "file_ending": self.file_ending,
            "numTraining": self.num_training,
        }
        d.update(self.extra)
        return d

    @property
    def num_channels(self) -> int:
        return len(self.source_channels)


def load_dataset_json(dataset_dir: str | os.PathLike) -> DatasetJson:
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise ConfigurationError(f"{path}: not found (every raw dataset needs a dataset.json)")
    try:
        raw = load_json(path)
    except ValueError as e:
        raise ConfigurationError(f"{path}: invalid JSON ({e})") from None
    return DatasetJson.from_dict(raw, where=str(path))


def save_dataset_json(dj: DatasetJson, dataset_dir: str | os.PathLike) -> None:
    save_json(dj.to_dict(), Path(dataset_dir) / "dataset.json")


@dataclass
class CaseFiles:
    """The files of one case. ``images`` are source channels in order; any entry may be missing."""

    case_id: str
    images: list[Path | None]
    target: Path | None = None
    mask: Path | None = None
    lesions: Path | None = None

    def all_files(self) -> list[tuple[str, Path]]:
        out = [(f"source channel {i}", p) for i, p in enumerate(self.images) if p is not None]
        for label, p in (("target", self.target), ("mask", self.mask), ("lesion map", self.lesions)):
            if p is not None:
                out.append((label, p))
        return out


@dataclass
class DiscoveredSplit:
    cases: dict[str, CaseFiles]
    problems: list[tuple[str, str]]


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) else None


def discover_cases(dataset_dir: str | os.PathLike, dj: DatasetJson, split: str = "Tr") -> DiscoveredSplit:
    """Find the cases of one split (``Tr`` or ``Ts``) and list naming problems instead of raising.

    Files with another ending or an unparseable name are reported; a missing split folder yields no cases.
    For unpaired datasets, cases with only a source or only a target are legitimate.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    root = Path(dataset_dir)
    ending = dj.file_ending
    n_ch = dj.num_channels
    problems: list[tuple[str, str]] = []
    cases: dict[str, CaseFiles] = {}

    def get(case: str) -> CaseFiles:
        if case not in cases:
            cases[case] = CaseFiles(case_id=case, images=[None] * n_ch)
        return cases[case]

    img_dir = root / f"images{split}"
    if img_dir.is_dir():
        for f in sorted(img_dir.iterdir()):
            if f.name.startswith("."):
                continue
            stem = _strip_ending(f.name, ending)
            if stem is None or len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
                problems.append((f.name, f"images{split}: expected {{CASE}}_XXXX{ending}"))
                continue
            case, ch = stem[:-5], int(stem[-4:])
            if ch >= n_ch:
                problems.append((case, f"images{split}: channel {ch:04d} but dataset.json declares {n_ch} source channel(s)"))
                continue
            get(case).images[ch] = f
    for sub, attr in (("targets", "target"), ("masks", "mask"), ("lesions", "lesions")):
        d = root / f"{sub}{split}"
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.name.startswith("."):
                continue
            stem = _strip_ending(f.name, ending)
            if stem is None:
                problems.append((f.name, f"{sub}{split}: expected {{CASE}}{ending}"))
                continue
            if sub != "targets" and stem not in cases and not (root / f"targets{split}" / f.name).exists():
                problems.append((stem, f"{sub}{split}: {f.name} has no source images or target"))
                continue
            setattr(get(stem), attr, f)
    for case, cf in sorted(cases.items()):
        has_source = any(p is not None for p in cf.images)
        missing = [i for i, p in enumerate(cf.images) if p is None]
        if has_source and missing:
            problems.append((case, f"missing source channel(s) {', '.join(f'{i:04d}' for i in missing)}"))
        if dj.paired and has_source and cf.target is None and split == "Tr":
            problems.append((case, f"paired dataset but no target targets{split}/{case}{ending}"))
        if dj.paired and not has_source and cf.target is not None:
            problems.append((case, f"paired dataset but no source images{split}/{case}_0000{ending}"))
    return DiscoveredSplit(cases=cases, problems=problems)
