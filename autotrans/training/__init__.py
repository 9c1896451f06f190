"""The training engine: one generic loop that drives any registered family (see documentation/training_engine.md).

Python API::

    from autotrans.training import TrainSettings, run_training
    run_training(TrainSettings(dataset="11", configuration="3d_fullres", model="pix2pix", fold="0", device="cpu"))
"""
from __future__ import annotations

from autotrans.training.run import prepare, run_training
from autotrans.training.settings import TrainSettings, parse_overrides

__all__ = ["TrainSettings", "parse_overrides", "prepare", "run_training"]
