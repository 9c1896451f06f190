"""Worker pools for per-case work."""
from __future__ import annotations

import multiprocessing as mp
import sys
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """``fork`` on Linux (workers start in milliseconds and never use torch), ``spawn`` elsewhere."""
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
