"""Atomic file writes: a reader never sees a half-written plan, checkpoint, array or prediction."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


logger = logging.getLogger(__name__)

# Temporaries are hidden siblings named ``.<final name>.at<pid>.<random>``: the pid lets a later run tell a
# leftover of a killed process (safe to delete) from the write of a process still running (left alone).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.at(?P<pid>\d+)\.[^.]+")


def _temp_prefix(name: str) -> str:
    return f".{name}.at{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_hidden(path: str | os.PathLike) -> bool:
    """Hidden files (ours are temporaries; others are editors' and OS's) are never inputs."""
    return Path(path).name.startswith(".")


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Remove temporaries that a killed autotrans process left in ``folder``; returns how many.

    Only names of our own pattern whose writing process no longer runs are touched, so a concurrent run's
    writes survive.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    for f in list(entries):
        m = _TEMP_RE.match(f.name)
        if not m or _pid_alive(int(m.group("pid"))):
            continue
        try:
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as e:
            logger.warning("could not remove the stale temporary %s: %s", f, e)
    if removed:
        logger.info("removed %d stale temporary file(s) left by an interrupted run in %s", removed, folder)
    return removed


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
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=suffix or ".tmp", dir=path.parent)
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
    tmp_dir = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), dir=path.parent))
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
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest.name), dir=dest.parent))
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


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Check, before any long work and without creating anything, that files can be made in ``folder`` (or,
    while it does not exist yet, in its nearest existing parent).

    Raises the OS's own ``OSError`` (read-only file system, permission denied, disk full) naming ``folder`` itself
    rather than a probe file, so the command-line boundary prints one clear line; bad input found later then
    leaves no empty output folder behind.
    """
    folder = Path(folder)
    try:
        with tempfile.TemporaryFile(prefix=_temp_prefix("write-check"), dir=_nearest_existing(folder)):
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(folder)) from None
    return folder


def ensure_writable_dir(folder: str | os.PathLike, what: str) -> Path:
    """``ensure_writable_folder`` with the message of a ``ConfigurationError`` that says which output
    (``what``) cannot be written, for commands whose outputs are named by an option."""
    from autotrans.errors import ConfigurationError

    folder = Path(folder)
    probe_dir = _nearest_existing(folder)
    if not probe_dir.is_dir():
        raise ConfigurationError(f"{what} {folder}: {probe_dir} exists and is not a folder")
    try:
        ensure_writable_folder(folder)
    except OSError as e:
        raise ConfigurationError(f"{what} {folder}: cannot write there ({e.strerror or e}); "
                                 "choose a folder you can write to") from None
    return folder
