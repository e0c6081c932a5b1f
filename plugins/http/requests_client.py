"""The ``http`` fetcher's work, on requests: a session per thread, and each attempt's GET with its
redirects, checks and body, under one deadline.

Built by :class:`~any2ds_plugins.http.fetcher.HttpFetcher` on its first fetch, so that requests
(with urllib3, charset_normalizer and idna: 7 MB, 50 ms to import) loads only in the processes
that fetch with it.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING

import requests
import urllib3
from requests.models import REDIRECT_STATI

from any2ds import FetchError, FetchResult
from any2ds_plugins.http.addresses import BlockedAddress
from any2ds_plugins.http.deadline import CURRENT_ATTEMPT, REAPER_GRACE, Attempt, DeadlineReaper
from any2ds_plugins.http.hosts import HostTurn
from any2ds_plugins.http.manners import DRAIN_LIMIT, redirect_target
from any2ds_plugins.http.retry import status_error, too_many_redirects
from any2ds_plugins.http.robots import robots_refused
from any2ds_plugins.http.robots_txt import ROBOTS_MAX_BYTES, RobotsAnswer
from any2ds_plugins.http.transport import as_fetch_error, guarded_session, is_stale_connection

if TYPE_CHECKING:
    from any2ds_plugins.http.fetcher import HttpFetcher

_CHUNK = 64 * 1024
# Under a cap per host, a connection is a slot: it carries one request, and both ends close it after.
_ONE_REQUEST_PER_CONNECTION = {"Connection": "close"}


class RequestsClient:
    """The sessions and attempts of one :class:`~any2ds_plugins.http.fetcher.HttpFetcher`, whose
    manners (address policy, host limits, robots.txt, user agent) it follows; thread-safe."""

    def __init__(self, fetcher: HttpFetcher) -> None:
        self.fetcher = fetcher
        self.options = options = fetcher.options
        if options.ignore_ssl_certificate:
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        # Under a per-host cap a request's slot is its connection's: one request per connection.
        self.keep_alive = not options.max_connections_per_host
        self._reaper = DeadlineReaper(REAPER_GRACE)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: dict[threading.Thread, requests.Session] = {}

    def _session(self) -> requests.Session:
        """This thread's session, created on first use.

        Creating one also closes the sessions of threads that have ended, so
        a worker that replaces its thread pool does not leak sockets.
        """
        session = getattr(self._local, "session", None)
        if session is not None:
            return session
        session = guarded_session(self.fetcher.user_agent)
        with self._lock:
            for thread in [t for t in self._sessions if not t.is_alive()]:
                self._sessions.pop(thread).close()
            self._sessions[threading.current_thread()] = session
        self._local.session = session
        return session

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._local = threading.local()
        for session in sessions:
            session.close()
        self._reaper.close()

    def attempt(self, url: str, number: int) -> FetchResult:
        """One attempt: robots.txt, the host's turn, then the request and its redirects and body, all
        before one deadline (which starts once the host's turn has come)."""
        session = self._session()
        with HostTurn(self.fetcher.hosts) as turn:
            return self._get(session, turn, url, number)

    def _get(self, session: requests.Session, turn: HostTurn, url: str, number: int, *,
             robots_txt: bool = True) -> FetchResult:
        """GET ``url`` following redirects, each hop checked against robots.txt (unless ``robots_txt``
        is false: for robots.txt itself, whose body is cut at ``ROBOTS_MAX_BYTES``)."""
        session.cookies.clear()  # cookies live for one attempt's redirect chain, not the thread
        self._check_robots_txt(url, turn, robots_txt)
        turn.go(url)
        attempt = Attempt(self.options.timeout, self.fetcher.policy)
        current = CURRENT_ATTEMPT.set(attempt)
        response: requests.Response | None = None
        try:
            self._reaper.watch(attempt)
            response = self._request(session, url, attempt)
            redirects = 0
            while response.is_redirect:
                if redirects == self.options.max_redirects:
                    raise too_many_redirects(response.status_code, response.reason)
                url = self._redirect_target(session, response)
                self._discard(response, attempt)
                redirects += 1
                self._check_robots_txt(url, turn, robots_txt)
                turn.go(url)
                response = self._request(session, url, attempt)
            self._check(response, attempt, number, x_robots_tag=robots_txt)
            if robots_txt:
                body = self._read_body(response, attempt, self.options.max_body_bytes)
            else:
                body = self._read_body(response, attempt, min(ROBOTS_MAX_BYTES, self.options.max_body_bytes),
                                       cut=True)
            if attempt.expired:  # the reaper cut the body short
                raise attempt.deadline_error()
            if self.keep_alive and response.raw.isclosed():  # read to its end: the connection can serve again
                response.raw.release_conn()
            return FetchResult(body=body, url=response.url, content_type=response.headers.get("Content-Type"),
                               headers=dict(response.headers), attempts=number)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if attempt.expired:
                raise attempt.deadline_error() from exc
            raise as_fetch_error(exc) from exc
        finally:
            self._reaper.unwatch(attempt)
            CURRENT_ATTEMPT.reset(current)
            if response is not None:
                response.close()  # closes the connection unless it was released above

    def _check_robots_txt(self, url: str, turn: HostTurn, applies: bool) -> None:
        """Refuse ``url`` if robots.txt disallows it. The thread leaves its host first: fetching a
        robots.txt takes a turn of its own, and a thread holds one host's turn at a time."""
        if self.fetcher.robots_txt is None or not applies:
            return
        turn.leave()
        refusal = self.fetcher.robots_txt.refusal(url, self._fetch_robots_txt)
        if refusal is not None:
            raise refusal

    def _fetch_robots_txt(self, url: str) -> RobotsAnswer:
        """One attempt at a robots.txt, under the same address policy, deadline and host limits."""
        session = self._session()
        try:
            with HostTurn(self.fetcher.hosts) as turn:
                result = self._get(session, turn, url, 1, robots_txt=False)
        except BlockedAddress:
            raise  # the row fails for its address, not for robots.txt
        except FetchError as error:
            return RobotsAnswer.of_failure(error)
        return RobotsAnswer(200, result.body)

    def _request(self, session: requests.Session, url: str, attempt: Attempt) -> requests.Response:
        """Send a GET and read the headers, with connect and read timeouts bounded by the deadline.

        A kept-alive connection the server closed just as the request went
        out never carried it: the request goes once more, on a new connection.
        """
        try:
            return self._send(session, url, attempt)
        except requests.ConnectionError as exc:
            if not is_stale_connection(exc):
                raise
        return self._send(session, url, attempt)

    def _send(self, session: requests.Session, url: str, attempt: Attempt) -> requests.Response:
        remaining = attempt.remaining()
        # verify per request: a session-level False loses to REQUESTS_CA_BUNDLE in the environment.
        return session.get(url, stream=True, allow_redirects=False, timeout=(remaining, remaining),
                           verify=not self.options.ignore_ssl_certificate,
                           headers=None if self.keep_alive else _ONE_REQUEST_PER_CONNECTION)

    def _redirect_target(self, session: requests.Session, response: requests.Response) -> str:
        """The absolute URL a redirect points to; only http(s) targets are followed."""
        return redirect_target(response.url, session.get_redirect_target(response), self.fetcher.schemes)

    def _check(self, response: requests.Response, attempt: Attempt, number: int, *, x_robots_tag: bool) -> None:
        """Refuse error statuses, X-Robots-Tag refusals and oversized bodies before reading the body.

        A 429, a 503 or any error with ``Retry-After`` slows the host down for everyone: no request
        to it starts before the delay a retry would wait.
        """
        # A redirect status here has no Location (else it was followed): urllib fails it.
        if response.status_code >= 400 or response.status_code in REDIRECT_STATI:
            error = status_error(response.status_code, response.reason, response.headers.get("Retry-After"))
            self.fetcher.slow_down_after(error, response.url, number)
            self._discard(response, attempt)
            raise error
        if not x_robots_tag:
            return
        fetcher = self.fetcher
        if fetcher.disallowed and robots_refused(response.raw.headers.getlist("X-Robots-Tag"), fetcher.token,
                                                 fetcher.disallowed):
            raise FetchError("Use of image disallowed by X-Robots-Tag directive", retryable=False,
                             error_type="opt_out")
        length = _content_length(response)
        if length is not None and length > self.options.max_body_bytes:
            raise self.fetcher.too_large()

    def _read_body(self, response: requests.Response, attempt: Attempt, limit: int, *, cut: bool = False) -> bytes:
        """The decoded body, at most ``limit`` bytes (more fails, or with ``cut`` is left unread), read
        before ``deadline``.

        ``read1`` returns as soon as any bytes arrive, so the deadline is
        checked however slowly the server sends; the socket timeout is cut
        to the time left, so a stalled read cannot outlive it either.
        """
        raw = response.raw
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = attempt.remaining()
            settimeout = getattr(getattr(raw.connection, "sock", None), "settimeout", None)
            if settimeout is not None:
                settimeout(remaining)
            try:
                chunk = raw.read1(_CHUNK, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError:
                if size:  # the server was sending, just too slowly
                    raise attempt.deadline_error() from None
                raise
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                if cut:
                    chunks.append(chunk[:limit - size])
                    return b"".join(chunks)
                raise self.fetcher.too_large()
            chunks.append(chunk)

    def _discard(self, response: requests.Response, attempt: Attempt) -> None:
        """Drop a redirect's or error's body, keeping the connection (if connections are kept alive)
        when the body is small."""
        length = _content_length(response)
        if not self.keep_alive or length is None or length > DRAIN_LIMIT:
            response.close()
            return
        try:
            self._read_body(response, attempt, DRAIN_LIMIT)
        except (FetchError, urllib3.exceptions.HTTPError, OSError):
            response.close()
        else:
            response.raw.release_conn()


def _content_length(response: requests.Response) -> int | None:
    """The Content-Length header as an int, or None when absent or malformed."""
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None
