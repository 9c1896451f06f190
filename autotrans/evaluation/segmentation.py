"""Segmentation consistency: segment the real and the synthetic volume with one model, compare the label maps.

A synthetic volume is useful downstream when a segmentation model sees the same anatomy in it as in the real
scan (SynthRAD2025 scores sCTs this way with TotalSegmentator). Per label we report Dice and HD95 (mm) between
the segmentation of the reference (taken as ground truth) and that of the prediction. The reference
segmentations do not depend on the model under test, so they are cached beside the results and reused when
several models are evaluated against the same references.

Heavy imports (torch, nnunetv2, totalsegmentator, scipy) happen inside functions: the CLI's ``--help`` stays fast.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from autotrans.errors import ConfigurationError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Channel names that plausibly describe each modality (warned about, never refused: nnU-Net names are free text).
_MODALITY_HINTS = {"CT": ("ct", "hu", "cbct"), "MR": ("mr", "t1", "t2", "flair", "dwi", "adc", "pd"),
                   "PET": ("pet", "suv", "fdg")}
SEGMENTATION_VERSION = 1


@runtime_checkable
class Segmenter(Protocol):
    """A segmentation model applied file to file, so each implementation reads inputs with its own reader."""

    #: ``{label value: label name}``, background excluded.
    labels: dict[int, str]

    def describe(self) -> dict[str, Any]:
        """JSON-able identity (kind, path, folds, ...): recorded in the results and hashed into the cache key."""

    def segment(self, image: Path, output: Path) -> None:
        """Write the integer label map of ``image`` to ``output`` (NIfTI, same grid as ``image``)."""


def segmenter_key(seg: Segmenter) -> str:
    """Short stable folder name for a segmenter's cached label maps."""
    desc = seg.describe()
    digest = hashlib.sha1(json.dumps(desc, sort_keys=True).encode("utf-8")).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(desc.get("name", desc["kind"])))
    return f"{stem}_{digest}"


def _check_modality(channel: str, modality: str | None, what: str) -> None:
    if modality is None:
        return
    hints = _MODALITY_HINTS.get(modality.upper(), ())
    if not any(h in channel.lower() for h in hints):
        log.warning("%s: input channel %r does not look like %s; check that the model suits the target modality",
                    what, channel, modality.upper())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """nnU-Net reports progress with print(); route it to the debug log so the CLI output stays ours."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                log.debug("nnU-Net: %s", line)


class NnUNetSegmenter:
    """A trained nnU-Net v2 model: the folder holding ``plans.json``, ``dataset.json`` and ``fold_X/``.

    The folder is checked at construction (no torch import) so that a wrong path fails before any scoring;
    the predictor is built on first use. Only single-channel models are accepted: the synthetic volume has to
    stand in for the one input the model was trained on.
    """

    def __init__(self, results_folder: PathLike, folds: Sequence[int | str] | None = None,
                 checkpoint: str = "checkpoint_final.pth", device: str = "cpu", use_mirroring: bool = True,
                 modality: str | None = None, tile_step_size: float = 0.5) -> None:
        folder = Path(results_folder).expanduser()
        what = f"--segmenter {folder}"
        if not folder.is_dir():
            raise ConfigurationError(f"{what}: no such folder")
        missing = [n for n in ("plans.json", "dataset.json") if not (folder / n).is_file()]
        if missing:
            raise ConfigurationError(f"{what}: not an nnU-Net v2 results folder (no {', '.join(missing)}; give the "
                                     "folder holding plans.json, dataset.json and fold_X)")
        try:
            dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigurationError(f"{what}: unreadable dataset.json ({e})") from None
        channels = dataset.get("channel_names") or dataset.get("modality") or {}
        if len(channels) != 1:
            raise ConfigurationError(f"{what}: the model takes {len(channels)} input channels "
                                     f"({', '.join(map(str, channels.values()))}); only single-channel models "
                                     "are supported")
        self.channel = str(next(iter(channels.values())))
        _check_modality(self.channel, modality, what)
        labels = dataset.get("labels") or {}
        if any(not isinstance(v, int) for v in labels.values()):
            raise ConfigurationError(f"{what}: region-based model (label values are lists); not supported")
        self.labels = {int(v): str(k) for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if int(v) != 0}
        if not self.labels:
            raise ConfigurationError(f"{what}: dataset.json lists no foreground labels")
        self.file_ending = str(dataset.get("file_ending", ".nii.gz"))
        available = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).is_file())
        if folds is None:
            if not available:
                raise ConfigurationError(f"{what}: no fold_X/{checkpoint}")
            chosen: list[int | str] = [int(f) if f.isdigit() else f for f in available]
        else:
            chosen = [int(f) if str(f).isdigit() else str(f) for f in folds]
            absent = [str(f) for f in chosen if str(f) not in available]
            if absent:
                raise ConfigurationError(f"{what}: no {checkpoint} for fold(s) {', '.join(absent)} "
                                         f"(available: {', '.join(available) or 'none'})")
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigurationError(f"--segmenter_device {device}: use cpu, cuda or cuda:N")
        self.folder, self.folds, self.checkpoint = folder.resolve(), chosen, checkpoint
        self.device, self.use_mirroring, self.tile_step_size = device, use_mirroring, tile_step_size
        self._predictor: Any = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "nnunet", "name": self.folder.name, "path": str(self.folder), "folds": self.folds,
                "checkpoint": self.checkpoint, "channel": self.channel, "mirroring": self.use_mirroring,
                "tile_step_size": self.tile_step_size}

    def _get_predictor(self) -> Any:
        if self._predictor is None:
            import torch
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise ConfigurationError("--segmenter_device cuda: no CUDA device available (use cpu)")
            with _quiet():
                predictor = nnUNetPredictor(tile_step_size=self.tile_step_size, use_mirroring=self.use_mirroring,
                                            device=torch.device(self.device), verbose=False, allow_tqdm=False)
            try:
                with _quiet():
                    predictor.initialize_from_trained_model_folder(str(self.folder), tuple(self.folds),
                                                                   self.checkpoint)
            except (ImportError, RuntimeError) as e:
                # nnU-Net finds the trainer class by importing every trainer module; one whose optional
                # dependency is broken (e.g. a torchvision built for another torch) aborts that search.
                log.warning("nnU-Net's trainer lookup failed (%s: %s); retrying, skipping modules that fail "
                            "to import", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                self._initialize_tolerant(predictor)
            self._predictor = predictor
        return self._predictor

    def _initialize_tolerant(self, predictor: Any) -> None:
        """``initialize_from_trained_model_folder`` with a trainer lookup that survives broken modules."""
        import torch
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        dataset = json.loads((self.folder / "dataset.json").read_text(encoding="utf-8"))
        plans = PlansManager(json.loads((self.folder / "plans.json").read_text(encoding="utf-8")))
        params, first = [], None
        for fold in self.folds:
            ckpt = torch.load(self.folder / f"fold_{fold}" / self.checkpoint, map_location="cpu", weights_only=False)
            first = first or ckpt
            params.append(ckpt["network_weights"])
        assert first is not None  # folds were checked non-empty in __init__
        config = plans.get_configuration(first["init_args"]["configuration"])
        trainer = _find_trainer_class(first["trainer_name"])
        network = trainer.build_network_architecture(
            plans, config, determine_num_input_channels(plans, config, dataset),
            plans.get_label_manager(dataset).num_segmentation_heads, enable_deep_supervision=False)
        network.load_state_dict(params[0])
        predictor.manual_initialization(network, plans, config, params, dataset, first["trainer_name"],
                                        first.get("inference_allowed_mirroring_axes"))

    def segment(self, image: Path, output: Path) -> None:
        """Run the model through nnU-Net's own file pipeline (its reader, resampling, export)."""
        from autotrans.io import file_ending, read_image, write_image

        predictor = self._get_predictor()
        with tempfile.TemporaryDirectory(prefix=".autotrans_seg_", dir=output.parent) as tmp:
            src = Path(image)
            if file_ending(src) != self.file_ending.lower():  # the model's reader expects its own file type
                arr, geo = read_image(src)
                src = Path(tmp) / f"input_0000{self.file_ending}"
                write_image(arr, geo, src)
            with _quiet():
                predictor.predict_from_files_sequential([[str(src)]], [str(Path(tmp) / "seg")],
                                                        save_probabilities=False, overwrite=True)
            labels, geo = read_image(Path(tmp) / f"seg{self.file_ending}", dtype=np.uint16)
            write_image(labels, geo, output, reference=image)


def _find_trainer_class(name: str) -> Any:
    """The nnU-Net trainer class called ``name``, skipping trainer modules that cannot be imported."""
    import importlib
    import pkgutil

    import nnunetv2.training.nnUNetTrainer as base

    for mod in pkgutil.walk_packages(base.__path__, base.__name__ + "."):
        try:
            module = importlib.import_module(mod.name)
        except Exception as e:  # noqa: BLE001 - an unrelated trainer's broken optional dependency
            log.debug("skipping %s: %s", mod.name, e)
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    raise ConfigurationError(f"nnU-Net trainer {name}: class not found in nnunetv2 (custom trainer not installed?)")


class TotalSegmentatorSegmenter:
    """TotalSegmentator (optional dependency) with one of its tasks; ``totalsegmentator[:task]`` on the CLI.

    Not exercised by the test-suite (its weights cannot be fetched offline); only the missing-package error is.
    """

    def __init__(self, task: str = "total", device: str = "cpu", fast: bool = False,
                 modality: str | None = None) -> None:
        if importlib.util.find_spec("totalsegmentator") is None:
            raise ConfigurationError("--segmenter totalsegmentator: package not installed "
                                     "(pip install TotalSegmentator)")
        from totalsegmentator.map_to_binary import class_map

        if task not in class_map:
            raise ConfigurationError(f"--segmenter totalsegmentator:{task}: unknown task "
                                     f"(e.g. {', '.join(sorted(class_map)[:6])})")
        if modality is not None:
            _check_modality("mr" if task.endswith("_mr") else "ct", modality, f"--segmenter totalsegmentator:{task}")
        self.task, self.device, self.fast = task, device, fast
        self.labels = {int(k): str(v) for k, v in sorted(class_map[task].items())}

    def describe(self) -> dict[str, Any]:
        return {"kind": "totalsegmentator", "name": f"totalsegmentator_{self.task}", "task": self.task,
                "fast": self.fast}

    def segment(self, image: Path, output: Path) -> None:
        import nibabel as nib
        from totalsegmentator.python_api import totalsegmentator

        from autotrans.io import read_image, write_image

        with tempfile.TemporaryDirectory(prefix=".autotrans_seg_", dir=output.parent) as tmp:
            seg = Path(tmp) / "seg.nii.gz"
            img = totalsegmentator(str(image), str(seg), ml=True, task=self.task, fast=self.fast,
                                   device=self.device, quiet=True)
            if img is not None and not seg.is_file():
                nib.save(img, str(seg))
            labels, geo = read_image(seg, dtype=np.uint16)
            write_image(labels, geo, output, reference=image)


def make_segmenter(spec: str, folds: Sequence[str] | None = None, checkpoint: str = "checkpoint_final.pth",
                   device: str = "cpu", modality: str | None = None, use_mirroring: bool = True) -> Segmenter:
    """``--segmenter`` value to a segmenter: ``totalsegmentator[:task]`` or an nnU-Net v2 results folder.

    Checks everything that can be checked without loading the model, so mistakes surface before scoring."""
    if spec.lower().split(":", 1)[0] == "totalsegmentator" and not Path(spec).exists():
        task = spec.split(":", 1)[1] if ":" in spec else "total"
        return TotalSegmentatorSegmenter(task=task, device=device, modality=modality)
    return NnUNetSegmenter(spec, folds=folds, checkpoint=checkpoint, device=device, modality=modality,
                           use_mirroring=use_mirroring)


# ----------------------------------------------------------------------------------------------- metrics


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with a face neighbour outside it (the volume edge counts as outside)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                          border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two non-empty masks.

    Distances run from every boundary voxel of one mask to the nearest boundary voxel of the other (Euclidean,
    in mm, voxel centres); HD95 is the larger of the two directed 95th percentiles (MONAI's
    ``HausdorffDistanceMetric(percentile=95)`` definition). Identical masks give 0.
    """
    from scipy import ndimage

    sa, sb = _surface(a), _surface(b)
    if not sa.any() or not sb.any():
        return math.nan
    d_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)
    d_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)
    return float(max(np.percentile(d_to_b[sa], 95), np.percentile(d_to_a[sb], 95)))


def consistency(ref_labels: np.ndarray, pred_labels: np.ndarray, spacing: Sequence[float],
                labels: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    """Per-label Dice and HD95 between the segmentation of the reference and that of the prediction.

    ``spacing`` is ITK ``(x, y, z)`` in mm like the rest of the evaluation; arrays are ``(z, y, x)``.
    Empty cases: absent from both → Dice and HD95 NaN, ``note`` "absent in both" (left out of the aggregates);
    absent from one → Dice 0, HD95 NaN (no surface to measure to), ``note`` naming the side.
    """
    if ref_labels.shape != pred_labels.shape:
        raise ValueError(f"label maps differ in shape: {ref_labels.shape} vs {pred_labels.shape}")
    spacing_zyx = tuple(float(s) for s in spacing)[::-1]
    out: dict[str, dict[str, Any]] = {}
    for value, name in labels.items():
        a, b = ref_labels == value, pred_labels == value
        na, nb = int(a.sum()), int(b.sum())
        row: dict[str, Any] = {"dice": math.nan, "hd95": math.nan, "ref_voxels": na, "pred_voxels": nb,
                               "note": None}
        if na == 0 and nb == 0:
            row["note"] = "absent in both"
        elif na == 0 or nb == 0:
            row["dice"], row["note"] = 0.0, "absent in reference" if na == 0 else "absent in prediction"
        else:
            row["dice"] = 2.0 * int(np.logical_and(a, b).sum()) / (na + nb)
            row["hd95"] = hd95(a, b, spacing_zyx)
        out[name] = row
    return out


# ----------------------------------------------------------------------------------------------- folders


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached_reference(seg: Segmenter, case: str, ref: Path, cache: Path) -> Path:
    """Segmentation of a reference volume, computed once per (segmenter, reference file) and reused."""
    from autotrans.utils.files import load_json, save_json

    out = cache / f"{case}.nii.gz"
    meta = cache / f"{case}.json"
    fp = _fingerprint(ref)
    if out.is_file() and meta.is_file():
        try:
            if load_json(meta) == fp:
                log.info("%s: reusing cached reference segmentation %s", case, out)
                return out
        except (OSError, ValueError):
            pass
    seg.segment(ref, out)
    save_json(fp, meta)
    return out


def summarize_values(values: Sequence[float]) -> dict[str, float]:
    """Mean, median and count over the defined (non-NaN) values."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "n": int(v.size)}


def segmentation_consistency(pairs: Mapping[str, Mapping[str, Path | None]], seg: Segmenter,
                             out_dir: PathLike, run_name: str) -> dict[str, Any]:
    """Segment each case's REF (cached) and PRED, score them, and aggregate; the ``segmentation`` JSON section.

    Label maps: ``<out_dir>/segmentations/<segmenter>/reference/{CASE}.nii.gz`` (shared by every run in
    ``out_dir``, reused while the reference file's path, size and modification time are unchanged) and
    ``<out_dir>/segmentations/<segmenter>/predictions/<run_name>/{CASE}.nii.gz``.
    """
    from autotrans.io import read_image
    from autotrans.utils.progress import progress

    root = Path(out_dir) / "segmentations" / segmenter_key(seg)
    ref_dir, pred_dir = root / "reference", root / "predictions" / run_name
    ref_dir.mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict[str, dict[str, Any]]] = {}
    for case, entry in progress(pairs.items(), desc="segmentation consistency", unit="case"):
        ref_seg = _cached_reference(seg, case, Path(entry["ref"]), ref_dir)
        pred_seg = pred_dir / f"{case}.nii.gz"
        seg.segment(Path(entry["pred"]), pred_seg)
        r, geo = read_image(ref_seg, dtype=np.int32)
        p, _ = read_image(pred_seg, dtype=np.int32)
        cases[case] = consistency(r, p, geo.spacing, seg.labels)
    return _aggregate(cases, seg, ref_dir, pred_dir)


def _aggregate(cases: dict[str, dict[str, dict[str, Any]]], seg: Segmenter, ref_dir: Path,
               pred_dir: Path) -> dict[str, Any]:
    names = list(seg.labels.values())
    per_label = {
        name: {m: summarize_values([c[name][m] for c in cases.values()]) for m in ("dice", "hd95")}
        | {"n_absent_in_one": sum(1 for c in cases.values() if c[name]["note"] in
                                  ("absent in reference", "absent in prediction")),
           "n_absent_in_both": sum(1 for c in cases.values() if c[name]["note"] == "absent in both")}
        for name in names
    }
    case_mean = {case: {m: summarize_values([c[n][m] for n in names])["mean"] for m in ("dice", "hd95")}
                 for case, c in cases.items()}
    return {
        "version": SEGMENTATION_VERSION,
        "segmenter": seg.describe(),
        "labels": {str(k): v for k, v in seg.labels.items()},
        "label_maps": {"reference": str(ref_dir), "prediction": str(pred_dir)},
        "cases": cases,
        "case_mean": case_mean,
        "aggregate": per_label,
        "mean_over_labels": {m: summarize_values([per_label[n][m]["mean"] for n in names])["mean"]
                             for m in ("dice", "hd95")},
        "overall": {m: summarize_values([cm[m] for cm in case_mean.values()]) for m in ("dice", "hd95")},
    }


def csv_columns(section: Mapping[str, Any]) -> tuple[list[str], dict[str, list[float]]]:
    """Extra CSV columns (``seg_dice_<label>``, ``seg_hd95_<label>``, then the per-case label means) per case."""
    names = list(section["labels"].values())
    header = [f"seg_{m}_{n}" for n in names for m in ("dice", "hd95")] + ["seg_dice_mean", "seg_hd95_mean"]
    rows = {case: [float(c[n][m]) for n in names for m in ("dice", "hd95")]
            + [float(section["case_mean"][case]["dice"]), float(section["case_mean"][case]["hd95"])]
            for case, c in section["cases"].items()}
    return header, rows


def segmentation_aggregates(result: PathLike | Mapping[str, Any]) -> dict[str, Any] | None:
    """For reports: a run's segmentation-consistency aggregates, or ``None`` when it was run without one.

    ``result``: an ``autotrans_evaluate`` JSON file or its loaded dict. Returns ``{"segmenter": ...,
    "labels": {name: {"dice": {mean, median, n}, "hd95": {...}, "n_absent_in_one", "n_absent_in_both"}},
    "mean_over_labels": {"dice", "hd95"}, "overall": {"dice": {mean, median, n}, "hd95": {...}}}``
    (strict-JSON ``null`` read back as NaN).
    """
    if not isinstance(result, Mapping):
        path = Path(result)
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigurationError(f"{path}: unreadable evaluation result ({e})") from None
    section = result.get("segmentation")
    if not section:
        return None

    def nan(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: nan(v) for k, v in x.items()}
        return math.nan if x is None else x

    return {"segmenter": section["segmenter"], "labels": nan(section["aggregate"]),
            "mean_over_labels": nan(section["mean_over_labels"]), "overall": nan(section["overall"])}


def remove_segmentations(out_dir: PathLike) -> None:
    """Delete every cached label map below ``out_dir`` (e.g. after the reference volumes were replaced)."""
    shutil.rmtree(Path(out_dir) / "segmentations", ignore_errors=True)
