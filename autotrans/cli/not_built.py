"""Entry points whose implementation has not landed yet: they say so and exit non-zero, never pretend."""
from __future__ import annotations

import sys

_ISSUES = {
    "autotrans_benchmark": "the benchmark grid (issue 6)",
    "autotrans_demo": "the end-to-end demo (issue 6); until then: autotrans_install_demo and autotrans_plan_and_preprocess",
}


def _not_built(name: str) -> int:
    print(f"{name}: not built yet: {_ISSUES[name]} has not landed in this version of autotrans", file=sys.stderr)
    return 2


def main_benchmark() -> int:
    return _not_built("autotrans_benchmark")


def main_demo() -> int:
    return _not_built("autotrans_demo")
