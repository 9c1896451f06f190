"""``autotrans_predict`` hardening: inputs never overwritten, step size and workload, partial failures, temps.

Each test is named after the symptom it guards against. Models are the tiny exact test families of
``tests/inference/helpers.py`` on the plan made from the bundled demo CT slabs (``cbct_plan``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autotrans.cli.predict import main
from tests.inference.conftest import cbct_plan, smooth_ct  # noqa: F401  (cbct_plan is a fixture)
from tests.inference.helpers import make_model
from tests.inference.test_predict_cli import _case as _write_case, _errors

FAST = ["-npp", "0", "-nps", "0", "-device", "cpu"]


def _case(folder: Path, name: str, spacing=(6.0, 6.0, 6.0), shape=(20, 30, 28)) -> Path:
    return _write_case(folder, name, smooth_ct(shape), spacing=spacing)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def model(roots: dict[str, Path], cbct_plan: Path) -> Path:  # noqa: F811
    return make_model(roots["autotrans_results"], cbct_plan, "test_identity", {"0": {}})


# 1. -o equal to -i, outputs colliding with inputs

def test_output_folder_equal_to_input_overwrote_an_input(model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    inp = tmp_path / "in"
    first = _case(inp, "A_0000")  # case A
    _case(inp, "A_0000_0000")  # case A_0000, whose prediction would be A_0000.nii.gz
    before = {p.name: p.read_bytes() for p in inp.iterdir()}
    for out in (inp, tmp_path / "in" / ".." / "in"):
        assert main(["-i", str(inp), "-o", str(out), *FAST]) == 1
        (err,) = _errors(capsys)
        assert "is the input folder" in err and "choose another -o" in err
    os.symlink(inp, tmp_path / "link")  # the same folder under another name
    assert main(["-i", str(inp), "-o", str(tmp_path / "link"), *FAST]) == 1
    assert "is the input folder" in _errors(capsys)[0]
    assert {p.name: p.read_bytes() for p in inp.iterdir()} == before and first.is_file()


def test_output_file_that_is_an_input_file_was_replaced(model: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    victim = _case(inp, "A_0000")
    _case(inp, "A_0000_0000")
    out.mkdir()
    os.link(victim, out / "A_0000.nii.gz")  # the prediction of case A_0000 would land on the input of case A
    before = victim.read_bytes()
    assert main(["-i", str(inp), "-o", str(out), *FAST]) == 1
    errs = _errors(capsys)
    assert "nothing was written" in errs[0]
    assert any("A_0000: its output" in e and "would replace it" in e for e in errs), errs
    assert victim.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["A_0000.nii.gz"]


def test_output_that_is_a_file_or_unwritable_gives_one_line(model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _case(tmp_path / "in", "a_0000")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["-i", str(tmp_path / "in"), "-o", str(blocker), *FAST]) == 1
    (err,) = _errors(capsys)
    assert "is an existing file, not a folder" in err and blocker.read_text() == "not a folder"

    def denied(*args, **kwargs):  # tests run as root, where chmod cannot make a folder unwritable
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("autotrans.inference.folder.tempfile.mkstemp", denied)
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *FAST]) == 1
    (err,) = _errors(capsys)
    assert "is not writable (Permission denied)" in err


# 11. step size validation and workload warnings

@pytest.mark.parametrize("step", ["0", "-0.5", "1.5", "nan", "inf"])
def test_step_size_out_of_range_error_did_not_name_the_flag(step: str, roots: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    _case(tmp_path / "in", "a_0000")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-step_size", step, *FAST]) == 1
    (err,) = _errors(capsys)
    assert "-step_size" in err and "must be in (0, 1]" in err
    assert not (tmp_path / "out").exists()


def test_tiny_step_size_made_an_unbounded_tile_count() -> None:
    from autotrans.inference.windows import compute_starts, count_tiles, tile_slices

    # a stride below one voxel repeated identical tiles without bound; now one tile per voxel at most
    assert compute_starts(100, 64, 1e-4) == list(range(37))
    assert count_tiles((100, 100, 20), (64, 64, 32), 1e-4) == 37 * 37
    # usual step sizes keep their tiling (the cap never applies when patch * step >= 1)
    for size, patch, step in ((100, 64, 0.5), (200, 64, 0.25), (97, 32, 1 / 32), (64, 64, 0.5)):
        n = count_tiles((size, patch, patch), (patch, patch, patch), step)
        assert n == len(tile_slices((size, patch, patch), (patch, patch, patch), step))


def test_long_prediction_gave_no_tile_count_or_warning(model: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _case(tmp_path / "in", "a_0000")
    _case(tmp_path / "in", "b_0000")
    with caplog.at_level(logging.INFO):
        assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-step_size", "1", *FAST]) == 0
    lines = [r.getMessage() for r in caplog.records if "tile predictions on" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("a: ") and "1 pass(es)" in lines[0], lines
    assert "at the measured rate" not in lines[0] and "at the measured rate" in lines[1]  # rate from case a
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)

    # an input far coarser than the plan's spacing is resampled to >10x its voxels: warned before it runs
    caplog.clear()
    _case(tmp_path / "coarse", "c_0000", spacing=(6.0, 6.0, 72.0), shape=(8, 30, 28))
    with caplog.at_level(logging.INFO):
        assert main(["-i", str(tmp_path / "coarse"), "-o", str(tmp_path / "out2"), "-step_size", "1", *FAST]) == 0
    (warn,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warn.startswith("c: ") and "this will take very long" in warn and "x the input's" in warn


def test_sub_voxel_step_size_warned_and_counted(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.inference import folder

    monkeypatch.setattr(folder, "LARGE_WORKLOAD_TILES", 0)  # any tile count counts as huge
    from autotrans.inference.predictor import Predictor

    def stop(self, data, case_id):  # the warnings come before the network runs: stop there
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(Predictor, "predict_folds", stop)
    _case(tmp_path / "in", "a_0000")
    with caplog.at_level(logging.INFO):
        assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-step_size", "0.0001", *FAST]) == 1
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "step_size 0.0001 is a stride of" in text and "tiles are placed at every voxel" in text
    assert "a: " in text and "more than 0 tile predictions" in text


def test_latent_workload_counted_the_sampler_tiles() -> None:
    from types import SimpleNamespace

    from autotrans.inference.latent import predict_latent_volume
    from autotrans.inference.predictor import Predictor, PredictorSettings
    from tests.inference.test_latent_inference import fake

    fam = fake(factor=4, latent_patch=[4, 4, 4])
    fold = SimpleNamespace(family=fam, mirror_axes=[0, 2], fold="0")
    predictor = Predictor(SimpleNamespace(folds=[fold, fold]), PredictorSettings(step_size=0.5))
    volume = torch.zeros(1, 30, 20, 13)
    _, timings = predict_latent_volume(volume, fam, step_size=0.5)
    per_pass, passes, total = predictor.workload(volume.shape[1:])
    assert per_pass == timings["tiles"] == len(fam.calls["sample"]) > 1
    assert (passes, total) == (8, 8 * per_pass)  # 4 mirror combinations x 2 folds


def test_long_sliding_window_sat_at_zero_percent(caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.inference import windows

    monkeypatch.setattr(windows, "PROGRESS_FIRST_S", 0.0)
    monkeypatch.setattr(windows, "PROGRESS_EVERY_S", 1e9)
    vol = torch.zeros(1, 8, 8, 12)
    with caplog.at_level(logging.INFO, logger="autotrans.inference.windows"):
        out = windows.sliding_window(vol, lambda x: x + 1, (8, 8, 4), step_size=1.0)
    assert torch.allclose(out, torch.ones_like(out))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("sliding window: 1 of 3 tiles after") and "left for this window" in line


# 14. one failed case: honest summary, no timings

def test_failed_case_summary_said_nothing_was_written(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.inference import folder

    real = folder.write_image

    def failing(array, geometry, path, **kwargs):
        if Path(path).name == "b.nii.gz":
            raise OSError(28, "No space left on device")
        return real(array, geometry, path, **kwargs)

    monkeypatch.setattr(folder, "write_image", failing)
    for name in ("a_0000", "b_0000", "c_0000"):
        _case(tmp_path / "in", name)
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "in"), "-o", str(out), "--save_uncertainty", *FAST]) == 1
    errs = _errors(capsys)
    assert "nothing was written:" not in errs[0]
    assert "1 of 3 case(s) failed and nothing of them was written (b)" in errs[0], errs
    assert "2 case(s) were written to" in errs[0] and "(a, c)" in errs[0], errs
    assert len(errs) == 2 and "b: export failed" in errs[1] and "No space left" in errs[1], errs
    # the std map written before the failing prediction is removed too: nothing of b stays behind
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "a_std.nii.gz", "c.nii.gz", "c_std.nii.gz",
                                                     "timings.json"]
    timings = json.loads((out / "timings.json").read_text())
    assert {"a", "c"} <= timings.keys() and "b" not in timings


def test_failed_network_run_aborted_the_other_cases(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.inference.predictor import Predictor

    real = Predictor.predict_folds

    def failing(self, data, case_id):
        if case_id == "a":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, data, case_id)

    monkeypatch.setattr(Predictor, "predict_folds", failing)
    _case(tmp_path / "in", "a_0000")
    _case(tmp_path / "in", "b_0000")
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "in"), "-o", str(out), *FAST]) == 1
    errs = _errors(capsys)
    assert "1 of 2 case(s) failed" in errs[0] and "were written to" in errs[0] and "(b)" in errs[0], errs
    assert any("a: prediction failed: CUDA out of memory" in e for e in errs), errs
    assert sorted(p.name for p in out.iterdir()) == ["b.nii.gz", "timings.json"]
    assert "a" not in json.loads((out / "timings.json").read_text())


def test_all_cases_failed_summary_says_none_written(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrans.inference.predictor import Predictor

    def failing(self, data, case_id):
        raise RuntimeError("boom")

    monkeypatch.setattr(Predictor, "predict_folds", failing)
    _case(tmp_path / "in", "a_0000")
    assert main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *FAST]) == 1
    errs = _errors(capsys)
    assert "1 of 1 case(s) failed and nothing of them was written (a); no case was written:" in errs[0], errs
    assert not (tmp_path / "out" / "timings.json").exists()


# 15. stale temporaries of a killed run; hidden files are no inputs

def test_stale_temps_of_killed_predict_never_cleaned(model: Path, tmp_path: Path) -> None:
    dead, out, inp = _dead_pid(), tmp_path / "out", tmp_path / "in"
    out.mkdir()
    stale_file = out / f".a.nii.gz.at{dead}.k3j4h5.tmp"
    stale_file.write_bytes(b"half a prediction")
    stale_dir = out / f".b.mha.at{dead}.x9y8z7"  # atomic_dir_for's folder
    stale_dir.mkdir()
    (stale_dir / "b.mha").write_bytes(b"half")
    live = out / f".c.nii.gz.at{os.getpid()}.abcdef.tmp"  # a running process's write stays
    live.write_bytes(b"in progress")
    other_hidden = out / ".notes"
    other_hidden.write_text("not ours")
    _case(inp, "a_0000")
    # hidden files in the input folder, image-like or not, are no cases (and no naming errors)
    _case(inp, ".hidden_0000")
    (inp / f".a_0000.nii.gz.at{dead}.qwerty.tmp").write_bytes(b"half an input")
    assert main(["-i", str(inp), "-o", str(out), *FAST]) == 0
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other_hidden.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.nii.gz", "timings.json"]


def test_hidden_input_files_are_not_cases(tmp_path: Path) -> None:
    from autotrans.inference.cases import discover_inputs

    _case(tmp_path, "a_0000")
    _case(tmp_path, ".b_0000")
    (tmp_path / ".c_0000.nii.gz.at1.xyz.tmp").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"")
    assert [c.case_id for c in discover_inputs(tmp_path, 1)] == ["a"]
