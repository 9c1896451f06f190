"""Cross-validation splits (``splits_final.json``), nnU-Net style and seed."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold

from autotrans.errors import ConfigurationError
from autotrans.utils.files import load_json, save_json

logger = logging.getLogger(__name__)
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], n_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """``KFold(5, shuffle=True, random_state=12345)`` on sorted ids; fewer than 5 cases: leave-one-out."""
    ids = np.array(sorted(case_ids))
    if len(ids) < 2:
        raise ConfigurationError(f"need at least 2 training cases for cross-validation, have {len(ids)}")
    if len(ids) < n_folds:
        logger.warning("only %d training cases: using %d folds (leave-one-out) instead of %d", len(ids), len(ids), n_folds)
        n_folds = len(ids)
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [{"train": ids[tr].tolist(), "val": ids[va].tolist()} for tr, va in kf.split(ids)]


def validate_splits(splits: object, case_ids: list[str], where: str) -> list[dict[str, list[str]]]:
    if not isinstance(splits, list) or not splits or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise ConfigurationError(f"{where}: expected a list of {{'train': [...], 'val': [...]}} folds")
    known = set(case_ids)
    for i, fold in enumerate(splits):
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            raise ConfigurationError(f"{where}: fold {i} names unknown case(s) {', '.join(unknown[:5])}")
        if set(fold["train"]) & set(fold["val"]):
            raise ConfigurationError(f"{where}: fold {i} has cases in both train and val")
    return splits


def ensure_splits(preprocessed_dataset_dir: Path, raw_dataset_dir: Path, case_ids: list[str]) -> Path:
    """Keep an existing split file, else copy a user-supplied raw one, else create the default."""
    out = preprocessed_dataset_dir / "splits_final.json"
    user = raw_dataset_dir / "splits_final.json"
    if out.exists():
        validate_splits(load_json(out), case_ids, str(out))
        return out
    if user.exists():
        splits = validate_splits(load_json(user), case_ids, str(user))
        logger.info("using the user-supplied split file %s", user)
    else:
        splits = make_splits(case_ids)
    save_json(splits, out)
    return out
