"""Fixtures for the evaluation tests: real CT/PET/MR crops shipped in tests/data (see its ATTRIBUTION.md)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.paths import fixture_file


@pytest.fixture(scope="session")
def petct() -> dict[str, np.ndarray]:
    """CT (HU), PET (SUV) and body mask, 40 x 72 x 96 voxels through the pelvis (3 mm; box z 60..100, y 40..112,
    x 32..128 of the CCTH-A01 3 mm volumes)."""
    from autotrans.io import read_image

    out = {}
    for key, name in (("ct", "pelvis_ct"), ("pet", "pelvis_pet"), ("mask", "pelvis_body")):
        arr, geo = read_image(fixture_file(f"ccth_a01/{name}.nii.gz"))
        out[key] = arr
    out["mask"] = out["mask"] > 0
    out["spacing"] = geo.spacing
    return out


@pytest.fixture(scope="session")
def flair() -> dict[str, np.ndarray]:
    """FLAIR and MS lesion map (1 mm MNI), 40 x 48 x 48 voxels around lesions (box z 59..99, y 73..121,
    x 63..111 of MS patient 07; the shipped crop starts at z 59, y 60, x 60)."""
    from autotrans.io import read_image

    img, geo = read_image(fixture_file("ms_patient07/flair.nii.gz"))
    les, _ = read_image(fixture_file("ms_patient07/lesion_gt.nii.gz"))
    crop = (slice(0, 40), slice(13, 61), slice(3, 51))
    return {"img": img[crop], "lesions": les[crop] > 0, "spacing": geo.spacing}
