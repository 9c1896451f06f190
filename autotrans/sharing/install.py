"""``install_model``: an exported zip into ``$autotrans_results``, validated before anything lands there."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import autotrans
import autotrans.families  # noqa: F401  (registers the shipped families: checkpoints name theirs)
from autotrans.errors import ConfigurationError
from autotrans.families.base import get_family
from autotrans.paths import results_root
from autotrans.planning.plans import Plans
from autotrans.results import load_checkpoint, parse_model_folder_name, save_checkpoint
from autotrans.sharing.layout import _CHUNK, FORMAT, FORMAT_VERSION, MANIFEST, check_member
from autotrans.utils.files import _temp_prefix, load_json

logger = logging.getLogger(__name__)


def _read_manifest(zf: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
    if MANIFEST not in zf.namelist():
        raise ConfigurationError(f"{zip_path}: no {MANIFEST}: a truncated zip, or not a model exported by "
                                 "autotrans_export_model")
    try:
        info = zf.getinfo(MANIFEST)
        if info.file_size > 16 * _CHUNK:
            raise ValueError("too large")
        manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"{zip_path}: {MANIFEST} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise ConfigurationError(f"{zip_path}: {MANIFEST} is not an autotrans model manifest")
    entries = manifest["files"].values()
    if not all(isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
               for e in entries) or not isinstance(manifest.get("format_version", 0), int):
        raise ConfigurationError(f"{zip_path}: {MANIFEST} is malformed (a damaged or tampered zip)")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigurationError(f"{zip_path}: exported in a newer format ({manifest.get('format_version')}) by "
                                 f"autotrans {manifest.get('autotrans_version')}; update autotrans to install it")
    return manifest


def _check_members(zf: zipfile.ZipFile, manifest: dict[str, Any], zip_path: Path) -> dict[str, PurePosixPath]:
    names = [i.filename for i in zf.infolist()]
    if len(names) != len(set(names)):
        raise ConfigurationError(f"{zip_path}: duplicate members (a tampered zip)")
    listed = manifest["files"]
    members: dict[str, PurePosixPath] = {}
    for info in zf.infolist():
        if info.filename == MANIFEST:
            continue
        if info.is_dir():
            raise ConfigurationError(f"{zip_path}: refused member {info.filename!r}: folder entries are not part of "
                                     "an autotrans export")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ConfigurationError(f"{zip_path}: refused member {info.filename!r}: a link")
        try:
            members[info.filename] = check_member(info.filename)
        except ConfigurationError as e:
            raise ConfigurationError(f"{zip_path}: {e}") from None
        if info.filename not in listed:
            raise ConfigurationError(f"{zip_path}: member {info.filename!r} is not listed in {MANIFEST} "
                                     "(a tampered zip)")
    missing = sorted(set(listed) - set(members))
    if missing:
        raise ConfigurationError(f"{zip_path}: {len(missing)} file(s) of {MANIFEST} missing from the zip, e.g. "
                                 f"{missing[0]} (a truncated or incomplete zip)")
    return members


def _extract(zf: zipfile.ZipFile, name: str, dest: Path, expected: dict[str, Any], zip_path: Path) -> None:
    """Copy one member to ``dest``, stopping at the manifest's size and checking its SHA-256."""
    size = int(expected.get("bytes", -1))
    h, n = hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(name) as src, open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            n += len(chunk)
            if n > size:
                raise ConfigurationError(f"{zip_path}: {name} is larger than {MANIFEST} says (a tampered zip)")
            h.update(chunk)
            out.write(chunk)
    if n != size or h.hexdigest() != expected.get("sha256"):
        raise ConfigurationError(f"{zip_path}: {name}: checksum mismatch with {MANIFEST} (a damaged or tampered zip)")


def _absolute_dependencies(state: dict[str, Any], root: Path) -> bool:
    """Make the root-relative dependency paths of an exported checkpoint absolute in ``root``; True if changed."""
    changed = False
    overrides = dict(state.get("overrides") or {})
    for _model, key in get_family(state["family"]).dependencies:
        value = overrides.get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        try:
            check_member(value)
        except ConfigurationError:
            continue  # not a path of our layout: left as it is (inference never reads it)
        overrides[key] = str(root.absolute() / value)
        changed = True
    state["overrides"] = overrides
    return changed


def _validate_model_folder(folder: Path, name: str, root: Path, zip_path: Path) -> None:
    """Every checkpoint loads with the weights-only loader, belongs to the folder's plans and configuration and
    names a family this autotrans knows; dependency paths are made absolute in the installing root."""
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        raise ConfigurationError(f"{zip_path}: {name} lacks plans.json or dataset.json")
    try:
        plans = Plans.load(folder / "plans.json")
        load_json(folder / "dataset.json")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigurationError(f"{zip_path}: {name}: unreadable plans.json or dataset.json ({e})") from None
    configuration = parse_model_folder_name(folder.name)[2]  # type: ignore[index]
    ckpts = sorted(folder.glob("fold_*/*.pth"))
    if not ckpts:
        raise ConfigurationError(f"{zip_path}: {name} holds no checkpoint")
    for path in ckpts:
        rel = f"{name}/{path.relative_to(folder).as_posix()}"
        try:
            state = load_checkpoint(path, plans.data)
        except ConfigurationError as e:
            raise ConfigurationError(str(e).replace(str(path), f"{zip_path}: {rel}")) from None
        if state["configuration"] != configuration:
            raise ConfigurationError(f"{zip_path}: {rel}: a checkpoint of configuration {state['configuration']!r} "
                                     f"in a {configuration!r} folder")
        try:
            get_family(state["family"])
        except ConfigurationError as e:
            raise ConfigurationError(f"{zip_path}: {rel}: {e} (installed autotrans {autotrans.__version__})") from None
        if _absolute_dependencies(state, root):
            save_checkpoint(state, path)


def install_model(zip_file: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Install an exported model zip into ``$autotrans_results``; returns the model folders installed."""
    zip_path = Path(zip_file)
    if not zip_path.is_file():
        raise ConfigurationError(f"{zip_path}: no such file")
    root = results_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            manifest = _read_manifest(zf, zip_path)
            members = _check_members(zf, manifest, zip_path)
            folders = sorted({"/".join(p.parts[:2]) for p in members.values()})
            existing = [root / f for f in folders if (root / f).exists()]
            if existing and not overwrite:
                raise ConfigurationError(f"{existing[0]} already exists (pass --overwrite to replace that model "
                                         "folder)")
            staging = Path(tempfile.mkdtemp(prefix=_temp_prefix("install"), dir=root))
            try:
                for name in sorted(members):
                    _extract(zf, name, staging / name, manifest["files"][name], zip_path)
                for name in folders:
                    _validate_model_folder(staging / name, name, root, zip_path)
                installed = [_move_into_place(staging / name, root / name) for name in folders]
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as e:
        raise ConfigurationError(f"{zip_path}: not a readable zip ({e}): damaged or truncated") from None
    except (EOFError, zipfile.LargeZipFile) as e:
        raise ConfigurationError(f"{zip_path}: damaged or truncated zip ({type(e).__name__})") from None
    logger.info("installed %s from %s (exported by autotrans %s, torch %s, %s)", ", ".join(folders), zip_path,
                manifest.get("autotrans_version"), manifest.get("torch_version"), manifest.get("exported"))
    return installed


def _move_into_place(staged: Path, dest: Path) -> Path:
    """Rename ``staged`` onto ``dest``; an existing ``dest`` is renamed aside first and removed only after."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if dest.exists():
        aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest.name), dir=dest.parent))
        aside.rmdir()
        os.replace(dest, aside)
    try:
        os.replace(staged, dest)
    except BaseException:
        if aside is not None:
            os.replace(aside, dest)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return dest
