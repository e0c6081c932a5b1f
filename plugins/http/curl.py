"""libcurl's multi interface driven by an asyncio event loop: every transfer of a process on one thread.

The protocol work (connecting, TLS, sending, parsing and framing responses,
keep-alive) runs in libcurl's C code; Python sees a few callbacks per
request. ``CurlDriver`` registers libcurl's sockets with the loop
(``add_reader``/``add_writer``) and its timer (``call_later``), as libcurl's
"multi_socket" API asks, and resolves one future per transfer.

``Transfer`` is one easy handle and what one request on it saw. Header
lines are collected by a C-level ``list.append`` (no Python frame per
line); the checks of a response head run once, when its
first body bytes arrive (``on_head``), or after the transfer for a response
without a body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from itertools import repeat

import pycurl

# Bytes libcurl reads from a socket at once: most images arrive in one or two chunks.
BUFFER_BYTES = 128 * 1024
# libcurl's notes when a read brings bytes past the end of a response (it then closes the connection).
_OVERRUN_NOTES = (b"Excess found", b"Leftovers after chunking")


class Transfer:
    """One easy handle and the state of the request it carries (reset by :meth:`prepare`).

    - ``lines``: every header line received, the heads of informational
      responses included, each head starting with its status line;
    - ``chunks``: the body; ``on_head(transfer)`` checks the final head before
      the first chunk is kept (raising stops the transfer: ``abort`` holds
      the error);
    - ``notes``: libcurl's debug messages, read for overruns of the framing;
    - ``started``, ``connected_fd``, ``opened_fds``: when the request began,
      which socket carries it, the sockets opened for it (two when libcurl
      races an IPv6 and an IPv4 address); ``via_proxy``, ``refusals``: set by
      the fetcher's connection callbacks;
    - ``host``, ``on_fd``, ``one_request``: the fetcher's, kept with the handle:
      the host's state the attempt was admitted to, the socket whose request it
      counts as carrying, whether the handle closes its connection after each request.
    """

    def __init__(self, setup: Callable[[pycurl.Curl, Transfer], None]) -> None:
        self.handle = pycurl.Curl()
        self.lines: list[bytes] = []
        self.chunks: list[bytes] = []
        self.notes: list[bytes] = []
        self.on_head: Callable[[Transfer], None] | None = None
        self.abort: Exception | None = None
        self.response: object = None  # what on_head made of the final head
        self.connected_fd = -1
        self.opened_fds: list[int] = []
        self.via_proxy = False
        self.refusals: list[tuple[int, Exception]] = []  # (address family, why) of each refused address
        self.started = 0.0
        self.host: object = None
        self.on_fd = -1
        self.one_request = False
        self.future: asyncio.Future | None = None
        handle = self.handle
        handle.setopt(pycurl.HEADERFUNCTION, self.lines.append)
        handle.setopt(pycurl.WRITEFUNCTION, self._body_chunk)
        handle.setopt(pycurl.DEBUGFUNCTION, self._debug)  # only to see libcurl's note of an overrun
        handle.setopt(pycurl.VERBOSE, 1)
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.BUFFERSIZE, BUFFER_BYTES)
        setup(handle, self)

    def prepare(self, on_head: Callable[[Transfer], None]) -> None:
        """Forget the previous request; ``on_head`` checks the final head before its body is kept."""
        self.lines.clear()
        self.chunks.clear()
        self.notes.clear()
        self.on_head = on_head
        self.abort = None
        self.response = None
        self.connected_fd = -1
        self.opened_fds.clear()
        self.refusals.clear()
        self.started = time.monotonic()

    def body(self) -> bytes:
        body = b"".join(self.chunks)  # one chunk: the same object, no copy
        self.chunks.clear()
        return body

    def heads(self) -> list[list[bytes]]:
        """The response heads received, each a list of lines, the status line first; the last one
        may be incomplete (see :attr:`head_complete`). Trailers of a chunked body are left out."""
        heads: list[list[bytes]] = []
        ended = True
        for line in self.lines:
            if line[:5] == b"HTTP/":
                heads.append([line])
                ended = False
            elif line in (b"\r\n", b"\n"):
                ended = True
            elif not ended:
                heads[-1].append(line)
        return heads

    @property
    def head_complete(self) -> bool:
        """Whether the last head received ended with its blank line."""
        last_status = max((i for i, line in enumerate(self.lines) if line[:5] == b"HTTP/"), default=None)
        return last_status is not None and any(line in (b"\r\n", b"\n") for line in self.lines[last_status:])

    @property
    def overrun(self) -> bool:
        """Whether libcurl saw bytes past the end of the response (and closed its connection)."""
        return any(map(bytes.startswith, self.notes, repeat(_OVERRUN_NOTES)))

    def check_head(self) -> None:
        """Run ``on_head`` once (for a response without body bytes, after the transfer)."""
        on_head, self.on_head = self.on_head, None
        if on_head is not None:
            on_head(self)

    def _debug(self, kind: int, message: bytes) -> None:
        if kind == pycurl.INFOTYPE_TEXT:  # not the data: a copy of the body would be kept
            self.notes.append(message)

    def _body_chunk(self, data: bytes) -> int | None:
        if self.on_head is not None:
            try:
                self.check_head()
            except Exception as error:  # the transfer stops; the fetcher raises this error
                self.abort = error
                return 0
        self.chunks.append(data)
        return None


class CurlDriver:
    """One libcurl multi handle run by ``loop``: :meth:`perform` runs a transfer to its end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._timer: asyncio.TimerHandle | None = None
        self._due: float | None = None  # loop time of libcurl's next timeout
        self._watched: dict[int, int] = {}  # fd -> pycurl.POLL_* libcurl asked for
        self._readable_at: dict[int, float] = {}  # fd -> monotonic time it last became readable
        self._transfers: dict[pycurl.Curl, Transfer] = {}
        self.idle: list[Transfer] = []  # transfers between requests, kept with their handles' settings
        self.last_start = 0.0  # monotonic time the last transfer was handed to libcurl

    async def perform(self, transfer: Transfer) -> tuple[int, str]:
        """Run ``transfer`` (its options set); return libcurl's result code and message (0, "" when done)."""
        future = transfer.future = self.loop.create_future()
        self._transfers[transfer.handle] = transfer
        self.last_start = time.monotonic()
        self.multi.add_handle(transfer.handle)
        try:
            return await future
        finally:
            if self._transfers.pop(transfer.handle, None) is not None:  # cancelled: stop it here
                self.multi.remove_handle(transfer.handle)
            transfer.future = None

    def received_since_start(self, transfer: Transfer) -> bool:
        """Whether bytes reached the transfer's connection after its request began."""
        return self._readable_at.get(transfer.connected_fd, 0.0) > transfer.started

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for fd in list(self._watched):
            self._unwatch(fd)
        for handle in list(self._transfers):
            self.multi.remove_handle(handle)
        self._transfers.clear()
        for transfer in self.idle:
            transfer.handle.close()
        self.idle.clear()
        self.multi.close()

    # -- libcurl's callbacks and the loop's ------------------------------------

    def _on_socket(self, what: int, fd: int, _multi: pycurl.CurlMulti, _data: object) -> None:
        if what == pycurl.POLL_REMOVE:
            self._unwatch(fd)
            return
        previous = self._watched.get(fd, 0)
        self._watched[fd] = what
        wants_in, wants_out = what in _INPUT, what in _OUTPUT
        if wants_in and previous not in _INPUT:
            self.loop.add_reader(fd, self._readable, fd)
        elif previous in _INPUT and not wants_in:
            self.loop.remove_reader(fd)
        if wants_out and previous not in _OUTPUT:
            self.loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        elif previous in _OUTPUT and not wants_out:
            self.loop.remove_writer(fd)

    def _unwatch(self, fd: int) -> None:
        what = self._watched.pop(fd, 0)
        if what in _INPUT:
            self.loop.remove_reader(fd)
        if what in _OUTPUT:
            self.loop.remove_writer(fd)

    def _on_timer(self, milliseconds: int) -> None:
        """libcurl's next timeout moved. The loop's timer is moved only when it would fire too
        late: libcurl moves its timeout for every transfer, and each move of a loop timer leaves a
        cancelled entry in the loop's heap. A timer firing early finds nothing due and is re-armed."""
        if milliseconds < 0:
            self._due = None
            return
        self._due = self.loop.time() + milliseconds / 1000
        if self._timer is None or self._timer.when() > self._due:
            if self._timer is not None:
                self._timer.cancel()
            # libcurl must not be called back from inside its own callback: the loop calls it
            self._timer = self.loop.call_at(self._due, self._on_due)

    def _on_due(self) -> None:
        self._timer = None
        if self._due is None:
            return
        if self.loop.time() < self._due:
            self._timer = self.loop.call_at(self._due, self._on_due)
            return
        self._due = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _readable(self, fd: int) -> None:
        self._readable_at[fd] = time.monotonic()
        self._act(fd, pycurl.CSELECT_IN)

    def _act(self, fd: int, events: int) -> None:
        self.multi.socket_action(fd, events)
        while True:
            queued, done, failed = self.multi.info_read()
            for handle in done:
                self._finish(handle, 0, "")
            for handle, code, message in failed:
                self._finish(handle, code, message)
            if not queued:
                return

    def _finish(self, handle: pycurl.Curl, code: int, message: str) -> None:
        transfer = self._transfers.pop(handle, None)
        self.multi.remove_handle(handle)
        if transfer is not None and transfer.future is not None and not transfer.future.done():
            transfer.future.set_result((code, message))


_INPUT = (pycurl.POLL_IN, pycurl.POLL_INOUT)
_OUTPUT = (pycurl.POLL_OUT, pycurl.POLL_INOUT)
