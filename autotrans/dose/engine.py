"""Plan on the real CT, recompute on the synthetic CT: the SynthRAD dose protocol with pyRadPlan's pencil beams.

pyRadPlan (BSD-3, a Python reimplementation of matRad) ships the machine data of its photon SVD pencil beam and
proton pencil beam engines in the wheel, so this works offline. It is an optional extra (``autotrans[dose]``):
its dependency tree is heavy, and it is imported only when a dose is computed.

The protocol, per case: beams are set up and a fluence is optimised on the *real* CT (target to the prescription,
body dose kept low); the weights are scaled so the target's mean dose equals the prescription; then the dose of
exactly those beams and weights (the same steering information, so for protons the same spot energies) is
recomputed on the synthetic CT. The difference between the two doses is then due to the synthetic HU alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import resource
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from autotrans.errors import ConfigurationError
from autotrans.utils.files import atomic_path, load_json, save_json
from autotrans.utils.lazy import LazyModule

sitk = LazyModule("SimpleITK")
ndimage = LazyModule("scipy.ndimage")

logger = logging.getLogger("autotrans.dose")

MODALITIES = ("photons", "protons")
#: Default beam arrangements: a 5-field equispaced photon plan (0, 72, ... degrees) and two opposed lateral proton
#: fields, the usual class solutions for a pencil-beam benchmark (SynthRAD used IMRT/VMAT photons and 2-3 field
#: IMPT; a user with a site-specific arrangement passes --gantry_angles).
DEFAULT_ANGLES = {"photons": (0.0, 72.0, 144.0, 216.0, 288.0), "protons": (90.0, 270.0)}
DOSE_EXTRA = "pip install 'autotrans[dose]'"
#: pyRadPlan's pencil-beam engines: photon singular-value-decomposed kernels, proton Hong pencil beam
ENGINES = {"photons": "SVDPB", "protons": "HongPB"}
#: and their beam setups: photon IMRT bixels, intensity-modulated proton spots
GENERATORS = {"photons": "photonIMRT", "protons": "IMPT"}


class DoseError(ConfigurationError):
    """A dose calculation cannot run: the message names the case and the problem."""


@dataclass(frozen=True)
class DoseSettings:
    """Everything that decides a dose comparison; stored in dose.json so a result can be reproduced."""

    modality: str = "photons"
    gantry_angles: tuple[float, ...] = ()  # empty: DEFAULT_ANGLES[modality]
    dose_grid_mm: float = 3.0
    prescription_gy: float = 2.0  # per fraction; DVH differences are also given in % of it
    target_radius_mm: float = 20.0  # the automatic target's radius (a smaller body gets a smaller sphere)
    gamma_criteria: tuple[tuple[float, float], ...] = ((3.0, 3.0), (2.0, 2.0), (1.0, 1.0))
    cutoff_percent: float = 10.0

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigurationError(f"--modality {self.modality!r}: choose from {', '.join(MODALITIES)}")
        if not self.gantry_angles:
            object.__setattr__(self, "gantry_angles", DEFAULT_ANGLES[self.modality])
        object.__setattr__(self, "gantry_angles", tuple(float(a) % 360.0 for a in self.gantry_angles))
        for name in ("dose_grid_mm", "prescription_gy", "target_radius_mm"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ConfigurationError(f"{name} {v}: must be a positive number")
        if not 0 <= self.cutoff_percent < 100:
            raise ConfigurationError(f"cutoff_percent {self.cutoff_percent}: must lie in [0, 100)")

    def plan_key(self) -> dict[str, Any]:
        """The settings that shape the reference plan (not the gamma criteria): part of its cache key."""
        return {"modality": self.modality, "gantry_angles": list(self.gantry_angles),
                "dose_grid_mm": self.dose_grid_mm, "prescription_gy": self.prescription_gy,
                "target_radius_mm": self.target_radius_mm}


@dataclass
class Volume:
    """A CT-grid array (z, y, x) with its SimpleITK geometry donor."""

    array: np.ndarray
    image: Any  # SimpleITK.Image carrying the geometry

    def like(self, array: np.ndarray) -> Any:
        img = sitk.GetImageFromArray(array)
        img.CopyInformation(self.image)
        return img


@dataclass
class CaseDose:
    """Doses of one case on the CT grid (Gy) and what it cost."""

    reference: np.ndarray
    synthetic: np.ndarray
    target: np.ndarray
    body: np.ndarray
    target_source: str
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    plan: dict[str, Any] = field(default_factory=dict)


def require_pyradplan() -> Any:
    """Import pyRadPlan or fail with one line naming the extra (and the known pydantic pin)."""
    try:
        import pyRadPlan  # noqa: F401
    except ImportError as e:
        raise DoseError(f"dose evaluation needs pyRadPlan, which is not installed ({e}); install the optional "
                        f"extra: {DOSE_EXTRA}") from None
    try:
        pv = tuple(int(p) for p in version("pydantic").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        pv = (0, 0)
    if pv >= (2, 14):
        raise DoseError(f"pydantic {version('pydantic')} breaks pyRadPlan 0.5's beamlet serializer; install "
                        f"pydantic<2.14 ({DOSE_EXTRA} pins it)")
    # pyRadPlan logs every stage at INFO and draws a bar per beam and ray: keep our log readable unless asked,
    # and draw its bars only on a terminal (as autotrans' own nested bars)
    if logging.getLogger("autotrans").getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pyRadPlan").setLevel(logging.WARNING)
        # "Property overwritten from pln.propDoseCalc: dose_grid": our own settings being applied, every call
        logging.getLogger("pyRadPlan.core._configurable").setLevel(logging.ERROR)
    from pyRadPlan.core._progress import ProgressReporter

    ProgressReporter.console_progress = sys.stderr.isatty()
    return pyRadPlan


def pyradplan_version() -> str:
    try:
        return version("pyRadPlan")
    except PackageNotFoundError:
        return "not installed"


def automatic_target(body: np.ndarray, spacing_zyx: tuple[float, float, float], radius_mm: float,
                     case: str) -> np.ndarray:
    """A sphere at the body's deepest point: reproducible, and wholly inside the body and the scanned volume.

    The deepest point maximises the distance (mm) to the nearest voxel outside the body *or* outside the volume
    (the scan is padded with air), so a body truncated at the scan's ends never gets a sphere cut off by the
    edge; ties go to the first voxel in (z, y, x) order. The radius is ``radius_mm``, or half that depth when
    the body is thinner.
    """
    padded = np.pad(body > 0, 1, constant_values=False)
    depth = ndimage.distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    deepest = float(depth.max()) if depth.size else 0.0
    if deepest < 5.0:
        raise DoseError(f"{case}: the body mask is thinner than 1 cm ({deepest:.1f} mm at its deepest point); "
                        "pass a target mask with -target")
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    r = min(radius_mm, 0.5 * deepest)
    grids = np.ogrid[tuple(slice(0, n) for n in body.shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_zyx))
    return ((d2 <= r * r) & (body > 0)).astype(np.uint8)


def _plan(settings: DoseSettings) -> Any:
    from pyRadPlan import IonPlan, PhotonPlan

    n = len(settings.gantry_angles)
    pln = (PhotonPlan(machine="Generic") if settings.modality == "photons"
           else IonPlan(radiation_mode="protons", machine="Generic"))
    pln.prop_stf = {"generator": GENERATORS[settings.modality],
                    "gantry_angles": np.asarray(settings.gantry_angles, float), "couch_angles": np.zeros(n)}
    g = settings.dose_grid_mm
    pln.prop_dose_calc = {"engine": ENGINES[settings.modality], "dose_grid": {"resolution": {"x": g, "y": g, "z": g}}}
    pln.prop_opt = {"solver": "scipy"}  # pyRadPlan's default (IPOPT) is an extra binary; scipy ships with it
    return pln


def _structures(ct_vol: Volume, ct: Any, target: np.ndarray, body: np.ndarray, prescription: float) -> Any:
    """Target (to the prescription) and body (kept below half of it) with their optimisation objectives."""
    from pyRadPlan.cst import create_cst
    from pyRadPlan.cst._voi import validate_voi
    from pyRadPlan.optimization.objectives import SquaredDeviation, SquaredOverdosing

    t = validate_voi(name="TARGET", voi_type="TARGET", mask=ct_vol.like(target.astype(np.uint8)), ct_image=ct)
    b = validate_voi(name="BODY", voi_type="EXTERNAL", mask=ct_vol.like(body.astype(np.uint8)), ct_image=ct)
    cst = create_cst([t, b], ct)
    cst.vois[0].objectives = [SquaredDeviation(priority=100.0, d_ref=prescription)]
    cst.vois[1].objectives = [SquaredOverdosing(priority=10.0, d_max=0.5 * prescription)]
    return cst


@contextmanager
def _quiet() -> Iterator[None]:
    """pyRadPlan's ray tracer multiplies infinite ray parameters (rays parallel to a grid plane) and discards
    the NaNs, and it warns on every call that no GPU is there; those warnings would bury ours, so they are
    silenced inside its calls only."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Requested GPU device is not available")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _array(dose: Any) -> np.ndarray:
    return (sitk.GetArrayFromImage(dose) if hasattr(dose, "GetSize") else np.asarray(dose)).astype(np.float32)


def _cache_key(ct: np.ndarray, body: np.ndarray, target: np.ndarray, image: Any, settings: DoseSettings) -> str:
    h = hashlib.sha1()
    for a in (ct.astype(np.float32), body.astype(np.uint8), target.astype(np.uint8)):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    geo = [image.GetSpacing(), image.GetOrigin(), image.GetDirection()]
    h.update(json.dumps([geo, settings.plan_key(), pyradplan_version()]).encode())
    return h.hexdigest()[:20]


def reference_plan(ct_vol: Volume, body: np.ndarray, target: np.ndarray, settings: DoseSettings,
                   case: str, cache_dir: Path | None = None) -> tuple[Any, Any, np.ndarray, np.ndarray, dict]:
    """Optimise the plan on the real CT; returns (plan, steering info, weights, reference dose, record).

    The weights and the reference dose are cached under ``cache_dir`` by a hash of the CT, the masks, the grid
    and the plan settings, so evaluating several models on the same cases optimises each plan once.
    """
    require_pyradplan()
    from pyRadPlan import calc_dose_influence, fluence_optimization, generate_stf
    from pyRadPlan.ct import create_ct

    pln = _plan(settings)
    ct = create_ct(cube_hu=ct_vol.image)
    cst = _structures(ct_vol, ct, target, body, settings.prescription_gy)
    t0 = time.perf_counter()
    with _quiet():
        stf = generate_stf(ct, cst, pln)
    record: dict[str, Any] = {"seconds": {"steering": time.perf_counter() - t0},
                              "beams": len(stf.beams),
                              "beamlets": int(sum(b.total_number_of_bixels for b in stf.beams))}
    key = _cache_key(ct_vol.array, body, target, ct_vol.image, settings)
    cached = cache_dir / key if cache_dir is not None else None
    if cached is not None and (cached / "plan.json").is_file():
        meta = load_json(cached / "plan.json")
        weights = np.load(cached / "weights.npy")
        ref = np.load(cached / "reference_dose.npy")
        if weights.shape == (record["beamlets"],) and ref.shape == ct_vol.array.shape:
            logger.info("%s: reference %s plan from the cache (%s)", case, settings.modality, cached)
            record.update(cached=True, optimised_seconds=meta.get("seconds", {}))
            return pln, stf, weights, ref, record
    t0 = time.perf_counter()
    with _quiet():
        dij = calc_dose_influence(ct, cst, stf, pln)
        t1 = time.perf_counter()
        weights = np.asarray(fluence_optimization(ct, cst, stf, dij, pln), dtype=np.float64)
        t2 = time.perf_counter()
        ref = _array(dij.compute_result_ct_grid(weights)["physical_dose"])
    mean_t = float(ref[target > 0].mean()) if (target > 0).any() else 0.0
    if not mean_t > 0:
        raise DoseError(f"{case}: the optimised {settings.modality} plan gives no dose to the target; check that "
                        "the target lies inside the CT and the body")
    scale = settings.prescription_gy / mean_t  # dose is linear in the weights
    weights, ref = weights * scale, (ref * scale).astype(np.float32)
    record["seconds"].update(dose_influence=t1 - t0, optimisation=t2 - t1)
    record["cached"] = False
    if cached is not None:
        cached.mkdir(parents=True, exist_ok=True)
        for name, arr in (("weights.npy", weights), ("reference_dose.npy", ref)):
            with atomic_path(cached / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
        save_json({"case": case, "settings": settings.plan_key(), "seconds": record["seconds"],
                   "pyRadPlan": pyradplan_version()}, cached / "plan.json")
    return pln, stf, weights, ref, record


def recompute(ct_vol: Volume, body: np.ndarray, target: np.ndarray, pln: Any, stf: Any,
              weights: np.ndarray, prescription: float) -> np.ndarray:
    """Dose of the given beams and weights on another CT of the same grid (Gy)."""
    require_pyradplan()
    from pyRadPlan import calc_dose_forward
    from pyRadPlan.ct import create_ct

    ct = create_ct(cube_hu=ct_vol.image)
    cst = _structures(ct_vol, ct, target, body, prescription)
    with _quiet():
        return _array(calc_dose_forward(ct, cst, stf, pln, weights)["physical_dose"])


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def volume(array: np.ndarray, image: Any) -> Volume:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.CopyInformation(image)
    return Volume(np.asarray(array, np.float32), img)


def case_dose(ct_ref: np.ndarray, ct_syn: np.ndarray, image: Any, body: np.ndarray, target: np.ndarray | None,
              settings: DoseSettings, case: str, cache_dir: Path | None = None) -> CaseDose:
    """Plan on ``ct_ref``, recompute on ``ct_syn`` (both HU on the grid of ``image``).

    Outside the body mask the synthetic CT takes the real CT's values (couch, immobilisation, air): a translation
    model is judged on the patient, and the beams cross the same hardware in both calculations.
    """
    body = (body > 0).astype(np.uint8)
    spacing_zyx = tuple(float(s) for s in image.GetSpacing()[::-1])
    if target is None:
        target = automatic_target(body, spacing_zyx, settings.target_radius_mm, case)
        source = f"automatic: sphere of radius <= {settings.target_radius_mm:g} mm at the body's deepest point"
    else:
        target = ((target > 0) & (body > 0)).astype(np.uint8)
        if not target.any():
            raise DoseError(f"{case}: the target mask has no voxel inside the body mask")
        source = "user target mask (restricted to the body)"
    syn = np.where(body > 0, ct_syn, ct_ref).astype(np.float32)
    t0 = time.perf_counter()
    pln, stf, weights, ref, record = reference_plan(volume(ct_ref, image), body, target, settings, case, cache_dir)
    t1 = time.perf_counter()
    dose_syn = recompute(volume(syn, image), body, target, pln, stf, weights, settings.prescription_gy)
    t2 = time.perf_counter()
    record["seconds"].update(reference_total=t1 - t0, recompute=t2 - t1)
    return CaseDose(ref, dose_syn, target, body, source, seconds=record.pop("seconds"),
                    peak_rss_mib=_peak_rss_mib(), plan=record)


def settings_record(settings: DoseSettings) -> dict[str, Any]:
    d = asdict(settings)
    d["engine"] = ("pyRadPlan photon SVD pencil beam (SVDPB, Generic machine)" if settings.modality == "photons"
                   else "pyRadPlan proton pencil beam (HongPB, Generic machine)")
    d["optimiser"] = "scipy (pyRadPlan)"
    d["pyRadPlan"] = pyradplan_version()
    return d
