"""CBCT simulator: a cone-beam-CT-like volume from a real CT, to build CBCT→CT datasets without CBCT scans.

Real CBCT differs from CT by few, noisy projections acquired with much scatter and an uncalibrated HU
scale. We reproduce those effects slice by slice with a parallel-beam model (``skimage`` radon/iradon),
which keeps the artefacts' character (streaks, cupping, shading, noise, HU shift) at a cost of well
under a second per slice, without claiming cone-beam geometry (no cone-angle artefacts):

1. HU → linear attenuation μ = μ_water (1 + HU/1000), slice zero-padded so the whole slice lies in
   the reconstruction circle (no truncation unless ``fov_diameter_mm`` asks for it).
2. Forward projection over ``n_projections`` angles spread on ``arc_degrees`` (sparse / limited view).
3. Transmission counts N = Poisson(I0 · e^(−p) + S): quantum noise plus scatter S, a heavily blurred
   hump (low frequency along the detector) scaled to ``scatter_to_primary`` behind the thickest ray.
   The log transform of primary + scatter produces cupping and streaks between dense structures.
4. Filtered back-projection, μ → HU, then a smooth random 3D shading field, Gaussian image noise,
   and the linear HU mis-calibration ``gain · HU + offset``.

Every random draw comes from one explicit ``numpy.random.Generator`` so a seed reproduces a volume
exactly. The output is float32 HU on the CT's own grid.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from autotrans.dataset.converters.common import body_mask_from_ct, ensure_dataset_id_free
from autotrans.dataset.units import ct_units_problem
from autotrans.dataset.format import ChannelInfo, DatasetJson, save_dataset_json
from autotrans.errors import ConfigurationError
from autotrans.utils.files import atomic_directory, ensure_replaceable, ensure_writable_folder
from autotrans.io import read_image, write_image
from autotrans.paths import dataset_folder_name, raw_root
from autotrans.utils.progress import progress as progress_bar
from autotrans.utils.lazy import LazyModule

ndimage = LazyModule("scipy.ndimage")
skimage_transform = LazyModule("skimage.transform")

logger = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.0193  # water at ~70 keV effective energy (kV CBCT beams), 1/mm
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class CBCTSimulationParams:
    """Knobs of the simulator. Defaults give a visibly CBCT-like but anatomically faithful volume.

    Attributes:
        n_projections: projection angles per slice; fewer → stronger sparse-view streaks (clinical
            CBCT has ~300-900 but is much noisier per projection; 90 matches the streak level cheaply).
        arc_degrees: angular range for the parallel-beam model; 180 is complete, less is limited-view.
        photons_per_ray: unattenuated counts I0 per detector bin; lower → more quantum noise.
        scatter_to_primary: scatter-to-primary ratio behind the thickest part of the slice, left
            uncorrected. Uncorrected pelvis CBCT reaches 1-3; 0.3 mimics a clinically corrected residual.
            Drives cupping (dark centre) and streaks between dense structures.
        scatter_sigma_mm: width of the Gaussian that makes scatter smooth along the detector.
        filter_name: FBP filter (``ramp``, ``shepp-logan``, ``cosine``, ``hamming``, ``hann``).
        shading_hu: amplitude (HU, one standard deviation) of the smooth random 3D shading field.
        shading_scale_mm: correlation length of that field.
        noise_hu: standard deviation of extra white Gaussian image noise (detector electronics).
        hu_gain, hu_offset: CBCT's uncalibrated HU scale, applied last: HU' = gain · HU + offset.
        fov_diameter_mm: transaxial field of view; outside it the CBCT is air (-1000 HU). ``None``
            reconstructs the whole slice.
    """

    n_projections: int = 90
    arc_degrees: float = 180.0
    photons_per_ray: float = 2.0e5
    scatter_to_primary: float = 0.3
    scatter_sigma_mm: float = 100.0
    filter_name: str = "shepp-logan"
    shading_hu: float = 20.0
    shading_scale_mm: float = 80.0
    noise_hu: float = 10.0
    hu_gain: float = 0.95
    hu_offset: float = -30.0
    fov_diameter_mm: float | None = None

    def __post_init__(self) -> None:
        if self.n_projections < 8:
            raise ConfigurationError(f"n_projections {self.n_projections}: need at least 8")
        if not 10.0 <= self.arc_degrees <= 360.0:
            raise ConfigurationError(f"arc_degrees {self.arc_degrees}: must be in [10, 360]")
        if self.photons_per_ray <= 0 or self.scatter_to_primary < 0 or self.noise_hu < 0 or self.shading_hu < 0:
            raise ConfigurationError("photons_per_ray must be > 0; scatter_to_primary, noise_hu, shading_hu >= 0")
        if self.filter_name not in ("ramp", "shepp-logan", "cosine", "hamming", "hann"):
            raise ConfigurationError(f"filter_name {self.filter_name!r}: ramp, shepp-logan, cosine, hamming or hann")
        if self.fov_diameter_mm is not None and self.fov_diameter_mm <= 0:
            raise ConfigurationError(f"fov_diameter_mm {self.fov_diameter_mm}: must be positive")

    @classmethod
    def ideal(cls) -> "CBCTSimulationParams":
        """Dense views, no noise/scatter/shading/miscalibration: the reconstruction floor of the model."""
        return cls(n_projections=360, photons_per_ray=1e12, scatter_to_primary=0.0, shading_hu=0.0,
                   noise_hu=0.0, hu_gain=1.0, hu_offset=0.0, filter_name="ramp")


def _simulate_slice(
    mu: np.ndarray, pixel_mm: float, p: CBCTSimulationParams, theta: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Projection-domain degradation and FBP of one padded square μ slice (1/mm)."""
    sino = skimage_transform.radon(mu, theta=theta, circle=True, preserve_range=True) * pixel_mm  # line integrals
    primary = p.photons_per_ray * np.exp(-sino)
    if p.scatter_to_primary > 0:
        # Scatter arises where photons interact (∝ 1 − e^(−p)) and reaches the detector as a broad hump
        # under the object shadow; scaled so the thickest ray has the requested scatter-to-primary ratio.
        # Low-primary (thick) rays gain most in relative terms, hence cupping and inter-bone streaks.
        sigma_px = p.scatter_sigma_mm / pixel_mm
        hump = ndimage.gaussian_filter1d(1.0 - np.exp(-sino), sigma_px, axis=0, mode="constant")
        thick = np.argmax(sino, axis=0)
        cols = np.arange(sino.shape[1])
        scale = p.scatter_to_primary * primary[thick, cols] / np.maximum(hump[thick, cols], 1e-12)
        scatter = hump * scale[None, :]
    else:
        scatter = 0.0
    counts = rng.poisson(primary + scatter).astype(np.float64)
    # Scatter is not corrected, as on an uncorrected CBCT: the log sees primary + scatter.
    measured = -np.log(np.maximum(counts, 1.0) / p.photons_per_ray)
    rec = skimage_transform.iradon(measured / pixel_mm, theta=theta, circle=True, filter_name=p.filter_name, preserve_range=True)
    if p.arc_degrees < 180.0:
        rec *= 180.0 / p.arc_degrees  # iradon normalises by π over n angles; a short arc covers less
    return rec


def _shading_field(shape: tuple[int, int, int], spacing_zyx: tuple[float, ...], p: CBCTSimulationParams,
                   rng: np.random.Generator) -> np.ndarray:
    """Smooth zero-mean random field (HU) with correlation length ``shading_scale_mm``."""
    if p.shading_hu <= 0:
        return np.zeros(shape, np.float32)
    step = max(p.shading_scale_mm / 4.0, max(spacing_zyx))
    coarse_shape = tuple(max(2, int(np.ceil(n * s / step)) + 1) for n, s in zip(shape, spacing_zyx))
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma=2.0, mode="wrap")
    coarse /= max(float(coarse.std()), 1e-12)
    zoom = [n / c for n, c in zip(shape, coarse_shape)]
    field = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]
    return (p.shading_hu * field).astype(np.float32)


def fov_mask(shape_yx: tuple[int, int], spacing_yx: tuple[float, float], diameter_mm: float | None) -> np.ndarray:
    """Axial disc of the CBCT field of view, centred on the slice."""
    if diameter_mm is None:
        return np.ones(shape_yx, bool)
    yy = (np.arange(shape_yx[0]) - (shape_yx[0] - 1) / 2.0) * spacing_yx[0]
    xx = (np.arange(shape_yx[1]) - (shape_yx[1] - 1) / 2.0) * spacing_yx[1]
    return (yy[:, None] ** 2 + xx[None, :] ** 2) <= (diameter_mm / 2.0) ** 2


def simulate_cbct(
    ct_hu: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    rng: np.random.Generator,
    params: CBCTSimulationParams = CBCTSimulationParams(),
    progress: bool = False,
) -> np.ndarray:
    """Simulate a CBCT (float32 HU, same ``(z, y, x)`` grid) from a CT in HU.

    ``rng`` is required so that reproducibility is the caller's explicit choice. In-plane pixels are
    treated as square with the mean of the two spacings (path lengths only; the grid is unchanged).
    """
    if ct_hu.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) CT, got shape {ct_hu.shape}")
    p = params
    nz, ny, nx = ct_hu.shape
    pixel_mm = float(spacing_zyx[1] + spacing_zyx[2]) / 2.0
    side = int(np.ceil(np.hypot(ny, nx))) + 2  # every pixel of the slice inside the inscribed circle
    oy, ox = (side - ny) // 2, (side - nx) // 2
    theta = np.linspace(0.0, p.arc_degrees, p.n_projections, endpoint=False)
    mu = np.clip(MU_WATER_PER_MM * (1.0 + np.clip(ct_hu, HU_MIN, HU_MAX).astype(np.float64) / 1000.0), 0.0, None)
    out = np.empty(ct_hu.shape, np.float32)
    padded = np.zeros((side, side), np.float64)
    for z in progress_bar(range(nz), desc="simulating CBCT", unit="slice", disable=not progress, leave=False):
        padded[oy : oy + ny, ox : ox + nx] = mu[z]
        rec = _simulate_slice(padded, pixel_mm, p, theta, rng)[oy : oy + ny, ox : ox + nx]
        out[z] = 1000.0 * (rec / MU_WATER_PER_MM - 1.0)
    out += _shading_field(out.shape, spacing_zyx, p, rng)
    if p.noise_hu > 0:
        out += rng.normal(0.0, p.noise_hu, size=out.shape).astype(np.float32)
    out = p.hu_gain * out + p.hu_offset
    fov = fov_mask((ny, nx), (spacing_zyx[1], spacing_zyx[2]), p.fov_diameter_mm)
    out[:, ~fov] = -1000.0
    return np.clip(out, HU_MIN, HU_MAX).astype(np.float32)


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """Generator of one case: depends on the seed and the case id only, not on the processing order."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))])


def check_ct(ct: np.ndarray, case_id: str, path: Path) -> None:
    """Refuse a CT with NaN/Inf voxels (the projections would be NaN), naming the case; warn when its values do
    not look like HU (the simulator maps HU to attenuation)."""
    finite = np.isfinite(ct)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(ct).sum()), int(np.isinf(ct).sum())
        raise ConfigurationError(f"{case_id}: CT {path} contains {n_nan} NaN and {n_inf} Inf voxels; "
                                 "the simulator needs finite HU values")
    why = ct_units_problem(float(ct.min()), float(ct.max())) if ct.size else None
    if why:
        logger.warning("%s: %s: %s", case_id, path, why)


def _write_case(root: Path, case_id: str, ct_path: Path, mask_path: Path | None,
                params: CBCTSimulationParams, seed: int) -> None:
    """Simulate one case and write its CBCT, CT and field-of-view-limited body mask under ``root``."""
    ct, geo = read_image(ct_path)
    check_ct(ct, case_id, ct_path)
    if mask_path is not None:
        mask, mgeo = read_image(mask_path, dtype=np.uint8)
        if (why := geo.mismatch(mgeo)) is not None:
            raise ConfigurationError(f"{case_id}: mask {mask_path} grid differs from the CT ({why})")
    else:
        mask = body_mask_from_ct(ct)
    cbct = simulate_cbct(ct, geo.spacing_zyx, case_rng(seed, case_id), params)
    fov = fov_mask(ct.shape[1:], geo.spacing_zyx[1:], params.fov_diameter_mm)
    integer = np.all(ct == np.round(ct)) and ct.min() >= -32768 and ct.max() <= 32767
    write_image(cbct, geo, root / "imagesTr" / f"{case_id}_0000.nii.gz")
    write_image(ct.astype(np.int16) if integer else ct, geo, root / "targetsTr" / f"{case_id}.nii.gz")
    write_image(((mask > 0) & fov[None]).astype(np.uint8), geo, root / "masksTr" / f"{case_id}.nii.gz")


def build_simulated_cbct_dataset(
    cts: list[tuple[str, Path, Path | None]],
    dataset_id: int,
    name: str = "SimulatedCBCTtoCT",
    params: CBCTSimulationParams = CBCTSimulationParams(),
    seed: int = 0,
    source_description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write ``$autotrans_raw/DatasetXXX_Name``: imagesTr = simulated CBCT, targetsTr = the real CT.

    ``cts`` lists ``(case_id, ct_path, mask_path_or_None)``; without a mask the body mask is computed from
    the CT. The mask is restricted to the simulated field of view so that training losses and metrics
    never reward inventing anatomy the CBCT cannot see. dataset.json carries ``"simulated": true`` and
    the parameters and seed, so a model trained on it is never mistaken for one trained on real CBCT.
    """
    if not cts:
        raise ConfigurationError("no CT volumes given to simulate CBCT from")
    folder = dataset_folder_name(dataset_id, name)
    dest = raw_root() / folder
    ensure_dataset_id_free(dataset_id, folder)
    ensure_replaceable(dest, overwrite)
    ensure_writable_folder(dest.parent)  # a read-only raw root fails before any CT is simulated
    ids = [c for c, _, _ in cts]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"duplicate case ids among the CTs: {sorted({c for c in ids if ids.count(c) > 1})}")
    with atomic_directory(dest) as tmp:
        for case_id, ct_path, mask_path in progress_bar(cts, desc=f"simulating CBCT for {folder}", unit="case"):
            _write_case(tmp, case_id, Path(ct_path), mask_path, params, seed)
        dj = DatasetJson(
            name=name,
            source_channels=(ChannelInfo("CBCT (simulated)", "CBCT"),),
            target=ChannelInfo("CT", "CT"),
            paired=True,
            file_ending=".nii.gz",
            num_training=len(cts),
            extra={
                "simulated": True,
                "description": (
                    "CBCT simulated from real CT by autotrans (autotrans.dataset.cbct: sparse-view parallel-beam "
                    "FBP, Poisson noise, uncorrected scatter, smooth shading, HU gain/offset); the targets are the "
                    "real CTs. Not real CBCT. " + source_description
                ).strip(),
                "licence": "that of the source CTs (see their terms)",
                "reference": "autotrans CBCT simulator, documentation/cbct_simulation.md",
                "simulation": {"seed": seed, "params": asdict(params)},
            },
        )
        save_dataset_json(dj, tmp)
    logger.info("wrote %s (%d simulated CBCT/CT pairs)", dest, len(cts))
    return dest
