"""Shared fixtures: temporary roots, demo datasets, and the full-resolution real data for ``full_data`` tests.

Real images come from two places (see tests/paths.py): small crops in tests/data/ (in the repository: every
test that needs real voxels but not full resolution uses them) and the full-resolution shared data
(../shared/data beside the clone, or $AUTOTRANS_SHARED_DATA), used only by tests marked ``full_data``, which
skip with the reason when it is absent. The session ends with a line counting the full_data tests run/skipped.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.dataset.demo import demo_data_dir
from tests.paths import SHARED_DATA, SHARED_DATA_ENV, SHARED_DATA_WHERE, fixture_file

FULL_DATA_SKIP = (f"full_data: full-resolution real data absent ({SHARED_DATA_WHERE}); CI places ../shared "
                  f"beside the clone, or set {SHARED_DATA_ENV}=/path/to/shared/data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for ``shared_data`` is a full_data test; full_data tests skip when the data is absent."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("full_data") is None:
            item.add_marker(pytest.mark.full_data)
        if SHARED_DATA is None and item.get_closest_marker("full_data") is not None:
            item.add_marker(pytest.mark.skip(reason=FULL_DATA_SKIP))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    ran, skipped = set(), set()
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if not isinstance(rep, pytest.TestReport) or "full_data" not in rep.keywords:
                continue
            if rep.skipped:
                skipped.add(rep.nodeid)
            elif rep.when == "call":
                ran.add(rep.nodeid)
    if ran or skipped:
        where = f"data at {SHARED_DATA}" if SHARED_DATA is not None else f"data absent: {SHARED_DATA_WHERE}"
        terminalreporter.write_line(f"full_data tests (full-resolution real data): {len(ran)} ran, "
                                    f"{len(skipped - ran)} skipped ({where})")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny networks and tensors: intra-op threads only add synchronisation on a busy 2-core CI machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    """The full-resolution shared real data (only for tests marked full_data; they skip when it is absent)."""
    if SHARED_DATA is None:
        pytest.skip(FULL_DATA_SKIP)
    return SHARED_DATA


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    out = {}
    for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
        p = tmp_path / var
        p.mkdir()
        monkeypatch.setenv(var, str(p))
        out[var] = p
    return out


def install_demo_copy(raw: Path, shipped: str, new_id: int) -> Path:
    """Copy a shipped demo dataset under a new id (tests mutate their copy)."""
    src = demo_data_dir() / shipped
    name = shipped.split("_", 1)[1]
    dest = raw / f"Dataset{new_id:03d}_{name}"
    shutil.copytree(src, dest)
    return dest


@pytest.fixture
def brain_demo(roots: dict[str, Path]) -> Path:
    return install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 11)


@pytest.fixture
def petct_demo(roots: dict[str, Path]) -> Path:
    return install_demo_copy(roots["autotrans_raw"], "Dataset902_DemoCTtoPET", 12)


def write_volume(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> None:
    """Write a (z, y, x) array with geometry (ITK x, y, z order)."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def write_dataset_json(folder: Path, **overrides) -> None:
    d = {"name": folder.name.split("_", 1)[1], "source_channels": {"0": {"name": "T2", "modality": "MR"}},
         "target": {"name": "FLAIR", "modality": "MR"}, "paired": True, "file_ending": ".nii.gz",
         "numTraining": 0}
    d.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(d))


@pytest.fixture
def cbct_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Dataset031_SimCBCTPelvis: two 6 cm slabs of the real pelvis CT crop with CBCT simulated from them (not
    real CBCT), for the benchmark's dose and segmentation-consistency tests (baselines: no training)."""
    from autotrans.dataset.cbct import build_simulated_cbct_dataset
    from autotrans.io import read_image, write_image
    from autotrans.io.image_io import Geometry

    for var in ("autotrans_raw", "autotrans_preprocessed", "autotrans_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    ct, geo = read_image(fixture_file("ccth_a01/pelvis_ct.nii.gz"))
    body = read_image(fixture_file("ccth_a01/pelvis_body.nii.gz"), dtype=np.uint8)[0]
    cts = []
    for i, rows in enumerate((slice(0, 20), slice(20, 40))):  # two 6 cm slabs of the pelvis: two cases
        origin = np.asarray(geo.origin) + np.asarray(geo.direction).reshape(3, 3) @ [0, 0, rows.start * geo.spacing[2]]
        g = Geometry((geo.size[0], geo.size[1], 20), geo.spacing, tuple(origin), geo.direction)
        write_image(ct[rows].astype(np.int16), g, tmp_path / f"ct{i}.nii.gz")
        write_image(body[rows], g, tmp_path / f"body{i}.nii.gz")
        cts.append((f"pelvis{i}", tmp_path / f"ct{i}.nii.gz", tmp_path / f"body{i}.nii.gz"))
    build_simulated_cbct_dataset(cts, 31, "SimCBCTPelvis")
    return tmp_path
