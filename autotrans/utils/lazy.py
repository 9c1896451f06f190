"""Modules imported on first use, so that ``--help`` and argument errors of every command stay fast.

SimpleITK, SciPy and scikit-image take about a second to import and torch/MONAI ten; a command that only prints
its usage needs none of them. A module that uses one of them throughout binds the name to a ``LazyModule``
instead: the real import happens at the first attribute access (``sitk.ReadImage``), once, and every later
access goes straight to the real module.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A stand-in for ``import name``: imports ``name`` at the first attribute access."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name
        self._lazy_module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._lazy_module is None:
            self._lazy_module = importlib.import_module(self._lazy_name)
        return self._lazy_module

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_lazy_"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self._lazy_module is not None else "not loaded yet"
        return f"<lazy module {self._lazy_name!r} ({state})>"
