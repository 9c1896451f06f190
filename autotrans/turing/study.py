"""Blinded study folders: item selection, per-reader order, secret tokens, pre-rendered display data.

Layout of a study folder (the whole folder is private to the study admin; the server never serves it
as files)::

    study.json        ground truth, sources, reader tokens and orders (mode 0600)
    items/<id>.u16    display data per item: uint16 little-endian, identical size for every item
    answers.sqlite    answers (created by ``create``, filled by ``serve``)

Item ids come from ``secrets`` and the items are rendered and listed in id order, so neither ids,
file names, file sizes nor modification order relate to the class. All readers see the same items (so
agreement between readers can be measured), each in their own random order.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autotrans.errors import AutotransError
from autotrans.io import SUPPORTED_ENDINGS, ImageReadError
from autotrans.turing import render
from autotrans.turing.store import AnswerStore
from autotrans.utils.files import _temp_prefix, clean_stale_temps, is_hidden

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
ITEMS_DIR = "items"
DB_FILE = "answers.sqlite"
FORMAT_VERSION = 1
ITEM_ID_RE = re.compile(r"^[0-9a-f]{20}$")
READER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class StudyError(AutotransError):
    """A study cannot be created or opened as given."""


@dataclass(frozen=True)
class SyntheticSource:
    folder: Path
    label: str


def parse_synthetic(text: str) -> SyntheticSource:
    """``DIR[:label]``; the label defaults to the folder name (it names the model in the analysis)."""
    folder, sep, label = text.rpartition(":")
    if not sep or not label or "/" in label or os.sep in label:
        folder, label = text, ""
    folder_path = Path(folder)
    label = label or folder_path.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", label):
        raise StudyError(f"--synthetic {text}: label {label!r} must be 1-64 letters, digits or _.+-")
    return SyntheticSource(folder_path, label)


def case_key(path: Path) -> str:
    """File name without its image ending: the same case in real and synthetic folders shares it."""
    name = path.name
    for ending in SUPPORTED_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def list_volumes(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise StudyError(f"{what} folder {folder} does not exist")
    # hidden files are never inputs: temporaries of a killed run (``.<name>.at<pid>.*``), editors' and OS's files
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not is_hidden(p) and p.name.lower().endswith(SUPPORTED_ENDINGS))
    if not files:
        raise StudyError(f"{what} folder {folder} holds no volumes ({', '.join(SUPPORTED_ENDINGS)})")
    return files


def select_items(
    real: list[Path], synthetic: dict[str, list[Path]], n_per_class: int | None, rng: random.Random
) -> list[dict[str, Any]]:
    """Pick ``n`` real and ``n`` synthetic volumes, the synthetic ones spread evenly over the models.

    Synthetic volumes of cases not already shown as real are preferred, so a reader rarely sees both
    versions of one patient.
    """
    n_synth_total = sum(len(v) for v in synthetic.values())
    n = n_per_class if n_per_class is not None else min(len(real), n_synth_total)
    if n < 1:
        raise StudyError(f"--n_per_class must be at least 1, got {n}")
    if n > len(real) or n > n_synth_total:
        raise StudyError(
            f"--n_per_class {n} needs {n} real and {n} synthetic volumes; "
            f"found {len(real)} real and {n_synth_total} synthetic"
        )
    real_pick = rng.sample(real, n)
    shown_real = {case_key(p) for p in real_pick}
    pools: dict[str, list[Path]] = {}
    for label in sorted(synthetic):
        files = list(synthetic[label])
        rng.shuffle(files)
        pools[label] = sorted(files, key=lambda p: case_key(p) in shown_real)  # stable: fresh cases first
    synth_pick: list[tuple[str, Path]] = []
    labels = sorted(pools)
    rng.shuffle(labels)
    while len(synth_pick) < n:
        for label in labels:
            if pools[label] and len(synth_pick) < n:
                synth_pick.append((label, pools[label].pop(0)))
    overlap = sum(case_key(p) in shown_real for _, p in synth_pick)
    if overlap:
        logger.warning("%d synthetic items show cases that are also shown as real", overlap)
    items = [{"truth": "real", "model": None, "source": str(p.resolve()), "case": case_key(p)} for p in real_pick]
    items += [
        {"truth": "synthetic", "model": label, "source": str(p.resolve()), "case": case_key(p)}
        for label, p in synth_pick
    ]
    return items


def reader_links(study: Study, base_url: str) -> dict[str, str]:
    """Reader name -> personal link. The token sits in the URL fragment, which browsers never send."""
    base = base_url.rstrip("/")
    return {name: f"{base}/read#{r['token']}" for name, r in study.readers.items()}


def create_study(
    real: Path,
    synthetic: list[SyntheticSource],
    out: Path,
    modality: str,
    n_per_class: int | None = None,
    readers: list[str] | None = None,
    seed: int | None = None,
) -> Study:
    """Build a blinded study folder at ``out`` (which must not exist or be empty)."""
    if modality not in render.MODALITIES:
        raise StudyError(f"--modality {modality!r}: choose one of {', '.join(render.MODALITIES)}")
    if not synthetic:
        raise StudyError("at least one --synthetic folder is needed")
    labels = [s.label for s in synthetic]
    if len(set(labels)) != len(labels):
        raise StudyError(f"synthetic labels must be distinct, got {labels}")
    if "real" in labels:
        raise StudyError("'real' cannot label a synthetic folder (it names the real volumes in the analysis)")
    readers = list(readers) if readers else ["reader01"]
    for name in readers:
        if not READER_RE.fullmatch(name):
            raise StudyError(f"reader name {name!r}: use 1-64 letters, digits or _.-")
    if len(set(readers)) != len(readers):
        raise StudyError(f"reader names must be distinct, got {readers}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"{out} already exists and is not empty; choose a new study folder")

    seed = secrets.randbits(63) if seed is None else int(seed)
    rng = random.Random(seed)
    items = select_items(
        list_volumes(Path(real), "--real"), {s.label: list_volumes(s.folder, "--synthetic") for s in synthetic},
        n_per_class, rng,
    )
    try:
        planned = [render.header_extent(Path(it["source"])) for it in items]
    except ImageReadError as e:
        raise StudyError(str(e)) from None
    grid = render.plan_grid([p[0] for p in planned], [p[1] for p in planned])
    logger.info("display grid %s voxels of %.2f mm for %d items", grid.shape, grid.spacing, len(items))
    try:  # one dither level for all items, from the coarsest storage precision of any (see render)
        sd = render.dither_sd([render.display_step(Path(it["source"]), modality) for it in items], modality)
    except ImageReadError as e:
        raise StudyError(str(e)) from None
    logger.info("display dither: %.3g %s (standard deviation, the same for every item)", sd, render.UNITS[modality])
    dither = render.dither_field(grid, seed) * np.float32(sd)

    ids = [secrets.token_hex(10) for _ in items]  # unseeded: ids reveal nothing, even with a known seed
    by_id = dict(zip(ids, items, strict=True))
    study_readers = {}
    for name in readers:
        positions = list(range(len(items)))
        rng.shuffle(positions)  # seeded: same seed, same order of the same volumes
        study_readers[name] = {"token": secrets.token_urlsafe(24), "order": [ids[p] for p in positions]}
    order_ids = sorted(by_id)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)  # half-built studies of a killed 'create'
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name), dir=out.parent))
    try:
        (tmp / ITEMS_DIR).mkdir()
        for i, item_id in enumerate(order_ids):  # id order is random with respect to the class
            src = Path(by_id[item_id]["source"])
            try:
                code = render.render_item(src, grid, modality, dither)
            except ImageReadError as e:
                raise StudyError(str(e)) from None
            (tmp / ITEMS_DIR / f"{item_id}.u16").write_bytes(code.tobytes())
            logger.debug("rendered item %d/%d", i + 1, len(order_ids))
        meta = {
            "format_version": FORMAT_VERSION,
            "study_id": secrets.token_hex(8),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "modality": modality,
            "seed": seed,
            "display": render.display_spec(grid, modality),
            "display_dither_sd": sd,
            "items": by_id,
            "readers": study_readers,
            "admin_token": secrets.token_urlsafe(24),
        }
        fd = os.open(tmp / STUDY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, allow_nan=False)
            f.write("\n")
        AnswerStore(tmp / DB_FILE).close()
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.chmod(out, 0o700)
    return Study.load(out)


class Study:
    """A study folder opened read-only (answers live in the SQLite store)."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta
        self.items: dict[str, dict[str, Any]] = meta["items"]
        self.readers: dict[str, dict[str, Any]] = meta["readers"]
        self.display: dict[str, Any] = meta["display"]
        self.modality: str = meta["modality"]
        self.admin_token: str = meta["admin_token"]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Study:
        folder = Path(folder)
        path = folder / STUDY_FILE
        if not path.is_file():
            raise StudyError(f"{folder} is not a study folder (no {STUDY_FILE}); build one with 'autotrans_turing create'")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format_version") != FORMAT_VERSION:
                raise StudyError(f"{path}: unsupported study format {meta.get('format_version')!r}")
            study = cls(folder, meta)
        except (ValueError, KeyError, TypeError) as e:
            raise StudyError(f"{path}: damaged study file ({e})") from None
        for item_id in study.items:
            if not ITEM_ID_RE.fullmatch(item_id) or not study.item_path(item_id).is_file():
                raise StudyError(f"{folder}: display data for an item is missing; rebuild the study")
        return study

    @property
    def identity(self) -> str:
        """What makes two folders the same study: the stored study id (older studies: a digest of their
        admin token, equally unique and kept by copies)."""
        sid = self.meta.get("study_id")
        if isinstance(sid, str) and sid:
            return sid
        return "admin-" + hashlib.sha256(self.admin_token.encode()).hexdigest()[:16]

    def item_path(self, item_id: str) -> Path:
        return self.folder / ITEMS_DIR / f"{item_id}.u16"

    @property
    def db_path(self) -> Path:
        return self.folder / DB_FILE

    def reader_for_token(self, token: str | None) -> str | None:
        """Reader name for ``token`` (constant-time comparison against every reader's token)."""
        found = None
        if not token:
            return None
        for name, r in self.readers.items():
            if hmac.compare_digest(token.encode(), str(r["token"]).encode()):
                found = name
        return found

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.admin_token.encode())
