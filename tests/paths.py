"""Where the tests find real data.

- ``FIXTURES`` (tests/data/): small crops of openly licensed real scans, in the repository, so every test but
  the ``full_data`` ones runs on a fresh clone. ``tests/data/build_fixtures.py`` regenerates them from the shared
  data; ``tests/data/ATTRIBUTION.md`` names their sources and licences.
- ``SHARED_DATA``: the full-resolution real data, ``../shared/data`` beside the clone (CI places it there), or
  ``$AUTOTRANS_SHARED_DATA`` when that is set (empty or a missing folder: absent). ``None`` when absent; only
  tests marked ``full_data`` use it, and they skip, with the reason, when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
SHARED_DATA_ENV = "AUTOTRANS_SHARED_DATA"


def _resolve_shared_data() -> tuple[Path | None, str]:
    env = os.environ.get(SHARED_DATA_ENV)
    if env is not None:
        if not env.strip():
            return None, f"${SHARED_DATA_ENV} is empty"
        path = Path(env).expanduser().resolve()
        return (path, str(path)) if path.is_dir() else (None, f"no folder {path} (from ${SHARED_DATA_ENV})")
    path = REPO.parent / "shared" / "data"
    return (path, str(path)) if path.is_dir() else (None, f"no folder {path}")


SHARED_DATA, SHARED_DATA_WHERE = _resolve_shared_data()  # WHERE: the folder, or why there is none


def fixture_file(relative: str) -> Path:
    """A file under tests/data; a missing one is an error, never a skip (the fixtures ship with the repository)."""
    path = FIXTURES / relative
    if not path.exists():
        raise FileNotFoundError(f"test fixture {path} is missing: it ships with the repository "
                                "(regenerate with `python tests/data/build_fixtures.py`)")
    return path
