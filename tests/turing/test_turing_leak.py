"""Everything a reader can receive must be free of ground truth: labels, model names, source file and
folder names, other readers' tokens; and nothing in sizes or headers may differ between classes."""
from __future__ import annotations

import json
import re
from pathlib import Path

from autotrans.turing import Study
from autotrans.turing.server import PAGES

from .conftest import CASES, MODELS, REAL_DIR, SYNTH_DIRS, Client


def reader_traffic(client: Client, study: Study, reader: str) -> list[tuple[str, int, dict[str, str], bytes]]:
    """Fetch every byte a reader's browser can get: pages, scripts, session, all items, answer replies,
    error replies; answer every item so replies after each step are covered too."""
    tok = study.readers[reader]["token"]
    out = []

    def get(path: str, t: str | None = tok) -> bytes:
        status, headers, body = client.get(path, t)
        out.append((path, status, headers, body))
        return body

    for path in PAGES:
        get(path, None)
    session = json.loads(get("/api/session"))
    for item in session["items"]:
        get(f"/api/item/{item}")
    get("/api/item/ffffffffffffffffffff")
    get("/api/admin/progress")
    get("/does-not-exist")
    for i, item in enumerate(session["items"]):
        status, headers, body = client.answer(tok, item, "real" if i % 2 else "synthetic", 1 + i % 5)
        out.append(("POST /api/answer", status, headers, body))
    status, headers, body = client.answer(tok, session["items"][0])
    out.append(("POST /api/answer (again)", status, headers, body))
    get("/api/session")
    return out


def test_nothing_served_to_a_reader_reveals_the_truth(client: Client, study: Study) -> None:
    traffic = reader_traffic(client, study, "alice")
    forbidden = set(MODELS) | set(CASES) | {REAL_DIR, *SYNTH_DIRS, "truth", "nii.gz", study.admin_token}
    forbidden |= {r["token"] for name, r in study.readers.items() if name != "alice"}
    for it in study.items.values():
        forbidden |= {Path(it["source"]).name, str(Path(it["source"]).parent)}
    for what, _status, headers, body in traffic:
        text = body.decode("latin-1") + "\n" + "\n".join(f"{k}: {v}" for k, v in headers.items())
        for word in forbidden:
            assert word.lower() not in text.lower(), f"{word!r} leaked in {what}"
        assert "etag" not in headers and "last-modified" not in headers, what
        if headers.get("content-type") == "application/json":
            # JSON carries ids, counts and display settings only: not even the class words
            assert not re.search(r"real|synthetic", body.decode(), re.I), f"class word in {what}: {body[:200]!r}"


def test_items_are_indistinguishable_in_transport(client: Client, study: Study) -> None:
    tok = study.readers["bob"]["token"]
    shapes = set()
    for item in study.readers["bob"]["order"]:
        status, headers, body = client.get(f"/api/item/{item}", tok)
        assert status == 200
        shapes.add((len(body), tuple(sorted((k, v) for k, v in headers.items() if k != "date"))))
    assert len(shapes) == 1, "item responses differ in size or headers"


def test_pages_and_display_settings_are_the_same_for_every_reader(client: Client, study: Study) -> None:
    a = {p: client.get(p)[2] for p in PAGES}
    assert all(a.values())
    sessions = [json.loads(client.get("/api/session", r["token"])[2]) for r in study.readers.values()]
    assert all(s["display"] == sessions[0]["display"] for s in sessions)
    assert {p: client.get(p)[2] for p in PAGES} == a


def test_item_order_does_not_follow_the_class(study: Study) -> None:
    """Orders are shuffled per reader, not grouped by class (a class-sorted order would leak)."""
    orders = [r["order"] for r in study.readers.values()]
    first_half = [[study.items[i]["truth"] for i in o[: len(o) // 2]] for o in orders]
    assert any(set(h) == {"real", "synthetic"} for h in first_half)
