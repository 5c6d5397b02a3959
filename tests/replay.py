"""A small threaded HTTP server on 127.0.0.1 that replays recorded HTTP sessions and serves files.

- Replays vcrpy cassettes (``version: 1`` YAML). An incoming request is matched against the
  recorded ones with vcrpy's own matchers (by default method, path, query, body and the Range
  header); when no recording matches exactly, one that differs only by its Range header is used
  (newer clients ask for ``bytes=0-1`` where older ones asked for nothing). Each recorded
  interaction plays once, in order; after that the last one matching plays again. Responses whose
  bytes are not in the YAML are read from ``data_dir`` by the file name of their
  Content-Disposition. Absolute URLs of the recorded ``origin`` in text bodies and headers point
  back at this server (and any ``rewrite`` prefixes too).
- Serves folders (``files={"/url/prefix/": folder}``) and any file-backed response with Range
  support (206, 416) and an MD5 ETag, as S3 does.
- Routes: ``routes={("POST", "/v1/search"): handler}``, ``handler(Incoming) -> (status, headers, body)``.
- Faults: ``drop(path, after)`` cuts the connection after ``after`` body bytes, once (or
  ``times``); ``delay(prefix, seconds)`` answers late; ``inject(method, path, response)`` serves a
  given (for instance a recorded) response instead.

Requests that match nothing get a 599 and are kept in ``unmatched``; every request is in ``log``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import vcr.matchers
from vcr.request import Request
from vcr.serialize import deserialize
from vcr.serializers import yamlserializer

HOP_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "date",
               "strict-transport-security"}
DEFAULT_MATCH = ("method", "path", "query", "body", "range")


def range_header(r1: Request, r2: Request) -> None:
    """A vcrpy-style matcher on the Range header."""
    a, b = r1.headers.get("Range"), r2.headers.get("Range")
    if a != b:
        raise AssertionError(f"Range {a!r} != {b!r}")


def load_cassette(path: str | Path) -> list[tuple[Request, dict]]:
    requests, responses = deserialize(Path(path).read_text(), yamlserializer)[:2]
    return list(zip(requests, responses))


@dataclass
class Incoming:
    method: str
    path: str  # with the query string
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class _Fault:
    kind: str  # drop | delay | inject
    method: str | None
    path: str
    times: int | None
    after: int = 0
    seconds: float = 0.0
    response: tuple | None = None
    prefix: bool = False

    def applies(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and self.method != method:
            return False
        bare = path.split("?", 1)[0]
        return bare.startswith(self.path) if self.prefix else path == self.path or bare == self.path


@dataclass
class _Body:
    data: bytes
    is_file: bool = False


class Replay:
    """See the module docstring. Use as a context manager; ``url`` is the server's base URL."""

    def __init__(self, cassettes: Iterable[str | Path] = (), *, origin: str | None = None,
                 data_dir: str | Path | None = None, files: dict[str, str | Path] | None = None,
                 routes: dict[tuple[str, str], Callable] | None = None, rewrite: dict[str, str] | None = None,
                 match_on: Iterable = DEFAULT_MATCH, allow_repeats: bool = True, etag: bool = True) -> None:
        self.interactions: list[tuple[Request, dict]] = []
        for c in cassettes:
            self.interactions.extend(load_cassette(c))
        if origin is None and self.interactions:
            u = urlsplit(self.interactions[0][0].uri)
            origin = f"{u.scheme}://{u.netloc}"
        self.origin = origin
        self.data_dir = Path(data_dir) if data_dir else None
        self.files = {k: Path(v) for k, v in (files or {}).items()}
        self.routes = dict(routes or {})
        self.rewrites = dict(rewrite or {})
        self.matchers = [m if callable(m) else (range_header if m == "range" else getattr(vcr.matchers, m))
                         for m in match_on]
        self.allow_repeats = allow_repeats
        self.etag = etag
        self.body_files: dict[str, Path] = {}
        self.used: set[int] = set()
        self.faults: list[_Fault] = []
        self.log: list[Incoming] = []
        self.unmatched: list[Incoming] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle

    def start(self) -> Replay:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                replay._serve(self, Incoming(self.command, self.path, dict(self.headers.items()), body))

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.rewrites = {**({self.origin: self.url} if self.origin else {}), **self.rewrites}
        return self

    def close(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Replay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- faults and overrides

    def drop(self, path: str, after: int, times: int | None = 1, method: str | None = "GET") -> None:
        """Cut the connection after ``after`` bytes of the body of responses to ``path``."""
        self.faults.append(_Fault("drop", method, path, times, after=after))

    def delay(self, prefix: str, seconds: float, times: int | None = None, method: str | None = None) -> None:
        """Wait ``seconds`` before answering requests whose path starts with ``prefix``."""
        self.faults.append(_Fault("delay", method, prefix, times, seconds=seconds, prefix=True))

    def inject(self, method: str | None, prefix: str, response: dict | tuple, times: int | None = 1) -> None:
        """Answer requests under ``prefix`` with ``response``: a recorded response dict or
        (status, headers, body)."""
        self.faults.append(_Fault("inject", method, prefix, times, response=response, prefix=True))

    def serve_body(self, name: str, path: str | Path) -> None:
        """Serve ``path`` wherever a recording's body is the data file ``name``."""
        self.body_files[name] = Path(path)

    def requests_to(self, path_prefix: str) -> list[Incoming]:
        return [r for r in self.log if r.path.startswith(path_prefix)]

    # --- serving

    def _take(self, kind: str, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self.faults:
                if f.kind == kind and f.applies(method, path):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def _match(self, inc: Incoming) -> dict | None:
        req = Request(inc.method, f"{self.origin or ''}{inc.path}", inc.body or None, inc.headers)
        for matchers in (self.matchers, [m for m in self.matchers if m is not range_header]):
            with self._lock:
                hits = [i for i, (rec, _) in enumerate(self.interactions)
                        if vcr.matchers.requests_match(req, rec, matchers)]
                fresh = [i for i in hits if i not in self.used]
                if fresh:
                    self.used.add(fresh[0])
                    return self.interactions[fresh[0]][1]
                if hits and self.allow_repeats:
                    return self.interactions[hits[-1]][1]
        return None

    def _rewrite(self, text: str) -> str:
        for old, new in self.rewrites.items():
            text = text.replace(old, new)
        return text

    def _recorded(self, response: dict) -> tuple[int, dict, _Body]:
        headers = {k: ", ".join(v) if isinstance(v, list) else str(v)
                   for k, v in response.get("headers", {}).items() if k.lower() not in HOP_HEADERS}
        body = response.get("body") or {}
        if "string" in body:
            data = body["string"]
            data = data.encode() if isinstance(data, str) else (data or b"")
            # Some recordings keep the compressed bytes, others the decoded text under the same header.
            encoding = str(response.get("headers", {}).get("Content-Encoding")
                           or response.get("headers", {}).get("content-encoding") or "")
            if "gzip" in encoding and data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            try:
                return response["status"]["code"], headers, _Body(self._rewrite(data.decode()).encode())
            except UnicodeDecodeError:
                return response["status"]["code"], headers, _Body(data)
        cd = next((v for k, v in headers.items() if k.lower() == "content-disposition"), "")
        m = re.search(r'filename="?([^";]+)"?', cd)
        if not m:
            return response["status"]["code"], headers, _Body(b"")
        name = m.group(1)
        path = self.body_files.get(name) or (self.data_dir / name if self.data_dir else None)
        if path is None or not path.exists():
            return 599, {}, _Body(f"no data file {name}".encode())
        headers = {k: v for k, v in headers.items() if k.lower() != "content-range"}
        return response["status"]["code"], headers, _Body(path.read_bytes(), is_file=True)

    def _static(self, path: str) -> tuple[int, dict, _Body] | None:
        bare = path.split("?", 1)[0]
        for prefix, folder in self.files.items():
            if bare.startswith(prefix):
                f = (folder / bare[len(prefix):]).resolve()
                if folder.resolve() in f.parents and f.is_file():
                    return 200, {"Content-Type": "application/octet-stream"}, _Body(f.read_bytes(), is_file=True)
                return 404, {"Content-Type": "text/plain"}, _Body(b"Not Found")
        return None

    def _serve(self, h: BaseHTTPRequestHandler, inc: Incoming) -> None:
        with self._lock:
            self.log.append(inc)
        if fault := self._take("delay", inc.method, inc.path):
            time.sleep(fault.seconds)
        answer = None
        if fault := self._take("inject", inc.method, inc.path):
            r = fault.response
            answer = self._recorded(r) if isinstance(r, dict) else (r[0], dict(r[1]), _Body(r[2]))
        if answer is None and (route := self.routes.get((inc.method, inc.path.split("?", 1)[0]))):
            status, headers, body = route(inc)
            body = body if isinstance(body, bytes) else json.dumps(body).encode()
            answer = status, dict(headers), _Body(self._rewrite(body.decode()).encode())
        answer = answer or self._static(inc.path)
        if answer is None and (recorded := self._match(inc)) is not None:
            answer = self._recorded(recorded)
        if answer is None:
            with self._lock:
                self.unmatched.append(inc)
            message = f"no recording matches {inc.method} {inc.path}"
            answer = 599, {"Content-Type": "text/plain"}, _Body(message.encode())
        self._send(h, inc, *answer)

    def _send(self, h: BaseHTTPRequestHandler, inc: Incoming, status: int, headers: dict, body: _Body) -> None:
        data = body.data
        if body.is_file:
            headers["Accept-Ranges"] = "bytes"
            etag = next((v for k, v in headers.items() if k.lower() == "etag"), None)
            if etag is None and self.etag:
                etag = headers["ETag"] = f'"{hashlib.md5(data).hexdigest()}"'
            rng = re.fullmatch(r"bytes=(\d*)-(\d*)", inc.headers.get("Range", "").strip())
            if_range = inc.headers.get("If-Range")
            same = if_range is None or (etag is not None and if_range.strip('"') == etag.strip('"'))
            if 200 <= status < 300:
                status = 200
                if rng and same:
                    size = len(data)
                    first, last = rng.groups()
                    if first:
                        start, end = int(first), min(int(last), size - 1) if last else size - 1
                    else:
                        start, end = max(size - int(last or 0), 0), size - 1
                    if start >= size or start > end:
                        status, data = 416, b""
                        headers["Content-Range"] = f"bytes */{size}"
                    else:
                        status, data = 206, data[start:end + 1]
                        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        drop = self._take("drop", inc.method, inc.path) if inc.method != "HEAD" else None
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if inc.method == "HEAD":
                return
            if drop is not None and drop.after < len(data):
                h.wfile.write(data[:drop.after])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True


def recorded_response(cassette: str | Path, method: str, path_contains: str, status: int | None = None) -> dict:
    """The first recorded response of ``cassette`` to a ``method`` request whose URI contains
    ``path_contains`` (and with ``status``), for ``Replay.inject``."""
    for req, resp in load_cassette(cassette):
        if req.method == method and path_contains in req.uri and (status is None or resp["status"]["code"] == status):
            return resp
    raise LookupError(f"no {method} {path_contains} in {cassette}")

