"""Training, checkpoints and results folders under hostile or unlucky conditions.

Crafted checkpoints must not run code, bad ``-o`` overrides must be refused before anything on disk is touched,
validation must say what it does (and scale with the run), a full disk during a checkpoint save must keep the
previous checkpoint, and temporaries left by a killed run must be removed when training starts again.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.training.families  # noqa: F401  (registers test_residual)
from autotrans.cli.train import main as train_main
from autotrans.errors import ConfigurationError
from autotrans.results import load_checkpoint
from autotrans.training.run import prepare, rank_failure
from autotrans.training.settings import default_val_iterations, validate_overrides
from tests.training.conftest import _tiny_cache, tiny_brain  # noqa: F401  (fixtures)
from tests.training.helpers import fold_dir, settings

FAST = ["-device", "cpu", "-num_workers", "0", "--seed", "0", "--disable_val_tta"]
QUICK = ["--epochs", "1", "--iterations", "2", "--val_iterations", "0", "--skip_final_validation", *FAST]


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Tiny networks on a busy 2-core machine: one intra-op thread."""


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture, prog: str = "autotrans_train") -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    mine = [line for line in err if line.startswith(f"{prog}:")]
    assert len(mine) == 1 and mine[0].startswith(f"{prog}: error: "), err
    assert not any("Traceback" in line for line in err), err
    return mine[0]


# --- 3: a crafted checkpoint must not execute code on load ----------------------------------------------------
class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for any code an attacker wants to run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _plant_payload(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"family": "test_residual", "configuration": "3d_fullres", "plans_sha1": "x", "overrides": {},
                "networks": {}, "epoch": 1, "train_state": {}, "evil": _Payload(marker)}, path)


def test_crafted_checkpoint_does_not_execute_code_on_load(tiny_brain: Path, roots: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    payload = tmp_path / "shared" / "checkpoint_final.pth"
    _plant_payload(payload, marker)
    # the loader every path shares (autotrans_predict, --c, -pretrained_weights, the benchmark)
    with pytest.raises(ConfigurationError) as e:
        load_checkpoint(payload)
    assert str(payload) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    # -pretrained_weights: one line naming the file, exit 1
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK, "-pretrained_weights", str(payload)]) == 1
    assert str(payload) in one_error_line(capsys)
    assert not marker.exists()
    # --c with the payload planted as the fold's final checkpoint (a shared results folder)
    fd = fold_dir(roots["autotrans_results"])
    _plant_payload(fd / "checkpoint_final.pth", marker)
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK, "--c"]) == 1
    assert "checkpoint_final.pth" in one_error_line(capsys)
    assert not marker.exists()
    # autotrans_predict of that results folder
    from autotrans.cli.predict import main as predict_main

    (fd.parent / "plans.json").write_text((tiny_brain / "autotransPlans.json").read_text())
    for name in ("dataset.json", "dataset_fingerprint.json"):
        (fd.parent / name).write_text((tiny_brain / name).read_text())
    images = roots["autotrans_raw"] / "Dataset011_DemoT2toFLAIR" / "imagesTr"
    rc = predict_main(["-i", str(images), "-o", str(tmp_path / "pred"), "-d", "11", "-c", "3d_fullres",
                       "-m", "test_residual", "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu",
                       "-npp", "0", "-nps", "0"])
    assert rc == 1
    assert "checkpoint_final.pth" in one_error_line(capsys, "autotrans_predict")
    assert not marker.exists()


def test_checkpoints_written_now_and_earlier_load_safely(tiny_brain: Path, roots: dict[str, Path],
                                                         capsys: pytest.CaptureFixture) -> None:
    """New checkpoints hold plain types only (weights_only loads them); earlier ones (numpy RNG arrays) still
    load and resume."""
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK]) == 0
    final = fold_dir(roots["autotrans_results"]) / "checkpoint_final.pth"
    state = torch.load(final, map_location="cpu", weights_only=True)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(final)) == []
    # a checkpoint of the earlier format: numpy's RNG state as an ndarray
    state["rng"]["numpy"] = np.random.get_state()
    state["rng_per_rank"] = [state["rng"]]
    torch.save(state, final)
    assert isinstance(load_checkpoint(final)["rng"]["numpy"][1], np.ndarray)
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK[2:], "--epochs", "2", "--c"]) == 0
    assert load_checkpoint(final)["epoch"] == 2


# --- 12: overrides are validated before anything on disk is touched ------------------------------------------
def test_bad_override_value_is_refused_before_checkpoints_are_renamed(tiny_brain: Path, roots: dict[str, Path],
                                                                      capsys: pytest.CaptureFixture) -> None:
    fd = fold_dir(roots["autotrans_results"], model="pix2pix")
    fd.mkdir(parents=True)
    (fd / "checkpoint_final.pth").write_bytes(b"an earlier run's final checkpoint")
    (fd / "checkpoint_latest.pth").write_bytes(b"an earlier run's latest checkpoint")
    before = snapshot(fd.parent)
    assert train_main(["11", "3d_fullres", "pix2pix", "0", *QUICK, "-o", "lambda_l1=abc"]) == 1
    line = one_error_line(capsys)
    assert "lambda_l1" in line and "'abc'" in line and "number" in line
    assert snapshot(fd.parent) == before and not list(fd.glob("*.previous"))


def test_unknown_override_key_is_refused_naming_the_accepted_keys(tiny_brain: Path, roots: dict[str, Path],
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert train_main(["11", "3d_fullres", "pix2pix", "0", *QUICK, "-o", "nonexistent_key=1"]) == 1
    line = one_error_line(capsys)
    assert "nonexistent_key" in line and "lambda_l1" in line and "lr_g" in line
    assert not any(roots["autotrans_results"].iterdir())


def test_override_types_follow_the_family_defaults() -> None:
    import autotrans.families  # noqa: F401

    ok = validate_overrides("pix2pix", {"lambda_l1": 50, "lr_g": 1e-4, "betas": [0.5, 0.99], "spectral_norm": True,
                                        "d_norm": "batch"})
    assert ok["lambda_l1"] == 50
    validate_overrides("ldm", {"sampling_steps": 10, "perceptual_weights": "/x.pt", "autoencoder_checkpoint": "/a"})
    validate_overrides("srgan", {"perceptual_weights": "/features.pt"})
    validate_overrides("test_residual", {"lr": 0.005})  # a family without a defaults table: not checked
    for model, overrides, words in (
            ("pix2pix", {"lambda_l1": "abc"}, "a number"),
            ("pix2pix", {"lambda_l1": True}, "a number"),
            ("pix2pix", {"spectral_norm": 1}, "true or false"),
            ("pix2pix", {"betas": [0.5]}, "2 numbers"),
            ("pix2pix", {"d_norm": 3}, "a string"),
            ("cyclegan", {"pool_size": 2.5}, "an integer"),
            ("ldm", {"sampling_steps": "many"}, "an integer"),
            ("pix2pix", {"num_epochs": 3}, "--epochs"),
            ("pix2pix", {"sampling_steps": 3}, "accepted keys")):
        with pytest.raises(ConfigurationError, match=words):
            validate_overrides(model, overrides)


# --- 20: validation scales with the run, shows progress and says what it does ---------------------------------
def test_default_validation_batches_scale_with_the_iterations_asked_for(tiny_brain: Path) -> None:
    assert [default_val_iterations(i) for i in (1, 4, 5, 12, 100, 250, 1000)] == [1, 1, 1, 2, 20, 50, 50]
    s = prepare(settings(iterations=5, val_iterations=None)).settings
    assert s.val_iterations == 1
    assert prepare(settings(iterations=400, val_iterations=None)).settings.val_iterations == 50
    assert prepare(settings(iterations=5, val_iterations=7)).settings.val_iterations == 7  # --val_iterations wins
    assert prepare(settings(iterations=5, val_iterations=0)).settings.val_iterations == 0
    plans_file = tiny_brain / "autotransPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["training"] = {"val_iterations": 3}  # an explicit plan value is kept
    plans_file.write_text(json.dumps(plans))
    assert prepare(settings(iterations=5, val_iterations=None)).settings.val_iterations == 3


def test_validation_shows_progress_and_says_what_it_does(tiny_brain: Path, roots: dict[str, Path],
                                                         capsys: pytest.CaptureFixture,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    argv = ["11", "3d_fullres", "test_residual", "0", "--epochs", "1", "--iterations", "5", *FAST]
    assert train_main(argv) == 0
    err = capsys.readouterr().err
    # the per-epoch validation's bar is nested in training: off when stderr is not a terminal (no escape codes
    # in log files); the log line below says what it does
    assert "final validation" in err and "case" in err  # the whole-volume validation's progress bar
    messages = [r.getMessage() for r in caplog.records]
    assert any("validation: 1 batch" in m for m in messages), messages
    n_val = len(json.loads((tiny_brain / "splits_final.json").read_text())[0]["val"])
    assert any(f"final validation on {n_val} case" in m for m in messages), messages
    fd = fold_dir(roots["autotrans_results"])
    assert json.loads((fd / "debug.json").read_text())["settings"]["val_iterations"] == 1  # resolved, recorded
    assert load_checkpoint(fd / "checkpoint_final.pth")["init_args"]["settings"]["val_iterations"] == 1


# --- 13: a full disk during a checkpoint save keeps the previous checkpoint -----------------------------------
def test_disk_full_during_checkpoint_save_keeps_the_previous_checkpoint(tiny_brain: Path, roots: dict[str, Path],
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK]) == 0
    fd = fold_dir(roots["autotrans_results"])
    final = fd / "checkpoint_final.pth"
    before = final.read_bytes()
    capsys.readouterr()

    def full_disk(obj, f, *args, **kwargs):  # half a file, then the disk is full
        Path(f).write_bytes(b"\x80half")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr("autotrans.results.torch.save", full_disk)
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK[2:], "--epochs", "2", "--c"]) == 1
    line = one_error_line(capsys)
    assert "No space left on device" in line
    assert f"{final}:" in line and "/.checkpoint_final" not in line  # names the checkpoint, not the temporary
    assert final.read_bytes() == before
    assert not [p.name for p in fd.iterdir() if p.name.startswith(".")]  # no half-written temporary left
    monkeypatch.undo()
    assert load_checkpoint(final)["epoch"] == 1


def test_disk_full_on_a_ddp_rank_is_one_line_not_a_traceback() -> None:
    """With -num_gpus > 1 a rank's failure reaches the parent as torch's traceback text: user-facing errors
    (autotrans errors, OSError) become their one line; anything else (a bug) keeps its traceback."""
    trace = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
             "  File \"engine.py\", line 1, in save\n"
             "OSError: [Errno 28] No space left on device: '/r/fold_0/checkpoint_final.pth'\n")
    assert rank_failure(trace) == "[Errno 28] No space left on device: '/r/fold_0/checkpoint_final.pth'"
    assert rank_failure("Traceback\nautotrans.errors.ConfigurationError: /x.pth: corrupt\n") == "/x.pth: corrupt"
    assert rank_failure("Traceback\nValueError: a bug\n") is None


# --- 15: temporaries of a killed run are removed when training starts or resumes -----------------------------
def test_stale_checkpoint_temporaries_of_killed_runs_are_removed_on_start_and_resume(
        tiny_brain: Path, roots: dict[str, Path]) -> None:
    try:
        os.kill(999999, 0)
        pytest.skip("pid 999999 is running here")
    except ProcessLookupError:
        pass
    except PermissionError:
        pytest.skip("pid 999999 is running here")
    fd = fold_dir(roots["autotrans_results"])
    fd.mkdir(parents=True)
    stale = fd / ".checkpoint_latest.pth.at999999.abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = fd / f".checkpoint_best.pth.at{os.getppid()}.efgh.pth"  # a process still writing: left alone
    live.write_bytes(b"in progress")
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK]) == 0
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"half a checkpoint")
    model_stale = fd.parent / ".plans.json.at999999.wxyz.tmp"
    model_stale.write_bytes(b"{")
    assert train_main(["11", "3d_fullres", "test_residual", "0", *QUICK[2:], "--epochs", "2", "--c"]) == 0
    assert not stale.exists() and not model_stale.exists() and live.exists()
