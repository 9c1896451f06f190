"""The bundled real demo datasets: how they were built from CC-BY sources, and how to install them.

Shipped in ``autotrans/dataset/demo_data/`` in the raw format (see ATTRIBUTION.md there):

- ``Dataset901_DemoT2toFLAIR``: MS patients 07 and 19 (with lesion masks) and TCGA-LGG DU-7294 and FG-6692,
  T2 -> FLAIR, 2 mm isotropic, cropped to the brain, brain mask from non-zero T2, intensities as int16.
- ``Dataset902_DemoCTtoPET``: the CC-Tumor-Heterogeneity PET/CT patient at 6 mm, cut into three axial slabs
  that serve as "cases" (one patient: slabs are not independent subjects; the dataset.json says so).
- ``Dataset903_DemoSimCBCTtoCT`` is not shipped: ``install_demo`` simulates CBCT from Dataset902's real CT
  slabs (seeded, see documentation/cbct_simulation.md); its dataset.json says it is simulated.

``build_demo_data`` regenerates them from ``../shared/data``; ``install_demo`` copies them into
``$autotrans_raw``, optionally under other dataset ids.
"""
from __future__ import annotations

import logging
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from autotrans.dataset.format import ChannelInfo, DatasetJson, load_dataset_json, save_dataset_json
from autotrans.errors import ConfigurationError
from autotrans.paths import dataset_folder_name, parse_dataset_folder_name, raw_root
from autotrans.preprocessing.cropping import bbox_of
from autotrans.utils.lazy import LazyModule

sitk = LazyModule("SimpleITK")
ndimage = LazyModule("scipy.ndimage")

logger = logging.getLogger(__name__)

BRAIN_SPACING_MM = 2.0
PETCT_SPACING_MM = 6.0
N_SLABS = 3
DEMO_DATASETS = {901: "DemoT2toFLAIR", 902: "DemoCTtoPET"}
SIMULATED_CBCT_DEMO = (903, "DemoSimCBCTtoCT")  # built at install time from Dataset902's real CT


def demo_data_dir() -> Path:
    return Path(str(resources.files("autotrans.dataset") / "demo_data"))


def _resample_iso(img: sitk.Image, spacing: float, interpolator: int, smooth: bool, background: float = 0.0) -> sitk.Image:
    """Resample to isotropic ``spacing`` on the same physical extent; Gaussian pre-smoothing against aliasing."""
    if smooth:
        sigma = [max(0.0, (spacing ** 2 - s ** 2)) ** 0.5 / 2.355 for s in img.GetSpacing()]
        img = sitk.SmoothingRecursiveGaussian(img, sigma)
    size = [int(round(sz * sp / spacing)) for sz, sp in zip(img.GetSize(), img.GetSpacing())]
    ref = sitk.Image(size, img.GetPixelIDValue())
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection(img.GetDirection())
    # keep the physical centre of the first voxel's corner: origin shifts by half the spacing change
    corner = np.array(img.GetOrigin()) - 0.5 * np.array(img.GetDirection()).reshape(3, 3) @ np.array(img.GetSpacing())
    ref.SetOrigin(tuple(corner + 0.5 * np.array(img.GetDirection()).reshape(3, 3) @ np.full(3, spacing)))
    return sitk.Resample(img, ref, sitk.Transform(), interpolator, background, img.GetPixelID())


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def _crop_to(img: sitk.Image, box: list[tuple[int, int]]) -> sitk.Image:
    # box in array order (z, y, x); sitk index order is (x, y, z)
    lo = [box[2][0], box[1][0], box[0][0]]
    size = [box[2][1] - box[2][0], box[1][1] - box[1][0], box[0][1] - box[0][0]]
    return sitk.RegionOfInterest(img, size, lo)


def _bbox(mask: np.ndarray, margin: int) -> list[tuple[int, int]]:
    return [(max(0, a - margin), min(size, b + margin)) for (a, b), size in zip(bbox_of(mask), mask.shape)]


def _write(img: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def _as_int16(img: sitk.Image, scale: float) -> sitk.Image:
    arr = np.clip(np.round(sitk.GetArrayFromImage(img) * scale), -32768, 32767).astype(np.int16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _maybe_resample(img: sitk.Image, spacing: float | None, interpolator: int, smooth: bool, background: float = 0.0) -> sitk.Image:
    return img if spacing is None else _resample_iso(img, spacing, interpolator, smooth, background)


def build_brain_demo(shared: Path, out: Path, spacing: float | None = BRAIN_SPACING_MM) -> None:
    """Dataset901: four real T2->FLAIR brains (2 mm; ``spacing=None`` keeps the native 1 mm) with brain masks
    and, for the MS cases, lesion maps."""
    cases = [
        ("MS-patient07", shared / "open_ms_data_mni/patient07", "T2.nii.gz", "FLAIR.nii.gz", "lesion_gt.nii.gz", 1.0),
        ("MS-patient19", shared / "open_ms_data_mni/patient19", "T2.nii.gz", "FLAIR.nii.gz", "lesion_gt.nii.gz", 1.0),
        ("TCGA-DU-7294", shared / "brainles_tcga_lgg_sri24/TCGA-DU-7294", "t2.nii.gz", "flair.nii.gz", None, 1000.0),
        ("TCGA-FG-6692", shared / "brainles_tcga_lgg_sri24/TCGA-FG-6692", "t2.nii.gz", "flair.nii.gz", None, 1000.0),
    ]
    for case, folder, t2_name, flair_name, lesion_name, scale in cases:
        t2 = _maybe_resample(sitk.ReadImage(str(folder / t2_name), sitk.sitkFloat32), spacing, sitk.sitkBSpline, True)
        flair = _maybe_resample(sitk.ReadImage(str(folder / flair_name), sitk.sitkFloat32), spacing, sitk.sitkBSpline, True)
        t2_arr = sitk.GetArrayFromImage(t2)
        brain = _largest_component(ndimage.binary_fill_holes(np.abs(t2_arr) > 1e-3 * np.abs(t2_arr).max()))
        box = _bbox(brain, margin=2)
        mask_img = sitk.GetImageFromArray(brain.astype(np.uint8))
        mask_img.CopyInformation(t2)
        _write(_as_int16(_crop_to(t2, box), scale), out / "imagesTr" / f"{case}_0000.nii.gz")
        _write(_as_int16(_crop_to(flair, box), scale), out / "targetsTr" / f"{case}.nii.gz")
        _write(_crop_to(mask_img, box), out / "masksTr" / f"{case}.nii.gz")
        if lesion_name:
            les = _maybe_resample(sitk.ReadImage(str(folder / lesion_name), sitk.sitkFloat32), spacing, sitk.sitkLinear, False)
            les_arr = (sitk.GetArrayFromImage(les) >= 0.5) & brain
            les_img = sitk.GetImageFromArray(les_arr.astype(np.uint8))
            les_img.CopyInformation(t2)
            _write(_crop_to(les_img, box), out / "lesionsTr" / f"{case}.nii.gz")
        logger.info("demo %s: %s voxels", case, [b - a for a, b in box][::-1])
    save_dataset_json(DatasetJson(
        name="DemoT2toFLAIR", source_channels=(ChannelInfo("T2", "MR"),), target=ChannelInfo("FLAIR", "MR"),
        paired=True, file_ending=".nii.gz", num_training=len(cases),
        extra={
            "description": "Real T2 -> FLAIR demo: MS patients 07 and 19 (open_ms_data, MNI space, with consensus "
                           "white-matter lesion masks) and TCGA-LGG DU-7294 and FG-6692 (BrainLes-preprocessed, SRI24 "
                           f"space). Resampled to {spacing or 1:g} mm, cropped to the brain, intensities stored as int16 (MS x1, "
                           "TCGA x1000); brain masks from non-zero T2.",
            "licence": "CC BY (open_ms_data, Lesjak et al. 2017); CC BY 3.0 (TCIA TCGA-LGG). See ATTRIBUTION.md.",
            "reference": "Lesjak Z. et al., Neuroinformatics 2017, doi:10.1007/s12021-017-9348-7; TCIA TCGA-LGG collection.",
        }), out)


def build_petct_demo(shared: Path, out: Path, spacing: float | None = PETCT_SPACING_MM, n_slabs: int = N_SLABS) -> None:
    """Dataset902: one real FDG PET/CT patient (6 mm; ``spacing=None`` keeps the shared 3 mm grid), cut into
    ``n_slabs`` axial slabs used as cases (CT in HU -> PET in SUV)."""
    folder = shared / "petct_tcia_ccth_a01"
    ct = _maybe_resample(sitk.ReadImage(str(folder / "ct_hu_3mm.nii.gz"), sitk.sitkFloat32), spacing, sitk.sitkLinear, True,
                         background=-1024.0)
    pet = _maybe_resample(sitk.ReadImage(str(folder / "pet_suv_3mm.nii.gz"), sitk.sitkFloat32), spacing, sitk.sitkLinear, True)
    body = _maybe_resample(sitk.ReadImage(str(folder / "body_mask_3mm.nii.gz"), sitk.sitkFloat32), spacing, sitk.sitkLinear, False)
    body_arr = _largest_component(sitk.GetArrayFromImage(body) >= 0.5)
    box = _bbox(body_arr, margin=2)
    z0, z1 = box[0]
    edges = np.linspace(z0, z1, n_slabs + 1).round().astype(int)
    for i in range(n_slabs):
        slab_box = [(int(edges[i]), int(edges[i + 1])), box[1], box[2]]
        case = f"CCTH-A01-slab{i}"
        ct_i = _crop_to(ct, slab_box)
        ct_arr = np.clip(np.round(sitk.GetArrayFromImage(ct_i)), -1024, 3071).astype(np.int16)
        ct_out = sitk.GetImageFromArray(ct_arr)
        ct_out.CopyInformation(ct_i)
        pet_i = _crop_to(pet, slab_box)
        pet_arr = np.clip(np.round(sitk.GetArrayFromImage(pet_i), 2), 0, None).astype(np.float32)
        pet_out = sitk.GetImageFromArray(pet_arr)
        pet_out.CopyInformation(pet_i)
        m = sitk.GetImageFromArray(body_arr.astype(np.uint8))
        m.CopyInformation(ct)
        _write(ct_out, out / "imagesTr" / f"{case}_0000.nii.gz")
        _write(pet_out, out / "targetsTr" / f"{case}.nii.gz")
        _write(_crop_to(m, slab_box), out / "masksTr" / f"{case}.nii.gz")
    save_dataset_json(DatasetJson(
        name="DemoCTtoPET", source_channels=(ChannelInfo("CT", "CT"),), target=ChannelInfo("PET", "PET"),
        paired=True, file_ending=".nii.gz", num_training=n_slabs,
        extra={
            "description": "Real CT (HU) -> FDG PET (SUVbw) demo from ONE patient (TCIA CC-Tumor-Heterogeneity CCTH-A01), "
                           f"{spacing or 3:g} mm isotropic, cut into {n_slabs} axial slabs used as cases: they are not independent subjects, "
                           "so cross-validation numbers on this demo say nothing about generalisation.",
            "licence": "CC BY 4.0 (TCIA CC-Tumor-Heterogeneity). See ATTRIBUTION.md.",
            "reference": "Mayr N. et al. 2023, TCIA, doi:10.7937/ERZ5-QZ59.",
        }), out)


def build_demo_data(shared_data: Path, out_dir: Path | None = None) -> Path:
    """Regenerate the shipped demo datasets from the shared real data (developer tool)."""
    out_dir = out_dir or demo_data_dir()
    for ds_id, name in DEMO_DATASETS.items():
        target = out_dir / dataset_folder_name(ds_id, name)
        if target.exists():
            shutil.rmtree(target)
    build_brain_demo(shared_data, out_dir / dataset_folder_name(901, DEMO_DATASETS[901]))
    build_petct_demo(shared_data, out_dir / dataset_folder_name(902, DEMO_DATASETS[902]))
    return out_dir


def install_demo(ids: dict[int, int] | None = None, root: Path | None = None, overwrite: bool = False,
                 simulate_cbct: bool = True) -> list[Path]:
    """Copy the bundled demo datasets into ``$autotrans_raw`` and simulate the CBCT->CT one from the CT->PET CTs.

    ``ids`` maps shipped id -> installed id (903 for the simulated CBCT dataset).
    """
    root = root or raw_root()
    src_root = demo_data_dir()
    installed = []
    for folder in sorted(src_root.iterdir()):
        parsed = parse_dataset_folder_name(folder.name)
        if not parsed or not folder.is_dir():
            continue
        ds_id, name = parsed
        new_id = (ids or {}).get(ds_id, ds_id)
        dest = root / dataset_folder_name(new_id, name)
        clash = [p for p in root.glob(f"Dataset{new_id:03d}_*") if p.name != dest.name] if root.exists() else []
        if clash:
            raise ConfigurationError(f"dataset id {new_id} is already used by {clash[0]}; choose another id")
        if dest.exists():
            if not overwrite:
                logger.info("%s already installed, kept (use --overwrite to replace)", dest)
                installed.append(dest)
                continue
            shutil.rmtree(dest)
        shutil.copytree(folder, dest)
        load_dataset_json(dest)  # validates what was copied
        installed.append(dest)
        logger.info("installed %s", dest)
    if simulate_cbct:
        installed.append(_install_simulated_cbct(root, (ids or {}), overwrite))
    return installed


def _install_simulated_cbct(root: Path, ids: dict[int, int], overwrite: bool) -> Path:
    from autotrans.dataset.cbct import build_simulated_cbct_dataset

    ct_folder = root / dataset_folder_name(ids.get(902, 902), DEMO_DATASETS[902])
    ds_id = ids.get(SIMULATED_CBCT_DEMO[0], SIMULATED_CBCT_DEMO[0])
    dest = root / dataset_folder_name(ds_id, SIMULATED_CBCT_DEMO[1])
    if dest.exists() and not overwrite:
        logger.info("%s already installed, kept (use --overwrite to replace)", dest)
        return dest
    cts = [(p.name[: -len("_0000.nii.gz")], p, ct_folder / "masksTr" / p.name.replace("_0000", ""))
           for p in sorted((ct_folder / "imagesTr").glob("*_0000.nii.gz"))]
    return build_simulated_cbct_dataset(cts, ds_id, SIMULATED_CBCT_DEMO[1], seed=0, overwrite=overwrite,
                                        source_description="Source CTs: the bundled CT->PET demo (TCIA "
                                        "CC-Tumor-Heterogeneity CCTH-A01, CC BY 4.0), three slabs of one patient.")
