"""Settings resolution: plan defaults, flag overrides, the family's batch size, overrides parsing, devices."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autotrans.errors import ConfigurationError
from autotrans.training import parse_overrides, prepare
from autotrans.training.settings import DEFAULT_EPOCHS, mixed_precision
from tests.training.helpers import settings


def test_plan_training_section_then_flags(tiny_brain: Path) -> None:
    path = tiny_brain / "autotransPlans.json"
    plans = json.loads(path.read_text())
    plans["training"] = {"num_epochs": 7, "iterations_per_epoch": 11}
    plans["configurations"]["3d_fullres"]["training"] = {"iterations_per_epoch": 13, "val_iterations": 4}
    plans["configurations"]["3d_fullres"]["families"]["pix2pix"]["batch_size"] = 5
    path.write_text(json.dumps(plans))
    s = prepare(settings(model="pix2pix", num_epochs=None, iterations=None, val_iterations=None, seed=None)).settings
    assert (s.num_epochs, s.iterations, s.val_iterations, s.batch_size) == (7, 13, 4, 5)  # configuration wins
    assert isinstance(s.seed, int) and s.compile is False  # a drawn seed is recorded; no compile on the CPU
    s = prepare(settings(model="pix2pix", num_epochs=3, iterations=2, batch_size=1)).settings
    assert (s.num_epochs, s.iterations, s.batch_size) == (3, 2, 1)
    del plans["training"], plans["configurations"]["3d_fullres"]["training"]
    path.write_text(json.dumps(plans))
    assert prepare(settings(num_epochs=None)).settings.num_epochs == DEFAULT_EPOCHS


def test_overrides_are_json_where_possible() -> None:
    assert parse_overrides(["lambda_l1=50", "betas=[0.5, 0.999]", "d_norm=batch", "spectral_norm=true"]) == {
        "lambda_l1": 50, "betas": [0.5, 0.999], "d_norm": "batch", "spectral_norm": True}
    with pytest.raises(ConfigurationError):
        parse_overrides(["=3"])


def test_precision_per_device() -> None:
    assert mixed_precision(torch.device("cpu")) == (None, False)
    if torch.cuda.is_available():
        dtype, scaler = mixed_precision(torch.device("cuda"))
        assert (dtype, scaler) in ((torch.bfloat16, False), (torch.float16, True))


def test_gpu_augmentation_default_follows_the_device(tiny_brain: Path) -> None:
    """On by default on CUDA with the torch pipeline (workers only read crops), off elsewhere; explicit flags win;
    the batchgenerators pipeline cannot run on the device."""
    from dataclasses import replace

    from autotrans.planning.plans import Plans
    from autotrans.training.augment import AugmentationSettings
    from autotrans.training.settings import resolve

    plans = Plans.load(tiny_brain / "autotransPlans.json")
    cfg = plans.configuration("3d_fullres")
    base = settings(model="pix2pix")
    on = resolve(replace(base, device="cuda"), plans, cfg)
    assert on.gpu_augmentation is True and on.augmentation.on_device is True
    assert resolve(replace(base, device="cpu"), plans, cfg).gpu_augmentation is False
    assert resolve(replace(base, device="cuda", gpu_augmentation=False), plans, cfg).gpu_augmentation is False
    assert resolve(replace(base, device="cpu", gpu_augmentation=True), plans, cfg).gpu_augmentation is True
    bg = replace(base, device="cuda", augmentation=AugmentationSettings(pipeline="batchgenerators"))
    assert resolve(bg, plans, cfg).gpu_augmentation is False
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        resolve(replace(bg, gpu_augmentation=True), plans, cfg)
