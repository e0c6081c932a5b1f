"""One total deadline per fetch attempt, and the reaper thread that enforces it.

Socket timeouts bound each read, not their sum: a server trickling its
headers a byte at a time outlives any of them. An ``Attempt`` carries the
deadline and the address policy down to the socket layer; the
``DeadlineReaper`` shuts down the sockets of attempts that overrun it.
Nothing here depends on the HTTP library.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from contextvars import ContextVar

from any2ds import FetchError
from any2ds_plugins.http.addresses import AddressPolicy, resolve

# Seconds past an attempt's deadline after which its sockets are shut down. Socket timeouts
# normally end a stalled read at the deadline itself; the reaper ends reads that keep receiving.
REAPER_GRACE = 1.0


class Attempt:
    """One fetch attempt as its connections see it (through ``CURRENT_ATTEMPT``).

    HTTP libraries cannot hand an absolute deadline or an address policy
    down to the socket layer, so the attempt carries them: its connections
    resolve, check and connect within the deadline, and record the sockets
    they use so the reaper can shut them down if the attempt overruns. (A
    TLS handshake needs no reaper: Python bounds it as a whole by the socket
    timeout, which is the time left.)
    """

    def __init__(self, timeout: float, policy: AddressPolicy) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.policy = policy
        self.sockets: set[socket.socket] = set()
        self.expired = False

    def remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.deadline_error()
        return remaining

    def deadline_error(self) -> FetchError:
        return FetchError(f"timed out (total deadline of {self.timeout} s)", retryable=True, error_type="timeout")

    def connect(self, host: str, port: int, source_address: tuple[str, int] | None,
                socket_options: list[tuple] | None) -> socket.socket:
        """A socket connected to an allowed address of ``host``; BlockedAddress if it has none."""
        infos = resolve(host, port, self.remaining())
        allowed = [info for info in infos if self.policy.refusal(info[4][0]) is None]
        if not allowed:
            raise self.policy.refusal(infos[0][4][0])
        error: OSError | None = None
        for family, kind, proto, _name, address in allowed:
            sock = socket.socket(family, kind, proto)
            try:
                for socket_option in socket_options or ():
                    sock.setsockopt(*socket_option)
                sock.settimeout(self.remaining())
                if source_address:
                    sock.bind(source_address)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self.use(sock)
            return sock
        raise error

    def check_host(self, host: str, port: int) -> None:
        """Refuse a host any of whose addresses is not allowed (for requests a proxy makes for us)."""
        if self.policy.allows_everything:
            return
        for info in resolve(host, port, self.remaining()):
            refusal = self.policy.refusal(info[4][0])
            if refusal is not None:
                raise refusal

    def use(self, sock: socket.socket) -> None:
        self.sockets.add(sock)

    def expire(self) -> None:
        """Mark the attempt overrun and wake every read blocked on its sockets."""
        self.expired = True
        for sock in list(self.sockets):
            try:
                # socket.socket's own shutdown: SSLSocket's would also drop its TLS state under a reader.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


CURRENT_ATTEMPT: ContextVar[Attempt] = ContextVar("any2ds_http_attempt")


class DeadlineReaper:
    """A thread shutting down the sockets of attempts still running past their deadline.

    A socket shut down from another thread wakes the read blocked on it,
    whichever library is reading.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._attempts: set[Attempt] = set()
        self._changed = threading.Condition()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, attempt: Attempt) -> None:
        with self._changed:
            self._attempts.add(attempt)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="any2ds-http-reaper", daemon=True)
                self._thread.start()
            if attempt.deadline + self.grace < self._wake_at:
                self._changed.notify()

    def unwatch(self, attempt: Attempt) -> None:
        with self._changed:
            self._attempts.discard(attempt)

    def close(self) -> None:
        with self._changed:
            thread, self._thread = self._thread, None
            self._changed.notify()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        with self._changed:
            while self._thread is threading.current_thread():
                now = time.monotonic()
                for attempt in [a for a in self._attempts if a.deadline + self.grace <= now]:
                    self._attempts.discard(attempt)
                    attempt.expire()
                self._wake_at = min((a.deadline for a in self._attempts), default=math.inf) + self.grace
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)
