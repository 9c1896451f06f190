"""Progress bars that stay readable when output goes to a file (a SLURM log, ``> run.log 2>&1``).

tqdm redraws its line with carriage returns and, for nested bars, cursor-movement escape codes: in a file
that is a wall of ``\\r`` and ``\\x1b[A``. So every bar goes through ``progress``: on a terminal it is a normal
tqdm bar; when stderr is not a terminal, nested bars (``leave=False``: epochs' iterations, tiles, sampling
steps; or any bar opened while another one is drawing, e.g. a grid's per-case bar inside its per-task bar)
are disabled and the outer bars redraw at most once every ``FILE_MININTERVAL`` seconds, so a log file gets a
few plain progress lines instead of escape codes.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: seconds between redraws of an outer bar when stderr is a file (tqdm's default is 0.1 s)
FILE_MININTERVAL = 30.0


def stderr_is_tty() -> bool:
    """Whether progress bars go to a terminal (False for a file, a pipe, a closed or replaced stream)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _open_bars() -> int:
    """Bars still drawing (any tqdm, also one made without this helper): a new bar then nests below them."""
    return sum(1 for bar in list(getattr(tqdm, "_instances", ())) if not getattr(bar, "disable", True))


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, simplified when stderr is not a terminal (see the module docstring).

    ``leave=False`` marks a nested bar: disabled without a terminal. Outer bars stay (one line every
    ``FILE_MININTERVAL`` seconds and a final one), so a long run in a log file still says where it is.
    """
    if not stderr_is_tty():
        if kwargs.get("leave", True) is False or _open_bars():  # nested: in a file it would move the cursor
            kwargs["disable"] = True
        kwargs.setdefault("mininterval", FILE_MININTERVAL)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, **kwargs)
