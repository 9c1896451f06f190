"""Shared helpers of the engine tests."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from autotrans.training.settings import TrainSettings

FAST = dict(device="cpu", num_epochs=2, iterations=3, val_iterations=2, seed=0, num_workers=0, val_tta=False)


def settings(model: str = "test_residual", fold: str = "0", configuration: str = "3d_fullres", dataset: str = "11",
             **kw: Any) -> TrainSettings:
    base = TrainSettings(dataset=dataset, configuration=configuration, model=model, fold=fold, **FAST)
    return replace(base, **kw)


def shrink(pre: Path) -> None:
    """Shrink the networks of a preprocessed dataset's plan in place (same building code, a few features)."""
    from autotrans.planning.plans import Plans
    from autotrans.utils.files import save_json
    from tests.families.helpers import shrink_plans

    path = pre / "autotransPlans.json"
    save_json(shrink_plans(Plans.load(path), patch=(16, 16, 16), features=(4, 8)).data, path)


def fold_dir(results: Path, model: str = "test_residual", configuration: str = "3d_fullres", fold: str = "0") -> Path:
    return results / "Dataset011_DemoT2toFLAIR" / f"{model}__autotransPlans__{configuration}" / f"fold_{fold}"


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def tensors_equal(a: Any, b: Any) -> bool:
    """Deep, exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b
