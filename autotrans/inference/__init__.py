"""Whole-volume inference: sliding windows, fold ensembling and export in physical units.

Python API (the same chain as ``autotrans_predict``)::

    from autotrans.inference import load_predictor
    predictor = load_predictor(dataset="12", configuration="3d_fullres", model="pix2pix", folds=["0", "1"])
    ct = predictor.predict_image("patient_cbct.nii.gz")   # SimpleITK image in the input's geometry
"""
from __future__ import annotations

from typing import Any

from autotrans.inference.folder import predict_folder
from autotrans.inference.latent import predict_latent_volume
from autotrans.inference.models import DEFAULT_CHECKPOINT, find_models, load_model, select_model
from autotrans.inference.predictor import Predictor, PredictorSettings
from autotrans.inference.windows import importance_map, sliding_window, tile_slices


def load_predictor(dataset: str | None = None, configuration: str | None = None, model: str | None = None,
                   plans_name: str | None = None, folds: list[str] | None = None,
                   checkpoint: str = DEFAULT_CHECKPOINT, steps: int | None = None, **settings: Any) -> Predictor:
    """Select a trained model (same rules as the CLI), load its folds and wrap them in a ``Predictor``."""
    s = PredictorSettings(**settings)
    spec = select_model(dataset, configuration, model, plans_name)
    overrides = {"sampling_steps": steps} if steps is not None else None
    return Predictor(load_model(spec, folds, checkpoint, s.device, overrides), s)


__all__ = ["Predictor", "PredictorSettings", "find_models", "importance_map", "load_model", "load_predictor",
           "predict_folder", "predict_latent_volume", "select_model", "sliding_window", "tile_slices"]
