"""Command line: links printed, one-line errors with a non-zero exit, analyze writes the report."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from autotrans.cli.turing import main
from autotrans.turing import Study
from autotrans.turing.store import AnswerStore


def test_create_prints_one_link_per_reader(ct_volumes: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    syn = [f"{s.folder}:{s.label}" for s in ct_volumes["synthetic"]]
    argv = ["create", "--real", str(ct_volumes["real"]), "-o", str(out), "--n_per_class", "2", "--readers",
            "ann", "ben", "--seed", "5", "--modality", "CT", "--url", "https://turing.example.org/"]
    for s in syn:
        argv += ["--synthetic", s]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    study = Study.load(out)
    links = dict(re.findall(r"reader (\w+): (\S+)", stdout))
    assert links == {name: f"https://turing.example.org/read#{r['token']}" for name, r in study.readers.items()}
    assert f"https://turing.example.org/admin#{study.admin_token}" in stdout
    assert len(study.items) == 4


@pytest.mark.parametrize("argv, message", [
    (["create", "--real", "/nonexistent/real", "--synthetic", "/nonexistent/syn", "-o", "OUT", "--modality", "CT"],
     "does not exist"),
    (["serve", "/nonexistent/study"], "not a study folder"),
    (["analyze", "/nonexistent/study", "-o", "OUT"], "not a study folder"),
])
def test_errors_are_one_line_and_non_zero(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and message in err[0]


def test_serve_reports_a_busy_port(study: Study, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", str(study.folder), "--port", str(port)]) == 1
    assert "cannot listen" in capsys.readouterr().err


def test_analyze_cli(study: Study, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = AnswerStore(study.db_path)
    for item in study.readers["alice"]["order"]:
        store.save_answer("alice", item, study.items[item]["truth"], 5, "", 2.0)
    assert main(["analyze", str(study.folder), "-o", str(tmp_path / "rep")]) == 0
    assert "accuracy 100.0%" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.html").is_file()


def test_usage_errors_exit_non_zero() -> None:
    with pytest.raises(SystemExit) as e:
        main(["create", "--real", "x"])
    assert e.value.code != 0


def test_2afc_create_answer_analyze(pet_2afc_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """2AFC from the command line: analyze reports the proportion correct per reader and pooled."""
    import json
    import shutil

    study_dir = tmp_path / "study"
    shutil.copytree(pet_2afc_template, study_dir)
    study = Study.load(study_dir)
    store = AnswerStore(study.db_path)
    for name in study.readers:  # alice always picks the real one, bob always the left one
        for item in study.readers[name]["order"]:
            it = study.items[item]
            pick = it["real"] if name == "alice" else it["volumes"][0]
            store.save_answer(name, item, "real", 3, "", 2.0, display={"colormap": "hot_iron", "fusion": True},
                              picked=pick)
    assert main(["analyze", str(study_dir), str(study_dir), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2AFC proportion correct (= AUC)")
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    per = {p["reader"]: p for p in summary["overall"]["per_reader"]}
    n = len(study.items)
    assert per["alice"]["k"] == n and per["alice"]["n"] == n
    left_real = sum(it["volumes"][0] == it["real"] for it in study.items.values())
    assert per["bob"]["k"] == left_real
    assert summary["position_bias"]["picked_left"] == n + left_real
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "answers_2afc.csv").is_file()


def test_2afc_errors_are_one_line(ct_volumes: dict, pet_2afc_template: Path, ct_study_template: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "other_case.nii.gz").write_bytes(next(ct_volumes["real"].iterdir()).read_bytes())
    argv = ["create", "--real", str(ct_volumes["real"]), "--synthetic", str(lonely), "-o", str(tmp_path / "s"),
            "--modality", "CT", "--design", "2afc"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--design 2afc needs real and synthetic volumes of the same cases" in err[0]
    assert main(["analyze", str(pet_2afc_template), str(ct_study_template), "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be pooled" in err[0]
