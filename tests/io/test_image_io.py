from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autotrans.io import SUPPORTED_ENDINGS, ImageReadError, read_geometry, read_image, write_image
from tests.paths import fixture_file

REMIND_T1C = fixture_file("remind_022/t1c.nii.gz")  # real head crop, 68 x 59 x 55: oblique, non-zero origin
BRAIN1_NRRD = fixture_file("pyradiomics/brain1_image.nrrd")  # real NRRD, every slice, 74 x 66 in-plane


@pytest.mark.parametrize("ending", SUPPORTED_ENDINGS)
def test_round_trip_keeps_geometry_for_every_format(tmp_path: Path, ending: str) -> None:
    arr, geom = read_image(REMIND_T1C)  # oblique, non-zero origin
    arr = arr[10:30, 10:50, 20:60].copy()
    sub = geom.__class__(size=arr.shape[::-1], spacing=geom.spacing, origin=geom.origin, direction=geom.direction)
    out = tmp_path / f"case{ending}"
    write_image(arr, sub, out)
    back, g2 = read_image(out)
    assert np.array_equal(back, arr)
    assert sub.mismatch(g2) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_oblique_direction_preserved_exactly(tmp_path: Path) -> None:
    arr, geom = read_image(REMIND_T1C)
    write_image(arr, geom, tmp_path / "x.nii.gz")
    g2 = read_geometry(tmp_path / "x.nii.gz")
    assert np.allclose(g2.direction, geom.direction, atol=1e-6)
    assert np.allclose(g2.origin, geom.origin, atol=1e-4)
    assert abs(geom.direction[0]) < 0.999  # really oblique


def test_nrrd_anisotropic() -> None:
    arr, geom = read_image(BRAIN1_NRRD)
    assert arr.shape == (25, 66, 74)
    assert geom.spacing[2] > 6 * geom.spacing[0]


def test_refuses_2d_and_4d(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(tmp_path / "a.nii.gz"))
    with pytest.raises(ImageReadError, match="2D image"):
        read_image(tmp_path / "a.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(tmp_path / "b.nii.gz"))
    with pytest.raises(ImageReadError, match="4D image"):
        read_image(tmp_path / "b.nii.gz")


def test_unreadable_and_missing_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="unreadable"):
        read_image(tmp_path / "bad.nii.gz")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="unsupported file ending"):
        read_image(tmp_path / "x.png")


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    arr = np.ones((4, 5, 6), np.float32)
    img = sitk.GetImageFromArray(arr)
    out = tmp_path / "keep.nii.gz"
    sitk.WriteImage(img, str(out))
    from autotrans.io import Geometry

    g = Geometry.from_sitk(img)
    with pytest.raises(ValueError):
        write_image(np.zeros((3, 3, 3), np.float32), g, out)  # shape mismatch: refused before writing
    back, _ = read_image(out)
    assert np.array_equal(back, arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]
