"""Blinded study folders: item selection, per-reader order, secret tokens, pre-rendered display data.

Layout of a study folder (the whole folder is private to the study admin; the server never serves it
as files)::

    study.json        ground truth, sources, reader tokens and orders (mode 0600)
    items/<id>.u16    display data per volume: uint16 little-endian, identical size for every volume
    answers.sqlite    answers (created by ``create``, filled by ``serve``)

Item ids come from ``secrets`` and the items are rendered and listed in id order, so neither ids,
file names, file sizes nor modification order relate to the class. All readers see the same items (so
agreement between readers can be measured), each in their own random order.

Two designs:

* ``single`` (default): an item is one volume, called real or synthetic with a 1-5 confidence.
* ``2afc`` (two-alternative forced choice): an item is a pair, the real and one synthetic volume of the
  same case side by side; the reader picks the real one. Each volume has its own random id (``volumes``
  in ``study.json``), the left/right order is drawn per item from the study's seed, and every case is
  used in at most one pair (a real volume seen twice would give itself away as the common one).

With ``--source`` every item also gets its source volume (the CT under a PET, the input MR of an MR to
MR model) as a *context* volume with its own random id: it is real for real and synthetic items alike,
so it can be fused or shown beside the item without revealing anything.
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
FORMAT_VERSION = 1  # designs and context volumes are optional keys: older study files still load
DESIGNS = ("single", "2afc")
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


def select_pairs(
    real: list[Path], synthetic: dict[str, list[Path]], n_pairs: int | None, rng: random.Random
) -> list[dict[str, Any]]:
    """Pick ``n`` cases that have a real and at least one synthetic volume, one pair per case, with the
    models spread evenly over the pairs; the real volume's side (0 left, 1 right) is drawn per pair."""
    real_by_case = {case_key(p): p for p in real}
    synth_by_case: dict[str, dict[str, Path]] = {}
    for label in sorted(synthetic):
        for p in synthetic[label]:
            if case_key(p) in real_by_case:
                synth_by_case.setdefault(case_key(p), {})[label] = p
    cases = sorted(synth_by_case)
    if not cases:
        raise StudyError(
            f"--design 2afc needs real and synthetic volumes of the same cases (same file names); none of the "
            f"{len(real_by_case)} real volumes has a synthetic version"
        )
    n = n_pairs if n_pairs is not None else len(cases)
    if n < 1:
        raise StudyError(f"--n_per_class must be at least 1, got {n}")
    if n > len(cases):
        raise StudyError(f"--n_per_class {n}: --design 2afc uses each case once and only {len(cases)} cases "
                         "have both a real and a synthetic volume")
    picked = rng.sample(cases, n)
    labels = sorted(synthetic)
    rng.shuffle(labels)
    use = {label: 0 for label in labels}
    pairs = []
    for case in picked:
        available = [m for m in labels if m in synth_by_case[case]]
        model = min(available, key=lambda m: use[m])  # least used model first: even spread
        use[model] += 1
        pairs.append({"case": case, "model": model, "real_side": rng.randrange(2),
                      "real_source": str(real_by_case[case].resolve()),
                      "synthetic_source": str(synth_by_case[case][model].resolve())})
    return pairs


def source_for(folder: Path | None, case: str, files: dict[str, Path]) -> Path:
    """The source (context) volume of ``case``; a missing one is an error naming the case."""
    path = files.get(case)
    if path is None:
        raise StudyError(f"--source {folder}: no source volume for case {case!r} (expected a file named {case}.*)")
    return path


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
    design: str = "single",
    source: Path | None = None,
    source_modality: str | None = None,
) -> Study:
    """Build a blinded study folder at ``out`` (which must not exist or be empty).

    ``design`` is ``single`` (one volume per item) or ``2afc`` (a real and a synthetic volume of one case
    per item; ``n_per_class`` then counts pairs). ``source`` is a folder of source volumes named like the
    cases (the CT of a PET, the input of an MR model), served as context for fusion or a side-by-side view;
    ``source_modality`` sets how they are encoded (default: CT for PET, else the study's modality).
    """
    if modality not in render.MODALITIES:
        raise StudyError(f"--modality {modality!r}: choose one of {', '.join(render.MODALITIES)}")
    if design not in DESIGNS:
        raise StudyError(f"--design {design!r}: choose one of {', '.join(DESIGNS)}")
    source_modality = source_modality or ("CT" if modality == "PET" else modality)
    if source_modality not in render.MODALITIES:
        raise StudyError(f"--source_modality {source_modality!r}: choose one of {', '.join(render.MODALITIES)}")
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
    real_files = list_volumes(Path(real), "--real")
    synth_files = {s.label: list_volumes(s.folder, "--synthetic") for s in synthetic}
    source_files = None
    if source is not None:
        source_files = {case_key(p): p for p in list_volumes(Path(source), "--source")}

    # ids come from ``secrets`` (unseeded): they reveal nothing, even with a known seed
    items: dict[str, dict[str, Any]] = {}
    volumes: dict[str, dict[str, Any]] = {}  # every served target volume (single design: the items)
    if design == "single":
        for it in select_items(real_files, synth_files, n_per_class, rng):
            item_id = secrets.token_hex(10)
            items[item_id] = it
            volumes[item_id] = it
    else:
        for pair in select_pairs(real_files, synth_files, n_per_class, rng):
            ids = [secrets.token_hex(10), secrets.token_hex(10)]
            real_id = ids[pair["real_side"]]
            synth_id = ids[1 - pair["real_side"]]
            volumes[real_id] = {"truth": "real", "model": None, "source": pair["real_source"], "case": pair["case"]}
            volumes[synth_id] = {"truth": "synthetic", "model": pair["model"], "source": pair["synthetic_source"],
                                 "case": pair["case"]}
            items[secrets.token_hex(10)] = {"case": pair["case"], "model": pair["model"], "volumes": ids,
                                            "real": real_id}
    contexts: dict[str, dict[str, Any]] = {}
    if source_files is not None:
        for item in items.values():
            ctx_id = secrets.token_hex(10)
            src = source_for(Path(source), item["case"], source_files)  # type: ignore[arg-type]
            contexts[ctx_id] = {"source": str(src.resolve()), "case": item["case"], "modality": source_modality}
            item["context"] = ctx_id

    try:
        planned = [render.header_extent(Path(v["source"])) for v in volumes.values()]
    except ImageReadError as e:
        raise StudyError(str(e)) from None
    grid = render.plan_grid([p[0] for p in planned], [p[1] for p in planned])
    logger.info("display grid %s voxels of %.2f mm for %d volumes", grid.shape, grid.spacing, len(volumes))
    try:  # one dither level for all items, from the coarsest storage precision of any (see render)
        sd = render.dither_sd([render.display_step(Path(v["source"]), modality) for v in volumes.values()], modality)
    except ImageReadError as e:
        raise StudyError(str(e)) from None
    logger.info("display dither: %.3g %s (standard deviation, the same for every item)", sd, render.UNITS[modality])
    dither = render.dither_field(grid, seed) * np.float32(sd)

    study_readers = {}
    item_ids = list(items)
    for name in readers:
        positions = list(range(len(item_ids)))
        rng.shuffle(positions)  # seeded: same seed, same order of the same volumes
        study_readers[name] = {"token": secrets.token_urlsafe(24), "order": [item_ids[p] for p in positions]}

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)  # half-built studies of a killed 'create'
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name), dir=out.parent))
    try:
        (tmp / ITEMS_DIR).mkdir()
        served = {**{v: (volumes[v]["source"], modality, dither) for v in volumes},
                  **{c: (contexts[c]["source"], source_modality, None) for c in contexts}}
        for i, vol_id in enumerate(sorted(served)):  # id order is random with respect to the class
            src, mod, dith = served[vol_id]
            try:
                code = render.render_item(Path(src), grid, mod, dith)
            except ImageReadError as e:
                raise StudyError(str(e)) from None
            (tmp / ITEMS_DIR / f"{vol_id}.u16").write_bytes(code.tobytes())
            logger.debug("rendered volume %d/%d", i + 1, len(served))
        display = render.display_spec(grid, modality)
        if contexts:
            display["context"] = render.context_spec(source_modality)
        meta = {
            "format_version": FORMAT_VERSION,
            "study_id": secrets.token_hex(8),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "modality": modality,
            "design": design,
            "seed": seed,
            "display": display,
            "display_dither_sd": sd,
            "items": dict(sorted(items.items())),
            "readers": study_readers,
            "admin_token": secrets.token_urlsafe(24),
        }
        if design == "2afc":
            meta["volumes"] = dict(sorted(volumes.items()))
        if contexts:
            meta["contexts"] = dict(sorted(contexts.items()))
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
        self.design: str = meta.get("design", "single")
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r}")
        # served target volumes: the items themselves, or the two sides of every 2AFC pair
        self.volumes: dict[str, dict[str, Any]] = meta["volumes"] if self.design == "2afc" else self.items
        self.contexts: dict[str, dict[str, Any]] = meta.get("contexts", {})
        # every id a reader may fetch -> the item it belongs to (views are recorded per item)
        self.owner: dict[str, str] = {}
        for item_id, item in self.items.items():
            for vol_id in self.item_volumes(item_id):
                self.owner[vol_id] = item_id
            if item.get("context"):
                self.owner[item["context"]] = item_id

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
        for item_id in study.owner:
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

    def item_volumes(self, item_id: str) -> list[str]:
        """Ids of the target volumes an item shows: itself (single design) or its left and right side."""
        item = self.items[item_id]
        return list(item["volumes"]) if self.design == "2afc" else [item_id]

    def session_layout(self, order: list[str]) -> dict[str, Any]:
        """What the page needs beyond the item order: the sides of each pair and each item's context
        volume; ids only, all random, so nothing here relates to the class."""
        out: dict[str, Any] = {"design": self.design}
        if self.design == "2afc":
            out["volumes"] = {i: self.item_volumes(i) for i in order}
        if self.contexts:
            out["context"] = {i: self.items[i]["context"] for i in order}
        return out

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
