"""Reader web app on the standard library's ThreadingHTTPServer (no web framework to install or audit).

Routes are a fixed table, so no request path ever reaches the file system; item data is looked up by
an opaque id the reader was assigned. Tokens travel in an ``Authorization: Bearer`` header (the page
takes them from the link's URL fragment, which browsers never send), so they do not end up in logs,
history or Referer headers. Responses carry no validators (ETag, Last-Modified) and every item file
has the same size, so nothing in the transport distinguishes real from synthetic items.
"""
from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from autotrans.turing.render import COLORMAPS
from autotrans.turing.store import AnswerStore
from autotrans.turing.study import ITEM_ID_RE, Study

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
MAX_PATH = 512
MAX_COMMENT = 2000
MAX_TIME_S = 7 * 24 * 3600.0
ITEM_ROUTE = re.compile(r"^/api/item/([^/]{1,64})$")

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
PAGES = {"/": "index.html", "/read": "read.html", "/admin": "admin.html",
         "/static/read.js": "read.js", "/static/admin.js": "admin.js", "/static/style.css": "style.css"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _load_static() -> dict[str, tuple[bytes, str]]:
    base = resources.files("autotrans.turing") / "static"
    out = {}
    for route, name in PAGES.items():
        suffix = name[name.rfind("."):]
        out[route] = ((base / name).read_bytes(), STATIC_TYPES[suffix])
    return out


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


DISPLAY_NUMBERS = ("window_center", "window_width", "fusion_alpha", "time_s")
DISPLAY_FLAGS = ("fusion", "source_view")
DISPLAY_KEYS = (*DISPLAY_NUMBERS, "colormap", *DISPLAY_FLAGS)


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def validate_display(value: Any) -> dict[str, Any]:
    """The display settings a reader used for an item: a flat object of known keys and plain values, so
    the analysis can group answers by them without cleaning."""
    if not isinstance(value, dict):
        raise ApiError(400, "display: must be a JSON object")
    unknown = set(value) - set(DISPLAY_KEYS)
    if unknown:
        raise ApiError(400, f"display: unknown fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key in DISPLAY_NUMBERS:
        if key in value:
            v = value[key]
            if not _finite(v) or abs(v) > 1e9:
                raise ApiError(400, f"display.{key}: must be a finite number")
            out[key] = float(v)
    if out.get("window_width", 1.0) <= 0:
        raise ApiError(400, "display.window_width: must be > 0")
    if not 0.0 <= out.get("fusion_alpha", 0.0) <= 1.0:
        raise ApiError(400, "display.fusion_alpha: must be from 0 to 1")
    if out.get("time_s", 0.0) < 0:
        raise ApiError(400, "display.time_s: must be >= 0")
    for key in DISPLAY_FLAGS:
        if key in value:
            if not isinstance(value[key], bool):
                raise ApiError(400, f"display.{key}: must be true or false")
            out[key] = value[key]
    if "colormap" in value:
        if value["colormap"] not in COLORMAPS:
            raise ApiError(400, f"display.colormap: one of {', '.join(COLORMAPS)}")
        out["colormap"] = value["colormap"]
    return out


def validate_answer(
    body: bytes, allowed_items: list[str], pairs: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Parse and check one answer; every problem becomes a 400 with a message naming it.

    ``pairs`` (two-alternative forced choice: item -> its two volume ids) switches the answer from
    ``answer`` (real/synthetic) to ``pick``: the id of the volume the reader takes for the real one.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except RecursionError:  # "[[[[...": the parser's recursion limit, not a server fault
        raise ApiError(400, "body: JSON nested too deeply (send one flat JSON object)") from None
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    fields = {"item", "confidence", "comment", "time_on_item_s", "display", "pick" if pairs is not None else "answer"}
    unknown = set(data) - fields
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    item = data.get("item")
    if not isinstance(item, str) or item not in allowed_items:
        raise ApiError(400, "item: not one of your items")
    pick = None
    if pairs is not None:
        pick = data.get("pick")
        if not isinstance(pick, str) or pick not in pairs[item]:
            raise ApiError(400, "pick: must be the id of one of the item's two volumes")
        answer = "real"  # the reader calls the picked volume real
    else:
        answer = data.get("answer")
        if answer not in ("real", "synthetic"):
            raise ApiError(400, "answer: must be 'real' or 'synthetic'")
    conf = data.get("confidence")
    if isinstance(conf, bool) or not isinstance(conf, int) or not 1 <= conf <= 5:
        raise ApiError(400, "confidence: must be an integer from 1 to 5")
    comment = data.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise ApiError(400, f"comment: must be text of at most {MAX_COMMENT} characters")
    if not _is_unicode(comment):  # "\ud800" is valid JSON but no text: the database could not store it
        raise ApiError(400, "comment: contains an unpaired surrogate (\\uD800-\\uDFFF), which is not text")
    t = data.get("time_on_item_s")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= MAX_TIME_S:
        raise ApiError(400, "time_on_item_s: must be a number of seconds >= 0")
    display = validate_display(data["display"]) if data.get("display") is not None else None
    return {"item": item, "answer": answer, "confidence": conf, "comment": comment.strip(), "time_on_item_s": float(t),
            "display": display, "pick": pick}


class TuringServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, study: Study, host: str, port: int) -> None:
        self.study = study
        self.store = AnswerStore(study.db_path)
        self.static = _load_static()
        self.allowed = {name: frozenset(r["order"]) for name, r in study.readers.items()}
        self.pairs = ({i: study.item_volumes(i) for i in study.items} if study.design == "2afc" else None)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), TuringHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"


class TuringHandler(BaseHTTPRequestHandler):
    server: TuringServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # drop idle or stalled connections

    def version_string(self) -> str:
        return "autotrans-turing"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    # ---- plumbing ---------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _reader(self) -> str:
        name = self.server.study.reader_for_token(self._token())
        if name is None:
            raise ApiError(403, "missing or wrong reader token: open the link you were given")
        return name

    def _path(self) -> str:
        if len(self.path) > MAX_PATH:
            raise ApiError(414, "request path too long")
        return urlsplit(self.path).path

    def _dispatch(self, handler: Callable[[str], None]) -> None:
        try:
            handler(self._path())
        except ApiError as e:
            self._json(e.status, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - answer 500, keep serving others
            logger.exception("request failed")
            self.close_connection = True
            self._json(500, {"error": "internal error"})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _refuse_method(self) -> None:
        self.close_connection = True
        self._json(405, {"error": f"method {self.command} not allowed"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    # ---- routes -----------------------------------------------------------------------------------
    def _get(self, path: str) -> None:
        study = self.server.study
        if path in self.server.static:
            body, ctype = self.server.static[path]
            self._send(200, body, ctype)
        elif path == "/api/session":
            reader = self._reader()
            order = study.readers[reader]["order"]
            done = self.server.store.answered(reader)
            self._json(200, {"reader": reader, "items": order, "answered": [i for i in order if i in done],
                             "display": study.display, **study.session_layout(order)})
        elif (m := ITEM_ROUTE.match(path)) is not None:
            reader = self._reader()
            vol = m.group(1)  # an item's volume, one side of a pair, or a context volume
            item = study.owner.get(vol) if ITEM_ID_RE.fullmatch(vol) else None
            if item is None or item not in self.server.allowed[reader]:
                raise ApiError(404, "no such item")
            body = study.item_path(vol).read_bytes()
            if self.command == "GET" and vol not in study.contexts:
                self.server.store.record_view(reader, item)
            self._send(200, body, "application/octet-stream")
        elif path == "/api/admin/progress":
            if not study.is_admin(self._token()):
                raise ApiError(403, "missing or wrong admin token")
            prog = self.server.store.progress()
            total = len(study.items)
            readers = [{"reader": name, "answered": prog.get(name, {}).get("answered", 0), "total": total,
                        "last_answer_at": prog.get(name, {}).get("last_answer_at")} for name in study.readers]
            self._json(200, {"readers": readers})
        else:
            raise ApiError(404, "not found")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked")
        if length is None:
            self.close_connection = True
            raise ApiError(411, "Content-Length required")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        return self.rfile.read(n)

    def _post(self, path: str) -> None:
        if path != "/api/answer":
            self.close_connection = True
            raise ApiError(404, "not found")
        try:
            reader = self._reader()
        except ApiError:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise
        body = self._read_body()
        order = self.server.study.readers[reader]["order"]
        a = validate_answer(body, order, self.server.pairs)
        saved = self.server.store.save_answer(reader, a["item"], a["answer"], a["confidence"], a["comment"],
                                              a["time_on_item_s"], display=a["display"], picked=a["pick"])
        if not saved:
            raise ApiError(409, "this item has already been answered")
        done = len(self.server.store.answered(reader))
        logger.info("answer saved (%s, %d/%d)", reader, done, len(order))
        self._json(201, {"answered": done, "total": len(order)})


def make_server(study: Study, host: str = "127.0.0.1", port: int = 8080) -> TuringServer:
    """Bind (port 0 picks a free port) without serving yet; call ``serve_forever`` on the result."""
    return TuringServer(study, host, port)


def serve_in_thread(server: TuringServer, poll_interval: float = 0.05) -> threading.Thread:
    """Run ``server`` in a daemon thread (tests, notebooks); stop with ``server.shutdown()``."""
    t = threading.Thread(target=server.serve_forever, args=(poll_interval,), name="turing-server", daemon=True)
    t.start()
    return t

