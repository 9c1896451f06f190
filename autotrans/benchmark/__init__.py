"""The benchmark grid (plan -> preprocess -> train -> predict -> evaluate, resumable), its SLURM emitter, the
report, and ``autotrans_demo``. See documentation/benchmark.md."""
from __future__ import annotations

import importlib
from typing import Any

#: public names and their submodules, imported on first use (PEP 562): ``autotrans_demo --help`` reads
#: ``autotrans.benchmark.demo``'s constants without importing the report's plotting and the runner's torch
_EXPORTS = {"GridSpec": "grid", "Task": "grid", "make_grid": "grid", "write_report": "report",
            "collect": "runner", "run_grid": "runner", "run_task": "runner"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"autotrans.benchmark.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autotrans.benchmark' has no attribute {name!r}")


__all__ = ["GridSpec", "Task", "collect", "make_grid", "run_grid", "run_task", "write_report"]
