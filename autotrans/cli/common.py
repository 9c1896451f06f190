"""Shared CLI plumbing: logging setup and the error boundary every command runs inside."""
from __future__ import annotations

import errno
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
        print(f"{prog}: error: {e.summary}", file=sys.stderr)
        for case, msg in e.problems:
            print(f"{prog}: error: {case}: {msg}", file=sys.stderr)
        return 1
    except AutotransError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # Read-only folders, a full disk, a port in use: the OS's own words, one line, naming the path.
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def describe_os_error(e: OSError) -> str:
    """One line for an OS-level failure: what failed, on which path, and what to do for the usual causes."""
    what = e.strerror or str(e) or type(e).__name__
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    hint = ""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a folder you can write to)"
    elif e.errno == errno.ENOSPC:
        hint = " (free some space; files already complete were kept, the unfinished one was removed)"
    elif e.errno == errno.EADDRINUSE:
        hint = " (choose another --port)"
    return f"cannot use{where}: {what}{hint}" if where else f"{what}{hint}"
