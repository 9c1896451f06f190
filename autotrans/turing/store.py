"""Answer store in SQLite: WAL journal and synchronous commits, so an answer acknowledged to the
reader survives a killed server; a primary key on (reader, item) keeps exactly one answer each.

Each answer also keeps the display settings the reader used for it (``display``, JSON: window, colour
map, fusion, source view, time) so the analysis can ask whether display choices relate to accuracy, and,
in a two-alternative forced-choice study, the id of the volume the reader picked as real (``picked``;
``answer`` is then always 'real': the reader's call on the picked volume)."""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from autotrans.errors import AutotransError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    reader TEXT NOT NULL,
    item TEXT NOT NULL,
    answer TEXT NOT NULL CHECK (answer IN ('real', 'synthetic')),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    comment TEXT NOT NULL DEFAULT '',
    time_on_item_s REAL NOT NULL,
    server_elapsed_s REAL,
    answered_at REAL NOT NULL,
    display TEXT,
    picked TEXT,
    PRIMARY KEY (reader, item)
);
CREATE TABLE IF NOT EXISTS views (
    reader TEXT NOT NULL,
    item TEXT NOT NULL,
    first_shown_at REAL NOT NULL,
    last_shown_at REAL NOT NULL,
    PRIMARY KEY (reader, item)
);
"""

ADDED_COLUMNS = ("display", "picked")


class AnswerStoreError(AutotransError):
    """The answer database cannot be opened (not a database, a folder, unreadable)."""


class AnswerStore:
    """Thin wrapper that opens one short-lived connection per operation (safe across server threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise AnswerStoreError(f"{self.path} is a folder, not an answer database; move it away "
                                   "(a new, empty database is then created)")
        try:
            with closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
                have = {r[1] for r in con.execute("PRAGMA table_info(answers)")}
                for column in ADDED_COLUMNS:  # databases of studies made before these columns existed
                    if column not in have:
                        con.execute(f"ALTER TABLE answers ADD COLUMN {column} TEXT")
        except sqlite3.DatabaseError as e:  # junk file, damaged database, folder not readable
            raise AnswerStoreError(f"{self.path}: not a usable answer database ({e}); it was left as it is: "
                                   "restore it from a backup, or move it away to start with no answers") from None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def close(self) -> None:
        """Checkpoint the WAL into the main file (tidy for copying the study folder)."""
        with closing(self._connect()) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def record_view(self, reader: str, item: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with closing(self._connect()) as con:
            con.execute(
                "INSERT INTO views(reader, item, first_shown_at, last_shown_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(reader, item) DO UPDATE SET last_shown_at = excluded.last_shown_at",
                (reader, item, now, now),
            )

    def save_answer(
        self, reader: str, item: str, answer: str, confidence: int, comment: str, time_on_item_s: float,
        now: float | None = None, display: dict[str, Any] | None = None, picked: str | None = None,
    ) -> bool:
        """Insert one answer; ``False`` if this reader already answered this item (nothing changes)."""
        now = time.time() if now is None else now
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute(
                    "SELECT last_shown_at FROM views WHERE reader = ? AND item = ?", (reader, item)
                ).fetchone()
                elapsed = None if row is None else max(0.0, now - row[0])
                con.execute(
                    "INSERT INTO answers(reader, item, answer, confidence, comment, time_on_item_s, "
                    "server_elapsed_s, answered_at, display, picked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (reader, item, answer, int(confidence), comment, float(time_on_item_s), elapsed, now,
                     None if display is None else json.dumps(display, sort_keys=True, allow_nan=False), picked),
                )
            except sqlite3.IntegrityError:
                con.execute("ROLLBACK")
                return False
            con.execute("COMMIT")
        return True

    def answered(self, reader: str) -> set[str]:
        with closing(self._connect()) as con:
            return {r[0] for r in con.execute("SELECT item FROM answers WHERE reader = ?", (reader,))}

    def progress(self) -> dict[str, dict[str, Any]]:
        """Per reader: number answered and time of the last answer (no answers themselves)."""
        with closing(self._connect()) as con:
            rows = con.execute("SELECT reader, COUNT(*), MAX(answered_at) FROM answers GROUP BY reader").fetchall()
        return {r[0]: {"answered": int(r[1]), "last_answer_at": r[2]} for r in rows}

    def all_answers(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as con:
            con.row_factory = sqlite3.Row
            rows = con.execute("SELECT * FROM answers ORDER BY reader, answered_at").fetchall()
        out = []
        for r in rows:
            row = dict(r)
            try:  # one damaged settings record must not block the analysis of the answers
                row["display"] = json.loads(row["display"]) if row.get("display") else None
            except ValueError:
                row["display"] = None
            out.append(row)
        return out
