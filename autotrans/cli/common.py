"""Shared CLI plumbing: logging setup and the error boundary every command runs inside."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from autotrans.errors import AutotransError, DatasetError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; user-facing errors print as ``prog: error: ...`` lines (no traceback) and return 1."""
    try:
        rc = fn()
        return 0 if rc is None else int(rc)
    except DatasetError as e:
        print(f"{prog}: error: {len(e.problems)} problem(s) found, nothing was written:", file=sys.stderr)
        for case, msg in e.problems:
            print(f"{prog}: error: {case}: {msg}", file=sys.stderr)
        return 1
    except AutotransError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
