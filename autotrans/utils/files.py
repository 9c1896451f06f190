"""Atomic file writes: a reader never sees a half-written plan, checkpoint, array or prediction."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same directory so ``os.replace`` is atomic on POSIX. On error it
    is removed and whatever was at ``path`` before stays untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir_for(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; files written there with ``path``'s name move in.

    For formats made of several files (``.mhd`` + ``.raw``/``.zraw``), the companions move first and the
    file named ``path`` last, so its presence marks a complete write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp_dir
        main = tmp_dir / path.name
        if not main.exists():
            raise FileNotFoundError(f"nothing was written to {main}")
        for f in sorted(tmp_dir.iterdir()):
            if f != main:
                os.replace(f, path.parent / f.name)
        os.replace(main, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def ensure_replaceable(dest: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless asked (checked early, before expensive work)."""
    from autotrans.errors import ConfigurationError

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ConfigurationError(f"{dest} already exists and is not empty (pass --overwrite to replace it)")


@contextmanager
def atomic_directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``dest`` in one rename.

    A failure or interruption leaves ``dest`` as it was and removes the partial folder.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write JSON atomically (numpy scalars and arrays are converted)."""
    with atomic_path(path, suffix=".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.write("\n")


def load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
