"""The shared edges every command relies on: OS failures print one line, stale temporaries are removed safely."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotrans.cli.common import describe_os_error, run
from autotrans.utils.files import atomic_path, clean_stale_temps, is_hidden, save_json


def _dead_pid() -> int:
    """A pid that belonged to a process which has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_read_only_or_full_disk_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture) -> None:
    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/case.nii.gz")

    def read_only() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out")

    for fn, words in ((full_disk, "No space left"), (read_only, "Permission denied")):
        assert run("autotrans_x", fn) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("autotrans_x: error: ") and words in err[0]
        assert "Traceback" not in err[0]


def test_port_in_use_message_names_the_option() -> None:
    assert "--port" in describe_os_error(OSError(errno.EADDRINUSE, "Address already in use"))


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f".pred.nii.gz.at{_dead_pid()}.k3j2.tmp"
    dead.write_bytes(b"half")
    dead_dir = tmp_path / f".study.at{_dead_pid()}.x1y2"
    dead_dir.mkdir()
    live = tmp_path / f".other.nii.gz.at{os.getppid()}.abcd.tmp"  # our parent runs: not stale
    live.write_bytes(b"in progress")
    foreign = tmp_path / ".DS_Store"
    foreign.write_bytes(b"")
    keep = tmp_path / "pred.nii.gz"
    keep.write_bytes(b"complete")
    assert clean_stale_temps(tmp_path) == 2
    assert not dead.exists() and not dead_dir.exists()
    assert live.exists() and foreign.exists() and keep.read_bytes() == b"complete"


def test_atomic_write_names_its_temporary_after_the_writing_process(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "plans.json") as tmp:
        assert tmp.name.startswith(f".plans.json.at{os.getpid()}.")
        assert is_hidden(tmp)
        assert clean_stale_temps(tmp_path) == 0  # our own write in progress is never touched
        tmp.write_text("{}")
    assert (tmp_path / "plans.json").read_text() == "{}"


def test_failed_json_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    save_json({"a": 1}, target)
    with pytest.raises(TypeError):
        save_json({"a": object()}, target)
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
