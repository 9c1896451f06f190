"""Shared fixtures: small crops of real volumes and "synthetic" versions made from them (smoothed or
noised), a study built from them, and a running server on a private copy of that study.

The real volumes are crops shipped in tests/data (see its ATTRIBUTION.md): a column of the CCTH-A01 3 mm CT
(z 80..180, y and x 40..80) and PET (z 80..164, y and x 30..80), and the MS patient 07 FLAIR (z 59..99,
y 60..121, x 60..111). Offsets below are relative to those crops."""
from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from autotrans.io import Geometry, read_image, write_image
from autotrans.turing import Study, SyntheticSource, create_study, make_server
from autotrans.turing.server import TuringServer, serve_in_thread
from tests.paths import fixture_file

CT = fixture_file("ccth_a01/column_ct.nii.gz")
PET = fixture_file("ccth_a01/column_pet.nii.gz")
FLAIR = fixture_file("ms_patient07/flair.nii.gz")

# Distinctive names so the leak test can look for them in everything a reader receives.
CASES = ["pt_zebra_01", "pt_zebra_02", "pt_zebra_03", "pt_zebra_04"]
MODELS = ("cyclegan_kiwi", "diffusion_mango")
REAL_DIR = "realsrc_walnut"
SYNTH_DIRS = ("synthsrc_apricot", "synthsrc_fig")
SOURCE_DIR = "ctsource_quince"


def crop_to(arr: np.ndarray, geo: Geometry, z0: int, shape: tuple[int, int, int], yx0: int = 0) -> tuple[np.ndarray, Geometry]:
    out = np.ascontiguousarray(arr[z0:z0 + shape[0], yx0:yx0 + shape[1], yx0:yx0 + shape[2]])
    return out, Geometry(size=out.shape[::-1], spacing=geo.spacing, origin=geo.origin, direction=geo.direction)


def make_volumes(src: Path, root: Path, shape: tuple[int, int, int] = (24, 40, 40), noise: float = 30.0,
                 yx0: int = 0) -> dict[str, Any]:
    """Real crops of ``src`` (one every 25 slices) plus two fake models: Gaussian-smoothed and noised copies."""
    arr, geo = read_image(src)
    rng = np.random.default_rng(0)
    real, sa, sb = root / REAL_DIR, root / SYNTH_DIRS[0], root / SYNTH_DIRS[1]
    for d in (real, sa, sb):
        d.mkdir(parents=True)
    crops = {}
    for i, case in enumerate(CASES):
        crop, g = crop_to(arr, geo, 25 * i, shape, yx0=yx0)
        crops[case] = crop
        write_image(crop, g, real / f"{case}.nii.gz")
        write_image(gaussian_filter(crop, 1.2), g, sa / f"{case}.nii.gz")
        write_image(crop + rng.normal(0, noise, crop.shape).astype(np.float32), g, sb / f"{case}.nii.gz")
    return {"real": real, "synthetic": [SyntheticSource(sa, MODELS[0]), SyntheticSource(sb, MODELS[1])],
            "crops": crops, "root": root}


@pytest.fixture(scope="session")
def ct_volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_volumes(CT, tmp_path_factory.mktemp("ct_volumes"))


@pytest.fixture(scope="session")
def ct_study_template(ct_volumes: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("studies") / "ct_study"
    create_study(ct_volumes["real"], ct_volumes["synthetic"], out, modality="CT", n_per_class=4,
                 readers=["alice", "bob", "carol"], seed=7)
    return out


@pytest.fixture(scope="session")
def pet_2afc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2AFC PET study with the CT of each case as its source (for the fused view).

    The PET and CT crops are taken at the same slice offsets of the same patient, so each PET pair has
    its own CT; the CT folder has its own distinctive name for the leak test."""
    root = tmp_path_factory.mktemp("pet_2afc")
    pet = make_volumes(PET, root / "pet", noise=0.3)
    ct = make_volumes(CT, root / "ct")
    src = root / SOURCE_DIR
    ct["real"].rename(src)
    out = root / "studies" / "pet_2afc"
    create_study(pet["real"], pet["synthetic"], out, modality="PET", readers=["alice", "bob"], seed=3,
                 design="2afc", source=src)
    return out


@pytest.fixture()
def study_2afc(pet_2afc_template: Path, tmp_path: Path) -> Study:
    """A fresh copy of the 2AFC PET/CT study for each test."""
    dst = tmp_path / "study_2afc"
    shutil.copytree(pet_2afc_template, dst)
    return Study.load(dst)


@pytest.fixture()
def server_2afc(study_2afc: Study) -> Iterator[TuringServer]:
    yield from _serving(study_2afc)


@pytest.fixture()
def study(ct_study_template: Path, tmp_path: Path) -> Study:
    """A fresh copy of the CT study (empty answer table) for each test."""
    dst = tmp_path / "study"
    shutil.copytree(ct_study_template, dst)
    return Study.load(dst)


def _serving(study: Study) -> Iterator[TuringServer]:
    """A server for ``study`` on a free local port, shut down and closed when the test ends."""
    srv = make_server(study, "127.0.0.1", 0)
    serve_in_thread(srv)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def server(study: Study) -> Iterator[TuringServer]:
    yield from _serving(study)


class Client:
    """Raw HTTP client (http.client) so tests control every header and byte."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def request(self, method: str, path: str, token: str | None = None, body: bytes | str | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if isinstance(body, dict):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, token)

    def pick(self, token: str, item: str, volume: str, confidence: int = 3, **extra: Any
             ) -> tuple[int, dict[str, str], bytes]:
        """A 2AFC answer: ``volume`` is the id of the side taken for the real one."""
        body = {"item": item, "pick": volume, "confidence": confidence, "time_on_item_s": 4.5, **extra}
        return self.request("POST", "/api/answer", token, body)

    def answer(
        self, token: str, item: str, answer: str = "real", confidence: int = 3, **extra: Any
    ) -> tuple[int, dict[str, str], bytes]:
        body = {"item": item, "answer": answer, "confidence": confidence, "time_on_item_s": 4.5, **extra}
        return self.request("POST", "/api/answer", token, body)


@pytest.fixture()
def client(server: TuringServer) -> Client:
    return Client(server.url)
