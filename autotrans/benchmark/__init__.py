"""The benchmark grid (plan -> preprocess -> train -> predict -> evaluate, resumable), its SLURM emitter, the
report, and ``autotrans_demo``. See documentation/benchmark.md."""
from __future__ import annotations

from autotrans.benchmark.grid import GridSpec, Task, make_grid
from autotrans.benchmark.report import write_report
from autotrans.benchmark.runner import collect, run_grid, run_task

__all__ = ["GridSpec", "Task", "collect", "make_grid", "run_grid", "run_task", "write_report"]
