"""The real-data fixtures in tests/data: small, attributed, complete, and reproducible from the shared data."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.paths import FIXTURES


def _builder():
    spec = importlib.util.spec_from_file_location("build_fixtures", FIXTURES / "build_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixtures_are_small_attributed_and_complete() -> None:
    build = _builder()
    data = [f for f in FIXTURES.rglob("*") if f.is_file() and f.suffix not in (".py", ".md", ".pyc")]
    assert sum(f.stat().st_size for f in data) <= 5 * 1024 ** 2
    expected = {*build.CROPS, build.PET_DICOM_REFERENCE,
                *(f"ccth_a01/pet_dicom/{n}" for n in [*build.PET_DICOM, build.RWV_OBJECT])}
    assert {f.relative_to(FIXTURES).as_posix() for f in data} == expected  # every file is built, none is stray
    attribution = (FIXTURES / "ATTRIBUTION.md").read_text()
    for folder in {Path(rel).parts[0] for rel in expected}:
        assert f"`{folder}/`" in attribution, folder
    for needle in ("CC BY 4.0", "CC BY 3.0", "Lesjak", "10.7937/ERZ5-QZ59", "10.7937/3RAG-D070", "BSD",
                   "build_fixtures.py"):
        assert needle in attribution, needle


@pytest.mark.full_data  # needs the original scans
def test_fixtures_are_reproducible_from_shared_data(tmp_path: Path, shared_data: Path) -> None:
    build = _builder()
    build.build(shared_data, tmp_path)
    assert build.differences(tmp_path, FIXTURES) == []
