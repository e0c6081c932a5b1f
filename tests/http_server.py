"""A real HTTP server on 127.0.0.1 for tests: static files plus programmable routes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

Handler = Callable[[BaseHTTPRequestHandler], None]

CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
                 ".wav": "audio/wav", ".flac": "audio/flac", ".txt": "text/plain"}


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers

    def log_message(self, *args):  # keep test output clean
        pass

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):  # clients may hang up early on purpose
            pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        server: LocalHTTPServer = self.server.owner  # type: ignore[attr-defined]
        server.record(self)
        path = unquote(urlsplit(self.path).path)
        for prefix, handler in sorted(server.routes.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(prefix):
                handler(self)
                return
        self.send_error(404, "Not Found")


def send_bytes(request: BaseHTTPRequestHandler, body: bytes, content_type: str = "application/octet-stream",
               status: int = 200, headers: dict[str, str] | None = None) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.end_headers()
    request.wfile.write(body)


class LocalHTTPServer:
    """Serves ``root`` under ``/allowed/`` and, with an X-Robots-Tag refusal, under ``/disallowed/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.routes: dict[str, Handler] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RequestHandler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.route("/allowed/", self._static())
        self.route("/disallowed/", self._static({"X-Robots-Tag": "noai, noimageai, noindex, noimageindex, nofollow"}))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, prefix: str, handler: Handler) -> None:
        self.routes[prefix] = handler

    def record(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((request.path, dict(request.headers)))

    def _static(self, headers: dict[str, str] | None = None) -> Handler:
        def handler(request: BaseHTTPRequestHandler) -> None:
            name = unquote(urlsplit(request.path).path).split("/", 2)[2]
            path = (self.root / name).resolve()
            if self.root.resolve() not in path.parents or not path.is_file():
                request.send_error(404, "Not Found")
                return
            send_bytes(request, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                       headers=headers)
        return handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
