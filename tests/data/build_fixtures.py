"""Regenerate the small real-data test fixtures in tests/data/ from the shared real data (../shared/data).

    python tests/data/build_fixtures.py [--shared /path/to/shared/data] [--check]

Every fixture is a crop of one openly licensed real volume (see ATTRIBUTION.md beside this file), cut with
SimpleITK's RegionOfInterest so that its origin moves with the crop (spacing and direction are kept), and
written compressed; a few PET DICOM slices and their reference are copied byte for byte. The boxes below are
in array order (z, y, x) on the source volume; the tests that use a fixture name the box they rely on.
``--check`` rebuilds into a temporary folder and compares voxels and geometry with the committed files (no
write); the test ``tests/test_fixtures.py`` does the same when the shared data is present.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parents[2] / "shared" / "data"

PETCT = "petct_tcia_ccth_a01"
MS07 = "open_ms_data_mni/patient07"
TCGA = "brainles_tcga_lgg_sri24/TCGA-DU-7294"
REMIND = "remind_022_t1c_t2"
PYRAD = "pyradiomics_testcases"

# fixture path (relative to tests/data) -> (source file relative to the shared data, box (z, y, x) or None)
CROPS: dict[str, tuple[str, tuple[tuple[int, int], ...] | None]] = {
    # 3 mm pelvis PET/CT, 40 x 72 x 96: the evaluation metrics (SynthRAD parity, PET, CT)
    "ccth_a01/pelvis_ct.nii.gz": (f"{PETCT}/ct_hu_3mm.nii.gz", ((60, 100), (40, 112), (32, 128))),
    "ccth_a01/pelvis_pet.nii.gz": (f"{PETCT}/pet_suv_3mm.nii.gz", ((60, 100), (40, 112), (32, 128))),
    "ccth_a01/pelvis_body.nii.gz": (f"{PETCT}/body_mask_3mm.nii.gz", ((60, 100), (40, 112), (32, 128))),
    # six whole axial 3 mm slices through the femoral heads: CBCT simulator, benchmark converters
    "ccth_a01/slab_ct.nii.gz": (f"{PETCT}/ct_hu_3mm.nii.gz", ((100, 106), (0, 159), (0, 159))),
    "ccth_a01/slab_pet.nii.gz": (f"{PETCT}/pet_suv_3mm.nii.gz", ((100, 106), (0, 159), (0, 159))),
    "ccth_a01/slab_body.nii.gz": (f"{PETCT}/body_mask_3mm.nii.gz", ((100, 106), (0, 159), (0, 159))),
    # native-grid PET (5.47 x 5.47 x 3.27 mm) covering the converters' CT box (3 mm z 100..106, y 30..130,
    # x 20..140) with a 10 mm margin: another grid in the same patient frame
    "ccth_a01/slab_pet_native.nii.gz": (f"{PETCT}/pet_suv_native.nii.gz", ((87, 99), (34, 93), (28, 98))),
    # Visual Turing test: a column of CT (4 cases of 24 slices) and of PET
    "ccth_a01/column_ct.nii.gz": (f"{PETCT}/ct_hu_3mm.nii.gz", ((80, 180), (40, 80), (40, 80))),
    "ccth_a01/column_pet.nii.gz": (f"{PETCT}/pet_suv_3mm.nii.gz", ((80, 164), (30, 80), (30, 80))),
    # 1 mm MNI FLAIR with MS lesions (stored with a flipped y axis): lesion metrics, MR display
    "ms_patient07/flair.nii.gz": (f"{MS07}/FLAIR.nii.gz", ((59, 99), (60, 121), (60, 111))),
    "ms_patient07/lesion_gt.nii.gz": (f"{MS07}/lesion_gt.nii.gz", ((59, 99), (60, 121), (60, 111))),
    # its T2 (registered to the FLAIR by the curators): a real T2 -> FLAIR pair for the pair-alignment check
    "ms_patient07/t2.nii.gz": (f"{MS07}/T2.nii.gz", ((59, 99), (60, 121), (60, 111))),
    # six 1 mm SRI24 slices of the four BraTS-like contrasts: the BraTS / SynthRAD converters
    **{f"tcga_du_7294/{k}.nii.gz": (f"{TCGA}/{k}.nii.gz", ((74, 80), (70, 150), (60, 180)))
       for k in ("t1", "t1c", "t2", "flair")},
    # oblique head T1c, origin far from 0: image I/O round trips, exact geometry through inference
    "remind_022/t1c.nii.gz": (f"{REMIND}/t1c.nii.gz", ((70, 125), (95, 154), (90, 158))),
    # the same session's T2 on the T1c grid: a real oblique T1c -> T2 pair for the pair-alignment check
    "remind_022/t2.nii.gz": (f"{REMIND}/t2_on_t1c_grid.nii.gz", ((70, 125), (95, 154), (90, 158))),
    # anisotropic NRRD (0.78 x 0.78 x 6.5 mm), every slice: NRRD input and thick-slice planning
    "pyradiomics/brain1_image.nrrd": (f"{PYRAD}/brain1_image.nrrd", ((0, 25), (90, 156), (90, 164))),
    "pyradiomics/brain2_image.nrrd": (f"{PYRAD}/brain2_image.nrrd", ((0, 23), (90, 156), (90, 164))),
}

# PET DICOM slices copied verbatim (with the stray RWV object of another series), and the reference SUV
# volume on their grid (the same slices of pet_suv_native.nii.gz, which is the shared data's reference).
PET_DICOM = [f"1-{i:03d}.dcm" for i in range(1, 11)]
RWV_OBJECT = "1.2.276.0.7230010.3.1.4.0.7020.1725320646.717921.dcm"
PET_DICOM_REFERENCE = "ccth_a01/pet_dicom_suv_reference.nii.gz"


def crop(img: sitk.Image, box: tuple[tuple[int, int], ...] | None) -> sitk.Image:
    if box is None:
        return img
    (z0, z1), (y0, y1), (x0, x1) = box
    return sitk.RegionOfInterest(img, [x1 - x0, y1 - y0, z1 - z0], [x0, y0, z0])


def _dicom_reference(shared: Path) -> sitk.Image:
    """The slices of the reference SUV volume that the copied DICOM files hold (matched by z position)."""
    import pydicom

    native = sitk.ReadImage(str(shared / PETCT / "pet_suv_native.nii.gz"))
    zs = sorted(float(pydicom.dcmread(str(shared / PETCT / "pet_dicom" / f), stop_before_pixels=True)
                      .ImagePositionPatient[2]) for f in PET_DICOM)
    idx = [native.TransformPhysicalPointToIndex((native.GetOrigin()[0], native.GetOrigin()[1], z))[2] for z in zs]
    assert idx == list(range(idx[0], idx[0] + len(idx))), f"PET DICOM slices not contiguous: {idx}"
    size = list(native.GetSize())
    return sitk.RegionOfInterest(native, [size[0], size[1], len(idx)], [0, 0, idx[0]])


def build(shared: Path, out: Path) -> list[Path]:
    written = []
    for rel, (src, box) in CROPS.items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(crop(sitk.ReadImage(str(shared / src)), box), str(dest), useCompression=True)
        written.append(dest)
    dicom_dir = out / "ccth_a01" / "pet_dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    for name in [*PET_DICOM, RWV_OBJECT]:
        shutil.copyfile(shared / PETCT / "pet_dicom" / name, dicom_dir / name)
        written.append(dicom_dir / name)
    sitk.WriteImage(_dicom_reference(shared), str(out / PET_DICOM_REFERENCE), useCompression=True)
    written.append(out / PET_DICOM_REFERENCE)
    return written


def differences(built: Path, committed: Path) -> list[str]:
    """Voxels, pixel type and geometry of every image; bytes of every other file."""
    problems = []
    for f in sorted(p for p in built.rglob("*") if p.is_file()):
        rel = f.relative_to(built)
        g = committed / rel
        if not g.is_file():
            problems.append(f"{rel}: missing in {committed}")
        elif f.suffix == ".dcm":
            if f.read_bytes() != g.read_bytes():
                problems.append(f"{rel}: bytes differ")
        else:
            a, b = sitk.ReadImage(str(f)), sitk.ReadImage(str(g))
            same = (a.GetSize() == b.GetSize() and a.GetPixelID() == b.GetPixelID()
                    and np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
                    and np.allclose(a.GetDirection(), b.GetDirection())
                    and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))
            if not same:
                problems.append(f"{rel}: voxels or geometry differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help=f"shared real data (default {DEFAULT_SHARED})")
    ap.add_argument("--out", type=Path, default=HERE, help="where to write (default: beside this script)")
    ap.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare, write nothing")
    args = ap.parse_args(argv)
    if not args.shared.is_dir():
        print(f"shared data not found: {args.shared}", file=sys.stderr)
        return 1
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(args.shared, Path(tmp))
            problems = differences(Path(tmp), args.out)
        print("\n".join(problems) or "fixtures match the shared data")
        return 1 if problems else 0
    files = build(args.shared, args.out)
    total = sum(f.stat().st_size for f in files)
    print(f"{len(files)} files, {total / 2 ** 20:.2f} MiB under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
