"""Fixtures for the evaluation tests: real CT/PET/MR crops from the shared data (skipped if absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared real data not found at {path} (CI places ../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def petct() -> dict[str, np.ndarray]:
    """CT (HU), PET (SUV) and body mask, cropped to 40 x 72 x 96 voxels through the pelvis (3 mm)."""
    from autotrans.io import read_image

    d = _need(SHARED / "petct_tcia_ccth_a01")
    crop = (slice(60, 100), slice(40, 112), slice(32, 128))
    out = {}
    for key, name in (("ct", "ct_hu_3mm"), ("pet", "pet_suv_3mm"), ("mask", "body_mask_3mm")):
        arr, geo = read_image(d / f"{name}.nii.gz")
        out[key] = arr[crop]
    out["mask"] = out["mask"] > 0
    out["spacing"] = geo.spacing
    return out


@pytest.fixture(scope="session")
def flair() -> dict[str, np.ndarray]:
    """FLAIR and MS lesion map (1 mm MNI), cropped to 40 x 48 x 48 voxels around lesions."""
    from autotrans.io import read_image

    d = _need(SHARED / "open_ms_data_mni" / "patient07")
    img, geo = read_image(d / "FLAIR.nii.gz")
    les, _ = read_image(d / "lesion_gt.nii.gz")
    crop = (slice(59, 99), slice(73, 121), slice(63, 111))
    return {"img": img[crop], "lesions": les[crop] > 0, "spacing": geo.spacing}
