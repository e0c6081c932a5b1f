"""Where a response starts and ends on a kept-alive connection, checked strictly.

On a reused connection, whatever an earlier answer left unread becomes the
next request's answer: a sample stored with another URL's bytes. http.client
alone lets that happen twice over. It skips only ``100 Continue`` before the
final response, so a ``103 Early Hints`` is taken as the (empty) answer and
the real one stays on the connection. And when a body ends, it drops its
read buffer, so bytes that arrived past the end are neither noticed nor all
gone: the rest of them is still on the socket for the next request.

``FramedResponse`` (http.client's response class, which urllib3 builds its
responses on) therefore

- fails a head the connection closed before its end (http.client takes
  what came as the whole head);
- skips informational (1xx) responses until the final one, at most
  ``MAX_INTERIM_RESPONSES`` of them, and refuses ``101 Switching Protocols``,
  which no request here asks for;
- when a body ends where its framing says (Content-Length reached, last
  chunk read), looks, without waiting, for bytes already received past
  that end, in its buffer or on the socket. If there are any, the answer
  does not match its framing: it fails, and the socket is shut down so no
  later request reads from it.

Bytes that arrive only after that look are still caught when the connection
is next taken from the pool (urllib3 drops a connection whose socket is
readable), or, if they arrive after that too, by the same look at the end of
the next answer, as long as the server answers that request as well.
"""

from __future__ import annotations

import http.client
import socket
from http import HTTPStatus

# Informational responses accepted before the final one: real servers send one or two.
MAX_INTERIM_RESPONSES = 10
# How an answer that does not frame cleanly is worded, by both http fetchers.
INCOMPLETE_HEAD = "connection closed inside the response head"
UNEXPECTED_101 = "unexpected 101 Switching Protocols response (no upgrade was requested)"
TOO_MANY_INTERIM = f"more than {MAX_INTERIM_RESPONSES} informational (1xx) responses"
OVERRUN = "more data than the response's Content-Length or chunked framing holds"


class UnframedResponse(http.client.HTTPException):
    """An answer that does not frame cleanly: more or other messages than one request's response."""


class IncompleteHead(http.client.HTTPException):
    """The connection closed before the response head's blank line: a broken transfer, like a short body."""


class _HeadReader:
    """The response's reader while its head is read: remembers the last line, to tell a head that
    ends at its blank line from one cut short (http.client takes both)."""

    def __init__(self, fp) -> None:
        self.fp = fp
        self.last_line = b""

    def readline(self, limit: int = -1) -> bytes:
        self.last_line = self.fp.readline(limit)
        return self.last_line

    def close(self) -> None:
        self.fp.close()


class FramedResponse(http.client.HTTPResponse):
    """http.client's response, strict about the start and the end of a response (see the module)."""

    def __init__(self, sock: socket.socket, *args, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        self._sock = sock
        self._last_chunk_read = False
        self._overrun = False

    def begin(self) -> None:
        if self.headers is not None:
            return
        reader = self.fp = _HeadReader(self.fp)
        try:
            super().begin()
        finally:
            if self.fp is reader:  # http.client drops its reader when it fails
                self.fp = reader.fp
        if not reader.last_line:
            raise IncompleteHead(INCOMPLETE_HEAD)

    def _read_status(self):
        for _ in range(MAX_INTERIM_RESPONSES + 1):
            version, status, reason = super()._read_status()
            if status == HTTPStatus.SWITCHING_PROTOCOLS:
                self._shut_down()
                raise UnframedResponse(UNEXPECTED_101)
            if not 100 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # an informational response is a head only
        self._shut_down()
        raise UnframedResponse(TOO_MANY_INTERIM)

    # The body's readers: each ends the response at its framed end and fails an overrun.

    def read(self, amt=None):
        return self._checked(super().read(amt))

    def read1(self, n=-1):
        return self._checked(super().read1(n))

    def readinto(self, b):
        return self._checked(super().readinto(b))

    def _checked(self, result):
        if self.fp is not None and self._at_framed_end():
            self._close_conn()  # Python < 3.13's read1 leaves the response open there
        if self._overrun:
            raise UnframedResponse(OVERRUN)
        return result

    def _read_and_discard_trailer(self) -> None:
        super()._read_and_discard_trailer()
        self._last_chunk_read = True

    def _at_framed_end(self) -> bool:
        return self._last_chunk_read if self.chunked else self.length == 0

    def _close_conn(self) -> None:
        if self._at_framed_end() and self._received_more():
            self._overrun = True
            self._shut_down()
        super()._close_conn()

    def _received_more(self) -> bool:
        """Whether any byte is waiting in the read buffer or on the socket, looking without waiting."""
        timeout = self._sock.gettimeout()
        try:
            self._sock.settimeout(0)
            return bool(self.fp.peek(1))
        except OSError:  # no TLS record waiting (SSLWantReadError), or a connection reset: nothing to misread
            return False
        finally:
            self._sock.settimeout(timeout)

    def _shut_down(self) -> None:
        """End the connection for good, so no later request reads what is on it."""
        try:
            # socket.socket's own shutdown: SSLSocket's would also drop its TLS state under a reader.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass
