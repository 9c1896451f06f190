"""Benchmark: wall time and peak memory of ``--help`` for every console script in setup.py (issue 15.10).

Each script runs as its own fresh interpreter (``python -c "from MODULE import FUNC; FUNC(['--help'])"``, the
same code path as the installed entry point), ``--repeats`` times; the minimum and the median wall time and the
peak RSS of the process tree are reported, plus the heavy libraries the run imported. The target is under 1 s
and no torch/MONAI/SimpleITK/SciPy import; ``tests/cli/test_lazy_help.py`` checks the imports, this the time.

Usage::

    python benchmarks/cli_help_time.py                 # all scripts, 3 repeats
    python benchmarks/cli_help_time.py --repeats 5 --json help_times.json

Not run in CI (timings on a shared machine are for reading, not asserting).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "SimpleITK", "dynamic_network_architectures", "scipy", "skimage", "matplotlib")
logger = logging.getLogger("cli_help_time")


def console_scripts() -> list[tuple[str, str, str]]:
    """``(script, module, function)`` from setup.py's ``CONSOLE_SCRIPTS`` (parsed, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONSOLE_SCRIPTS" for t in node.targets):
            out = []
            for entry in ast.literal_eval(node.value):
                name, target = (x.strip() for x in entry.split("="))
                module, func = target.split(":")
                out.append((name, module, func))
            return out
    raise SystemExit("setup.py has no CONSOLE_SCRIPTS list")


def code(module: str, func: str) -> str:
    return (f"import sys\nfrom {module} import {func} as main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules))\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "out.txt"
        for script, module, func in console_scripts():
            walls, peaks = [], []
            for _ in range(max(1, a.repeats)):
                wall, peak = measure([sys.executable, "-c", code(module, func)], env, log)
                walls.append(wall)
                peaks.append(peak)
            heavy = next((line.split(" ", 1)[1].strip() for line in log.read_text().splitlines()
                          if line.startswith("HEAVY")), "?")
            rows.append({"script": script, "min_s": min(walls), "median_s": statistics.median(walls),
                         "peak_mib": max(peaks), "heavy_imports": heavy.split(",") if heavy else []})
    logger.info("%-34s %8s %9s %9s  %s", "script", "min s", "median s", "peak MiB", "heavy imports")
    for r in rows:
        logger.info("%-34s %8.2f %9.2f %9.0f  %s", r["script"], r["min_s"], r["median_s"], r["peak_mib"],
                    ", ".join(r["heavy_imports"]) or "-")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
