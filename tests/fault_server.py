"""A raw-socket HTTP server on 127.0.0.1 that misbehaves on purpose, one fault per path.

http.server always answers with well-formed messages; the faults a crawl
meets (stalls, drips, lying lengths, resets, endless bodies, bombs) need the
socket itself. A connection carries one request and is then closed, unless
its fault answered with a framed keep-alive response (the keep-alive faults
below): then it carries the next request too, which is how a client's reused
connection meets what an earlier answer left on it. Every fault ends by
itself: stalls and streams stop when the client goes away, when the server
closes, or after ``MAX_FAULT_SECONDS``.

``FAULTS`` maps the first path segment to a fault: ``/stall_headers/x``,
``/redirect_chain/30``, ``/status/429?retry_after=1``... Any https URL
(``tls_url``) meets a TLS handshake trickled a byte at a time.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

MAX_FAULT_SECONDS = 30.0
# Sent by the drips: one byte per interval, so no single read ever waits long.
DRIP_INTERVAL = 1.0
MAX_REQUEST_BYTES = 64 * 1024
# Pixels a decompression bomb declares; Pillow and the image processor refuse above ~179 million.
BOMB_SIDE = 50_000
REAL_BOMB_SIDE = 20_000
GZIP_BOMB_BYTES = 128 * 1024 * 1024  # twice the fetcher's default max_body_bytes
# A TLS handshake record header announcing 16000 bytes, which then come one by one.
TLS_RECORD_HEADER = b"\x16\x03\x03\x3e\x80"
HTML = b"<!doctype html><html><body>Not an image: the site's error page</body></html>"


class Exchange:
    """One request on a connection and ways to answer it, politely or not.

    ``number`` counts the requests on the connection from 1. A fault that
    leaves the connection fit for another request sets ``keep_alive``, and
    may set ``held_back``: bytes the next exchange sends before its answer.
    """

    def __init__(self, server: FaultServer, sock: socket.socket, target: str, number: int = 1,
                 owed: bytes = b"") -> None:
        self.server = server
        self.sock = sock
        self.target = target
        self.number = number
        self.keep_alive = False
        self.held_back = b""
        self._owed = owed  # what the previous exchange held back
        parts = urlsplit(target)
        self.segments = unquote(parts.path).strip("/").split("/")
        self.query = {name: values[-1] for name, values in parse_qs(parts.query).items()}

    def send(self, data: bytes) -> bool:
        """Send ``data`` (after any bytes the previous exchange held back); False once the client has gone."""
        data, self._owed = self._owed + data, b""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Connection: close",
                 *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, body: bytes, content_type: str = "image/jpeg", status: int = 200, **headers: str) -> None:
        self.send(self.head(status, {"Content-Type": content_type, "Content-Length": str(len(body)),
                                     **{name.replace("_", "-"): value for name, value in headers.items()}}) + body)

    def answer(self, data: bytes) -> None:
        """Send ``data``, a framed response, and keep the connection for the next request."""
        self.keep_alive = self.send(data)

    def redirect(self, location: str) -> None:
        self.respond(b"", "text/plain", 302, Location=location)

    def stall(self) -> None:
        """Hold the connection open, sending nothing, until the client leaves or the server stops."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + MAX_FAULT_SECONDS
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            try:
                if not self.sock.recv(1024):
                    return  # the client closed its end
            except TimeoutError:
                continue
            except OSError:
                return

    def drip(self, data: bytes) -> None:
        """Send ``data`` one byte per DRIP_INTERVAL."""
        deadline = time.monotonic() + MAX_FAULT_SECONDS
        for offset in range(len(data)):
            if time.monotonic() > deadline or not self.send(data[offset:offset + 1]):
                return
            if self.server.stopping.wait(DRIP_INTERVAL):
                return

    def stream_forever(self, chunk: bytes) -> None:
        deadline = time.monotonic() + MAX_FAULT_SECONDS
        while time.monotonic() < deadline and not self.server.stopping.is_set() and self.send(chunk):
            pass


Fault = Callable[[Exchange], None]
FAULTS: dict[str, Fault] = {}


def fault(function: Fault) -> Fault:
    FAULTS[function.__name__] = function
    return function


# -- a good answer, for controls, long and non-ASCII URLs, and the end of redirect chains


@fault
def image(exchange: Exchange) -> None:
    exchange.respond(exchange.server.image)


# -- transfers that go wrong


@fault
def stall_headers(exchange: Exchange) -> None:
    exchange.stall()


@fault
def stall_body(exchange: Exchange) -> None:
    exchange.send(exchange.head(200, {"Content-Type": "image/jpeg", "Content-Length": "1000"}))
    exchange.stall()


@fault
def drip_headers(exchange: Exchange) -> None:
    exchange.drip(exchange.head(200, {"Content-Type": "image/jpeg", "Content-Length": "1000",
                                      "X-Padding": "p" * 100}))


@fault
def drip_body(exchange: Exchange) -> None:
    body = exchange.server.image
    exchange.send(exchange.head(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))}))
    exchange.drip(body)


@fault
def short_body(exchange: Exchange) -> None:
    """Content-Length promises more than is sent, then the connection closes."""
    body = exchange.server.image
    exchange.send(exchange.head(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))}))
    exchange.send(body[: len(body) // 2])


@fault
def reset_mid_body(exchange: Exchange) -> None:
    """Half the body, then a TCP reset (SO_LINGER 0 makes close send RST)."""
    short_body(exchange)
    time.sleep(0.2)  # let the client read what was sent, so it meets the reset while waiting for more
    exchange.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@fault
def close_without_response(exchange: Exchange) -> None:
    pass


@fault
def endless_body(exchange: Exchange) -> None:
    """A body with no length that never ends."""
    exchange.send(exchange.head(200, {"Content-Type": "image/jpeg"}))
    exchange.stream_forever(b"\xff" * 65536)


# -- redirects


@fault
def redirect_loop(exchange: Exchange) -> None:
    exchange.redirect(exchange.target)


@fault
def redirect_chain(exchange: Exchange) -> None:
    """``/redirect_chain/N`` redirects N times, then serves the image."""
    hops = int(exchange.segments[1])
    if hops:
        exchange.redirect(f"/redirect_chain/{hops - 1}")
    else:
        image(exchange)


@fault
def redirect(exchange: Exchange) -> None:
    """``/redirect?to=URL`` redirects to URL, whatever its scheme or address."""
    exchange.redirect(exchange.query["to"])


# -- bodies that are not what they claim


@fault
def html_as_jpeg(exchange: Exchange) -> None:
    exchange.respond(HTML)


@fault
def empty_as_jpeg(exchange: Exchange) -> None:
    exchange.respond(b"")


@fault
def corrupt_jpeg(exchange: Exchange) -> None:
    """A real JPEG cut in half: the header parses, the pixels do not."""
    exchange.respond(exchange.server.image[: len(exchange.server.image) // 2])


@fault
def bomb_header_png(exchange: Exchange) -> None:
    exchange.respond(png_declaring(BOMB_SIDE), "image/png")


@fault
def bomb_png(exchange: Exchange) -> None:
    exchange.respond(real_bomb_png(), "image/png")


@fault
def gzip_image(exchange: Exchange) -> None:
    exchange.respond(gzip.compress(exchange.server.image), Content_Encoding="gzip")


@fault
def gzip_bomb(exchange: Exchange) -> None:
    exchange.respond(gzip_of_zeros(GZIP_BOMB_BYTES), Content_Encoding="gzip")


# -- throttling


@fault
def status(exchange: Exchange) -> None:
    """``/status/CODE?retry_after=VALUE``: always that status."""
    headers = {"Retry_After": exchange.query["retry_after"]} if "retry_after" in exchange.query else {}
    exchange.respond(b"try later", "text/plain", int(exchange.segments[1]), **headers)


@fault
def flaky(exchange: Exchange) -> None:
    """``/flaky/CODE/...``: that status with Retry-After: 1 on the first request for the path, then the image."""
    if exchange.server.hits(exchange.target) == 1:
        exchange.respond(b"try later", "text/plain", int(exchange.segments[1]), Retry_After="1")
    else:
        image(exchange)


# -- keep-alive: answers that leave bytes on, or close, a connection the client reuses
#
# ``/<fault>/NAME`` serves (or pretends to serve) ``served_body(NAME)``. A client that takes an
# answer meant for another request stores another name's bytes, which tests detect by content.


def served_body(name: str) -> bytes:
    """What the keep-alive faults serve for ``name``: different bytes for every name."""
    return hashlib.sha256(name.encode()).digest() * 32 + name.encode()


def framed(body: bytes, status: int = 200) -> bytes:
    """A complete keep-alive response carrying ``body``."""
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


def interim(status: int) -> bytes:
    """An informational (1xx) response, with a header as 103 Early Hints has."""
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nLink: </style.css>; rel=preload\r\n\r\n".encode()


@fault
def body(exchange: Exchange) -> None:
    exchange.answer(framed(served_body(exchange.segments[1])))


@fault
def informational(exchange: Exchange) -> None:
    """``/informational/CODE/NAME?count=N&delay=S``: N (default 1) interim responses CODE, then,
    S seconds later (default at once), NAME's body."""
    exchange.send(interim(int(exchange.segments[1])) * int(exchange.query.get("count", 1)))
    exchange.server.stopping.wait(float(exchange.query.get("delay", 0)))
    exchange.answer(framed(served_body(exchange.segments[2])))


@fault
def two_responses(exchange: Exchange) -> None:
    """NAME's body, then an answer nobody asked for: in the same write, or with ``?late=1`` held
    back until the next request on the connection arrives, and sent just before its answer."""
    name = exchange.segments[1]
    unsolicited = framed(served_body(f"unsolicited/{name}"))
    if exchange.query.get("late"):
        exchange.answer(framed(served_body(name)))
        exchange.held_back = unsolicited
    else:
        exchange.answer(framed(served_body(name)) + unsolicited)


@fault
def headers_then_close(exchange: Exchange) -> None:
    """A keep-alive head promising NAME's body, then the connection closes without it."""
    response = framed(served_body(exchange.segments[1]))
    exchange.send(response[: response.index(b"\r\n\r\n") + 4])


@fault
def stale(exchange: Exchange) -> None:
    """On a reused connection, closes without answering, as a server whose idle timeout fires while
    the request arrives; on a new connection, NAME's body."""
    if exchange.number == 1:
        body(exchange)


@fault
def scripted(exchange: Exchange) -> None:
    """``/scripted/ID``: exactly the bytes registered with ``FaultServer.script``, in one write."""
    data, keep_alive = exchange.server.scripts[exchange.segments[1]]
    exchange.send(data)
    exchange.keep_alive = keep_alive


# -- payloads


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png_declaring(side: int) -> bytes:
    """A few hundred bytes claiming side x side RGB pixels: only the header is honest."""
    return png(side, side, 8, 2, zlib.compress(b"\x00" * 1024))


@functools.cache
def real_bomb_png() -> bytes:
    """A valid black 1-bit PNG of REAL_BOMB_SIDE² pixels: ~50 MB of scanlines in ~50 KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (REAL_BOMB_SIDE + 7) // 8)  # filter byte, then the packed pixels
    rows = b"".join(compressor.compress(row) for _ in range(REAL_BOMB_SIDE))
    return png(REAL_BOMB_SIDE, REAL_BOMB_SIDE, 1, 0, rows + compressor.flush())


@functools.cache
def gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    block = b"\x00" * (1 << 20)
    return b"".join(compressor.compress(block) for _ in range(size >> 20)) + compressor.flush()


# -- the server


class FaultServer:
    """Listens on 127.0.0.1; ``url("/stall_body/x")`` is a URL whose server stalls after the headers.

    Another ``host`` is for addresses in a network namespace the test made.
    Requests through a proxy arrive with absolute targets; the fault is
    chosen by their path all the same.
    """

    def __init__(self, image: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.image = image
        self.stopping = threading.Event()
        self.targets: Counter[str] = Counter()  # raw request targets received, as sent
        # (connection number, raw target) of every request, in arrival order
        self.requests: list[tuple[int, str]] = []
        self.scripts: dict[str, tuple[bytes, bool]] = {}
        self._connection_numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.host = host
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="fault-server", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def tls_url(self, path: str) -> str:
        return f"https://{self.host}:{self.port}{path}"

    def hits(self, target: str) -> int:
        """How many requests arrived for ``target`` (the raw request target, e.g. ``/flaky/429/a``)."""
        with self._lock:
            return self.targets[target]

    def script(self, data: bytes, *, keep_alive: bool) -> str:
        """A path answered with exactly ``data``; then the connection serves the next request
        (``keep_alive``) or closes."""
        with self._lock:
            script_id = str(len(self.scripts))
            self.scripts[script_id] = (data, keep_alive)
        return f"/scripted/{script_id}"

    def targets_on_reused_connections(self) -> list[str]:
        """The targets of the requests that arrived on a connection an earlier request had used."""
        with self._lock:
            seen: set[int] = set()
            reused = []
            for connection, target in self.requests:
                if connection in seen:
                    reused.append(target)
                seen.add(connection)
            return reused

    def close(self) -> None:
        self.stopping.set()
        self._thread.join()
        self._listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _address = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(sock,), name="fault-exchange", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(10)
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first == TLS_RECORD_HEADER[:1]:  # a TLS ClientHello
                Exchange(self, sock, "/").drip(TLS_RECORD_HEADER + b"\x00" * 16000)
                return
            connection = next(self._connection_numbers)
            held_back = b""
            for number in itertools.count(1):
                target = self._read_target(sock)
                if target is None:
                    return
                with self._lock:
                    self.targets[target] += 1
                    self.requests.append((connection, target))
                exchange = Exchange(self, sock, target, number, held_back)
                FAULTS.get(exchange.segments[0], _not_found)(exchange)
                if not exchange.keep_alive:
                    return
                held_back = exchange.held_back

    @staticmethod
    def _read_target(sock: socket.socket) -> str | None:
        """The request target of the request head arriving on ``sock`` (headers are ignored)."""
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_BYTES:
                data = sock.recv(65536)
                if not data:
                    return None
                head += data
        except OSError:
            return None
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        return request_line.split(" ")[1]


def _not_found(exchange: Exchange) -> None:
    exchange.respond(b"no such fault", "text/plain", 404)
