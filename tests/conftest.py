"""Shared fixtures: temporary roots, the shared real data (CI has it at ../shared/data), demo datasets."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.dataset.demo import demo_data_dir

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real shared data not found at {SHARED_DATA} (CI places ../shared beside the clone)")
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
