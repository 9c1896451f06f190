"""A server killed with SIGKILL loses no acknowledged answer, and readers resume after a restart."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from autotrans.turing import Study

from .conftest import Client


def start_server(study_dir: Path) -> tuple[subprocess.Popen, Client]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotrans.cli.turing", "serve", str(study_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    m = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
    assert m, f"server did not start: {line!r}"
    return proc, Client(m.group(1))


def test_killed_server_keeps_every_saved_answer(study: Study) -> None:
    tok = study.readers["alice"]["token"]
    order = study.readers["alice"]["order"]
    proc, client = start_server(study.folder)
    try:
        for i, item in enumerate(order[:5]):
            client.get(f"/api/item/{item}", tok)
            status, _, _ = client.answer(tok, item, "synthetic" if i % 2 else "real", 1 + i)
            assert status == 201
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(study.db_path) as con:
        rows = con.execute("SELECT item, answer, confidence FROM answers WHERE reader = 'alice'").fetchall()
    assert sorted(rows) == sorted((item, "synthetic" if i % 2 else "real", 1 + i) for i, item in enumerate(order[:5]))

    proc, client = start_server(study.folder)
    try:
        session = json.loads(client.get("/api/session", tok)[2])
        assert session["answered"] == order[:5]
        assert client.answer(tok, order[0], "real", 5)[0] == 409
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
