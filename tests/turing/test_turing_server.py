"""Reader web API: tokens, items, answers, validation, limits and the SQLite store."""
from __future__ import annotations

import json
import socket
import sqlite3
import threading

import numpy as np
import pytest

from autotrans.cli.turing import build_parser
from autotrans.turing import Study, make_server
from autotrans.turing.server import MAX_BODY, TuringServer

from .conftest import Client


def token(study: Study, reader: str = "alice") -> str:
    return study.readers[reader]["token"]


def test_session_lists_the_readers_items_in_their_order(client: Client, study: Study) -> None:
    status, headers, body = client.get("/api/session", token(study, "bob"))
    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["reader"] == "bob"
    assert data["items"] == study.readers["bob"]["order"]
    assert data["answered"] == []
    assert data["display"]["shape"] == study.display["shape"]


@pytest.mark.parametrize("path", ["/api/session", "/api/item/0123456789abcdef0123", "/api/admin/progress"])
@pytest.mark.parametrize("tok", [None, "", "wrong-token", "Bearer"])
def test_missing_or_wrong_token_is_403(client: Client, study: Study, path: str, tok: str | None) -> None:
    status, _, body = client.get(path, tok)
    assert status == 403
    assert "token" in json.loads(body)["error"]


def test_tokens_do_not_cross_roles(client: Client, study: Study) -> None:
    assert client.get("/api/session", study.admin_token)[0] == 403
    assert client.get("/api/admin/progress", token(study))[0] == 403
    status = client.request("GET", "/api/session", headers={"Authorization": f"Basic {token(study)}"})[0]
    assert status == 403


def test_item_data_and_views(client: Client, study: Study) -> None:
    tok = token(study)
    item = study.readers["alice"]["order"][0]
    status, headers, body = client.get(f"/api/item/{item}", tok)
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert body == study.item_path(item).read_bytes()
    assert len(body) == 2 * int(np.prod(study.display["shape"]))
    for bad in ["/api/item/ffffffffffffffffffff", "/api/item/xyz", "/api/item/" + item + "x", "/api/item/"]:
        assert client.get(bad, tok)[0] == 404
    with sqlite3.connect(study.db_path) as con:
        assert con.execute("SELECT reader, item FROM views").fetchall() == [("alice", item)]


@pytest.mark.parametrize("path", [
    "/study.json", "/answers.sqlite", "/items", "/static/../study.json", "/static/%2e%2e/study.json",
    "/api/item/../study.json", "/api/item/..%2fstudy.json", "/read/../study.json", "//etc/passwd",
    "/static/style.css/../../study.json", "/static/", "/static/read.html",
])
def test_no_path_reaches_the_file_system(client: Client, study: Study, path: str) -> None:
    status, _, body = client.get(path, token(study))
    assert status == 404
    assert study.admin_token.encode() not in body and b"truth" not in body


def test_answer_is_saved_once_and_session_resumes(client: Client, study: Study) -> None:
    tok = token(study)
    order = study.readers["alice"]["order"]
    client.get(f"/api/item/{order[1]}", tok)
    status, _, body = client.answer(tok, order[1], "synthetic", 4, comment="  edges too smooth ")
    assert status == 201 and json.loads(body) == {"answered": 1, "total": len(order)}
    status, _, body = client.answer(tok, order[1], "real", 1)
    assert status == 409 and "already" in json.loads(body)["error"]
    rows = study_rows(study)
    assert len(rows) == 1
    r = rows[0]
    got = (r["reader"], r["item"], r["answer"], r["confidence"], r["comment"])
    assert got == ("alice", order[1], "synthetic", 4, "edges too smooth")
    assert r["time_on_item_s"] == 4.5 and r["server_elapsed_s"] is not None and r["server_elapsed_s"] >= 0
    session = json.loads(client.get("/api/session", tok)[2])
    assert session["answered"] == [order[1]]
    assert json.loads(client.get("/api/session", token(study, "bob"))[2])["answered"] == []


def study_rows(study: Study) -> list[dict]:
    with sqlite3.connect(study.db_path) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM answers")]


@pytest.mark.parametrize("body, message", [
    (b"not json", "JSON object"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "JSON object"),
    ({"answer": "real", "confidence": 3, "time_on_item_s": 1}, "item"),
    ({"item": "ffffffffffffffffffff", "answer": "real", "confidence": 3, "time_on_item_s": 1}, "item"),
    ({"item": "FIRST", "answer": "maybe", "confidence": 3, "time_on_item_s": 1}, "answer"),
    ({"item": "FIRST", "answer": "real", "confidence": 0, "time_on_item_s": 1}, "confidence"),
    ({"item": "FIRST", "answer": "real", "confidence": 6, "time_on_item_s": 1}, "confidence"),
    ({"item": "FIRST", "answer": "real", "confidence": "3", "time_on_item_s": 1}, "confidence"),
    ({"item": "FIRST", "answer": "real", "confidence": True, "time_on_item_s": 1}, "confidence"),
    ({"item": "FIRST", "answer": "real", "confidence": 3.5, "time_on_item_s": 1}, "confidence"),
    ({"item": "FIRST", "answer": "real", "confidence": 3, "time_on_item_s": -1}, "time_on_item_s"),
    ({"item": "FIRST", "answer": "real", "confidence": 3, "time_on_item_s": "1"}, "time_on_item_s"),
    ({"item": "FIRST", "answer": "real", "confidence": 3}, "time_on_item_s"),
    ({"item": "FIRST", "answer": "real", "confidence": 3, "time_on_item_s": 1, "comment": 5}, "comment"),
    ({"item": "FIRST", "answer": "real", "confidence": 3, "time_on_item_s": 1, "comment": "x" * 2001}, "comment"),
    ({"item": "FIRST", "answer": "real", "confidence": 3, "time_on_item_s": 1, "truth": "real"}, "unknown fields"),
])
def test_malformed_answers_are_400(client: Client, study: Study, body: object, message: str) -> None:
    first = study.readers["alice"]["order"][0]
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace("FIRST", first))
    status, _, resp = client.request("POST", "/api/answer", token(study), body)
    assert status == 400
    assert message in json.loads(resp)["error"]
    assert study_rows(study) == []


def test_nan_time_is_400(client: Client, study: Study) -> None:
    first = study.readers["alice"]["order"][0]
    raw = '{"item": "' + first + '", "answer": "real", "confidence": 3, "time_on_item_s": NaN}'
    assert client.request("POST", "/api/answer", token(study), raw)[0] == 400


def test_request_limits(client: Client, study: Study) -> None:
    tok = token(study)
    first = study.readers["alice"]["order"][0]
    big = json.dumps({"item": first, "answer": "real", "confidence": 3, "time_on_item_s": 1, "comment": "x" * MAX_BODY})
    assert client.request("POST", "/api/answer", tok, big)[0] == 413
    assert raw_status(client, f"POST /api/answer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n") == 411
    chunked = (f"POST /api/answer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert raw_status(client, chunked) == 411
    assert raw_status(client, f"POST /api/answer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                              "Content-Length: -5\r\n\r\n") == 413
    assert client.get("/api/session?" + "a" * 600, tok)[0] == 414
    assert client.request("PUT", "/api/answer", tok, b"{}")[0] == 405
    assert client.request("DELETE", "/api/session", tok)[0] == 405
    assert client.request("POST", "/api/session", tok, b"{}")[0] == 404
    assert client.get("/api/answer", tok)[0] == 404
    assert study_rows(study) == []


def raw_status(client: Client, request: str) -> int:
    with socket.create_connection((client.host, client.port), timeout=10) as sock:
        sock.sendall(request.encode())
        reply = sock.makefile("rb").readline().decode()
    return int(reply.split()[1])


def test_security_headers(client: Client, study: Study) -> None:
    for path, tok in [("/read", None), ("/api/session", token(study)),
                      (f"/api/item/{study.readers['alice']['order'][0]}", token(study)), ("/nope", None)]:
        _, headers, _ = client.get(path, tok)
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["server"] == "autotrans-turing"
        assert "etag" not in headers and "last-modified" not in headers


def test_admin_sees_progress_only(client: Client, study: Study) -> None:
    tok = token(study, "carol")
    for item in study.readers["carol"]["order"][:3]:
        assert client.answer(tok, item, "real", 2)[0] == 201
    status, _, body = client.get("/api/admin/progress", study.admin_token)
    assert status == 200
    data = json.loads(body)
    progress = {r["reader"]: r["answered"] for r in data["readers"]}
    assert progress == {"alice": 0, "bob": 0, "carol": 3}
    assert all(r["total"] == len(study.items) for r in data["readers"])
    text = body.decode()
    assert "real" not in text and "synthetic" not in text and "confidence" not in text


def test_concurrent_readers_lose_nothing(client: Client, study: Study) -> None:
    errors: list[int] = []

    def run(reader: str) -> None:
        tok = token(study, reader)
        for item in study.readers[reader]["order"]:
            status = client.answer(tok, item, "synthetic", 5)[0]
            if status != 201:
                errors.append(status)

    threads = [threading.Thread(target=run, args=(r,)) for r in study.readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(study_rows(study)) == len(study.readers) * len(study.items)
    with sqlite3.connect(study.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_binds_to_loopback_by_default(study: Study) -> None:
    args = build_parser().parse_args(["serve", "x"])
    assert args.host == "127.0.0.1" and args.port == 8080
    srv = make_server(study, port=0)
    try:
        assert isinstance(srv, TuringServer) and srv.server_address[0] == "127.0.0.1"
    finally:
        srv.server_close()
