"""Planned datasets shared by the inference tests (planned once per session: planning takes seconds).

Each fixture returns the preprocessed dataset folder (plans, dataset.json, fingerprint) of a small raw
dataset built from real images: CT crops of the bundled demo (CBCT -> CT), crops of the ReMIND head
(oblique direction, non-zero origin; MR -> MR) and of the anisotropic pyradiomics NRRD (MR -> MR), both
shipped in tests/data (see its ATTRIBUTION.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import tests.inference.helpers  # noqa: F401  (registers the test families)
from autotrans.dataset.demo import demo_data_dir
from tests.paths import fixture_file

# shipped crops: the ReMIND T1c from voxel (x, y, z) = (90, 95, 70), the pyradiomics NRRDs from (90, 90, 0)
REMIND_T1C = "remind_022/t1c.nii.gz"
REMIND_START = (90, 95, 70)
PYRADIOMICS = "pyradiomics/{}_image.nrrd"
PYRADIOMICS_START = (90, 90, 0)


def _plan(tmp: Path, name: str, build) -> Path:
    """Build raw data with ``build(raw_dataset_dir)`` and plan it (no preprocessing) under env roots in ``tmp``."""
    from autotrans.cli.plan_and_preprocess import main_plan_and_preprocess

    with pytest.MonkeyPatch.context() as mp:
        for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
            (tmp / var).mkdir(parents=True, exist_ok=True)
            mp.setenv(var, str(tmp / var))
        raw = tmp / "autotrans_raw" / name
        build(raw)
        assert main_plan_and_preprocess(["-d", name, "-np", "1", "--no_pp"]) == 0
    return tmp / "autotrans_preprocessed" / name


def _dataset_json(raw: Path, source: str, target: str, ending: str) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps({
        "name": raw.name.split("_", 1)[1], "source_channels": {"0": {"name": source, "modality": source}},
        "target": {"name": target, "modality": target}, "paired": True, "file_ending": ending,
        "numTraining": 3}))


def _write_case(raw: Path, case: str, img: sitk.Image, ending: str) -> None:
    for sub, name in (("imagesTr", f"{case}_0000{ending}"), ("targetsTr", f"{case}{ending}")):
        (raw / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(raw / sub / name))


@pytest.fixture(scope="session")
def cbct_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CBCT -> CT plan from the demo's CT slabs (6 mm, 41 x 62 x 79 voxels)."""
    demo = demo_data_dir() / "Dataset902_DemoCTtoPET" / "imagesTr"

    def build(raw: Path) -> None:
        _dataset_json(raw, "CBCT", "CT", ".nii.gz")
        for f in sorted(demo.glob("*_0000.nii.gz")):
            _write_case(raw, f.name[: -len("_0000.nii.gz")], sitk.ReadImage(str(f)), ".nii.gz")

    return _plan(tmp_path_factory.mktemp("cbct"), "Dataset061_InfCBCT", build)


Index3 = tuple[int, int, int]


def _region(path: Path, index: Index3, start: Index3, size: Index3) -> sitk.Image:
    """``size`` voxels from ``index`` of the source volume, cut from the shipped crop that begins at ``start``."""
    img = sitk.ReadImage(str(path))
    return sitk.RegionOfInterest(img, size, [i - s for i, s in zip(index, start)])


def remind_crop(index: tuple[int, int, int], size: tuple[int, int, int] = (48, 44, 40)) -> sitk.Image:
    """A crop of the ReMIND T1c head (``index`` in the full volume): keeps its oblique direction; the origin moves
    with the crop."""
    return _region(fixture_file(REMIND_T1C), index, REMIND_START, size)


def pyradiomics_crop(index: tuple[int, int, int], size: tuple[int, int, int] = (64, 56, 14)) -> sitk.Image:
    """A crop of the pyradiomics brain1 NRRD (0.78 x 0.78 x 6.5 mm, strongly anisotropic)."""
    return _region(fixture_file(PYRADIOMICS.format("brain1")), index, PYRADIOMICS_START, size)


@pytest.fixture(scope="session")
def remind_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(raw: Path) -> None:
        _dataset_json(raw, "MR", "MR", ".nii.gz")
        for i, idx in enumerate([(100, 100, 80), (90, 110, 70), (110, 95, 85)]):
            _write_case(raw, f"remind{i}", remind_crop(idx), ".nii.gz")

    return _plan(tmp_path_factory.mktemp("remind"), "Dataset062_InfReMIND", build)


@pytest.fixture(scope="session")
def nrrd_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(raw: Path) -> None:
        _dataset_json(raw, "MR", "MR", ".nrrd")
        for i, idx in enumerate([(96, 100, 5), (100, 90, 6), (90, 96, 4)]):
            _write_case(raw, f"brain{i}", pyradiomics_crop(idx), ".nrrd")

    return _plan(tmp_path_factory.mktemp("nrrd"), "Dataset063_InfNRRD", build)


def smooth_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth synthetic body in HU (air outside, soft tissue gradients, a bone-like bump)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r2 = z ** 2 + (y / 0.9) ** 2 + (x / 0.8) ** 2
    body = 1.0 / (1.0 + np.exp((r2 - 0.6) * 25))
    tissue = 40 + 60 * np.sin(2 * x + rng.uniform()) + 500 * np.exp(-((y - 0.2) ** 2 + x ** 2) * 12)
    return (-1000 + body * (1000 + tissue)).astype(np.float32)
