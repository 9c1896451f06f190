"""On-disk store of preprocessed cases: blosc2 arrays chunked for patch reads, JSON properties, atomic writes.

Per case: ``{case}_source.b2nd`` (C, z, y, x) float32, ``{case}_target.b2nd`` (1, z, y, x) float32,
``{case}_mask.b2nd`` uint8, ``{case}_lesions.b2nd`` int16 (each when present), ``{case}_locations.npz``
(sampled foreground / lesion voxel coordinates for patch sampling), and ``{case}.json`` with everything
export needs. The JSON is written last, so its presence marks a finished case.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from autotrans.utils.files import atomic_path, load_json, save_json

ARRAY_KEYS = ("source", "target", "mask", "lesions")
MAX_BLOCK_BYTES = 128 * 1024
MAX_CHUNK_BYTES = 4 * 1024 ** 2


def chunk_params(shape: tuple[int, ...], patch_size: list[int] | tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks about one patch (capped in bytes) and blocks of at most 128 KiB, channel axis kept at 1.

    A random patch then touches few chunks, and the decompressor only expands the blocks it needs.
    """
    spatial = list(shape[-3:])
    lead = [1] * (len(shape) - 3)
    chunk = [min(int(p), s) for p, s in zip(patch_size, spatial)]
    while math.prod(chunk) * itemsize > MAX_CHUNK_BYTES:
        ax = int(np.argmax(chunk))
        chunk[ax] = max(1, chunk[ax] // 2)
    block = list(chunk)
    while math.prod(block) * itemsize > MAX_BLOCK_BYTES:
        ax = int(np.argmax(block))
        block[ax] = max(1, block[ax] // 2)
    return tuple(lead + chunk), tuple(lead + block)


def _write_b2nd(arr: np.ndarray, path: Path, patch_size: list[int]) -> None:
    chunks, blocks = chunk_params(arr.shape, patch_size, arr.dtype.itemsize)
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "nthreads": 1}
    with atomic_path(path, suffix=".b2nd") as tmp:
        tmp.unlink()  # blosc2 refuses to overwrite an existing urlpath
        try:
            blosc2.asarray(np.ascontiguousarray(arr), urlpath=str(tmp), chunks=chunks, blocks=blocks, cparams=cparams)
        except OSError:
            raise
        except Exception as e:  # blosc2 reports a failed write (disk full, I/O error) as RuntimeError
            raise _write_error(path, arr.nbytes, e) from None


def _write_error(path: Path, nbytes: int, cause: Exception) -> OSError:
    """The OSError behind a failed blosc2 write, so the command line prints it as one line naming the file."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < max(nbytes, 1 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if not os.access(path.parent, os.W_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(path.parent))
    return OSError(errno.EIO, f"could not write ({type(cause).__name__}: {cause})", str(path))


def save_case(out_dir: Path, case: str, arrays: dict[str, np.ndarray | None], locations: dict[str, np.ndarray],
              properties: dict[str, Any], patch_size: list[int]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for key in ARRAY_KEYS:
        arr = arrays.get(key)
        path = out_dir / f"{case}_{key}.b2nd"
        if arr is None:
            if path.exists():
                path.unlink()
            continue
        _write_b2nd(arr, path, patch_size)
    with atomic_path(out_dir / f"{case}_locations.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: v.astype(np.int32) for k, v in locations.items()})
    save_json(properties, out_dir / f"{case}.json")


def case_ids(out_dir: Path) -> list[str]:
    """Finished cases (those with properties) in a preprocessed folder."""
    return sorted(p.stem for p in Path(out_dir).glob("*.json") if not p.name.startswith("."))


class PreprocessedCase:
    """Lazy view of one stored case: arrays open memory-mapped and decompress only the chunks read."""

    def __init__(self, out_dir: str | os.PathLike, case: str) -> None:
        self.dir = Path(out_dir)
        self.case = case
        self.properties: dict[str, Any] = load_json(self.dir / f"{case}.json")
        self._arrays: dict[str, Any] = {}

    def has(self, key: str) -> bool:
        return (self.dir / f"{self.case}_{key}.b2nd").exists()

    def array(self, key: str) -> Any:
        """A blosc2 NDArray (slice it like numpy) or None when the case lacks it."""
        if key not in self._arrays:
            path = self.dir / f"{self.case}_{key}.b2nd"
            self._arrays[key] = blosc2.open(str(path), mode="r", mmap_mode="r") if path.exists() else None
        return self._arrays[key]

    def load(self, key: str) -> np.ndarray | None:
        arr = self.array(key)
        return None if arr is None else arr[...]

    def locations(self) -> dict[str, np.ndarray]:
        with np.load(self.dir / f"{self.case}_locations.npz") as z:
            return {k: z[k] for k in z.files}
