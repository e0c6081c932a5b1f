"""The ``http`` fetcher: GETs http(s) URLs on a keep-alive session per thread.

Compared with img2dataset, which opens a new connection per request with
``urllib.request.urlopen``, this fetcher keeps connections alive per thread,
enforces ``timeout`` as a *total* deadline per attempt (a server trickling
bytes is cut off), caps body size and redirects, and retries only transient
failures, with backoff and ``Retry-After``. The user agent, the X-Robots-Tag
rules and the error messages stay img2dataset's so that metadata and
statistics remain comparable. Unlike img2dataset, it is polite per host
(``hosts``, ``robots_txt``; docs/politeness.md): a cap on connections and an
optional request rate per host, shared by every process of the machine,
back-off for everyone after a 429 or 503, and optionally robots.txt.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Optional
from urllib.parse import urljoin, urlsplit

import attrs
import requests
import urllib3
from attrs import validators as v

from any2ds import FetchError, Fetcher, FetchResult, Sample, at_least, between, option
from any2ds_plugins.http.addresses import AddressPolicy, BlockedAddress
from any2ds_plugins.http.deadline import CURRENT_ATTEMPT, REAPER_GRACE, Attempt, DeadlineReaper
from any2ds_plugins.http.hosts import (
    MAX_CONNECTIONS_PER_HOST, HostLimits, HostTurn, host_key, shared_table, state_directory,
)
from any2ds_plugins.http.retry import HTTPStatusError, retry_delay, status_error
from any2ds_plugins.http.robots import DEFAULT_DISALLOWED_DIRECTIVES, robots_refused, user_agent
from any2ds_plugins.http.robots_txt import ROBOTS_MAX_BYTES, RobotsAnswer, RobotsTxt
from any2ds_plugins.http.transport import as_fetch_error, guarded_session, is_stale_connection

_CHUNK = 64 * 1024
# Error and redirect bodies up to this size are read so their connection can be reused.
DRAIN_LIMIT = 64 * 1024
# Under a cap per host, a connection is a slot: it carries one request, and both ends close it after.
_ONE_REQUEST_PER_CONNECTION = {"Connection": "close"}


class SiteManners(Fetcher):
    """What both http fetchers (``http``, ``fast_http``) derive from their options, the same
    way: the user agent and its token, the X-Robots-Tag directives refused, the address policy,
    the per-host limits (shared by the machine's processes) and robots.txt."""

    def __init__(self, options: HttpFetcher.Options) -> None:
        super().__init__(options)
        self.token = (options.user_agent_token or "").strip().lower() or None
        self.user_agent = user_agent(self.token)
        directives = options.disallowed_header_directives
        if directives is None:
            directives = DEFAULT_DISALLOWED_DIRECTIVES
        self.disallowed = frozenset(d.strip().lower() for d in directives)
        self.policy = AddressPolicy(options.allow_private_networks, options.allow_link_local)
        directory = state_directory()
        table = shared_table(directory)
        self.hosts = HostLimits(table, options.max_connections_per_host, options.max_requests_per_second_per_host)
        self.robots_txt = (RobotsTxt(directory / "robots", table.locks, self.token)
                           if options.respect_robots_txt else None)

    def slow_down_after(self, error: HTTPStatusError, url: str, number: int) -> None:
        """A 429, a 503 or any error with ``Retry-After`` (on attempt ``number``) slows ``url``'s host
        down for everyone: no request to it starts before the delay a retry would wait."""
        if error.slows_host:
            self.hosts.slow_down(host_key(url), retry_delay(error, number, self.options.retry_backoff,
                                                            self.options.max_retry_after))

    def too_large(self) -> FetchError:
        return FetchError(f"body larger than {self.options.max_body_bytes} bytes", retryable=False,
                          error_type="too_large")


class HttpFetcher(SiteManners):
    """GETs http(s) URLs with ``requests``: one session per thread, its connections kept alive when
    there is no cap per host (under one, a connection carries one request: docs/politeness.md).

    ``timeout`` bounds each attempt as a whole: DNS resolution, connecting,
    every redirect hop, the headers and the body share one deadline (socket
    timeouts are cut to the time left, and a reaper thread shuts down the
    sockets of an attempt still running ``REAPER_GRACE`` s past it).

    Where requests may go (docs/security.md): only http and https, also
    after a redirect. Each connection resolves its host and connects only to
    an allowed address, after every redirect too, so a name resolving to
    127.0.0.1 is refused like the literal. By default no request reaches
    loopback, private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7),
    unspecified, multicast or reserved addresses (``allow_private_networks``
    allows them), nor link-local addresses and cloud metadata endpoints
    (169.254/16, fe80::/10, fd00:ec2::254, 100.100.100.200, 168.63.129.16;
    ``allow_link_local`` allows them). A refused URL fails with error type
    ``blocked``, never retried. Through a proxy (``http_proxy``...)
    the proxy is trusted and the target's locally resolved addresses must
    all be allowed.
    """

    name = "http"
    schemes = ("http", "https")

    @attrs.frozen
    class Options:
        timeout: float = option(
            10.0, "Total seconds per request attempt: connect, redirects and the whole body.", v.gt(0))
        retries: int = option(
            0, "Extra attempts after a transient failure (timeout, connection error, 429, 5xx).", v.ge(0))
        user_agent_token: Optional[str] = option(
            None, "Token added to the User-Agent; X-Robots-Tag directives naming it apply.")
        disallowed_header_directives: Optional[list[str]] = option(
            None, "X-Robots-Tag directives that refuse a URL; default noai, noimageai, noindex, "
                  "noimageindex; [] disables the check.",
            v.optional(v.deep_iterable(v.instance_of(str))))
        ignore_ssl_certificate: bool = option(False, "Do not verify TLS certificates.")
        max_body_bytes: int = option(64 * 1024 * 1024, "Largest accepted body, in bytes (decoded).", v.ge(1))
        max_redirects: int = option(10, "Redirects followed per attempt.", v.ge(0))
        retry_backoff: float = option(
            1.0, "Base of the exponential backoff between retries, in seconds (jittered).", v.ge(0))
        max_retry_after: float = option(
            60.0, "Longest wait before a retry, in seconds; caps Retry-After and the backoff.", v.ge(0))
        allow_private_networks: bool = option(
            False, "Allow requests to loopback, private-network and other non-public addresses "
                   "(not link-local: see allow_link_local).")
        allow_link_local: bool = option(
            False, "Allow requests to link-local addresses and cloud metadata endpoints (169.254.169.254...).")
        max_connections_per_host: int = option(
            32, "Connections open at once to one host (name and port), counted over every process of this "
                "machine; 0: no cap.", between(0, MAX_CONNECTIONS_PER_HOST))
        max_requests_per_second_per_host: float = option(
            0.0, "Requests started per second to one host, over every process of this machine; 0: no limit.",
            at_least(0))
        respect_robots_txt: bool = option(
            False, "Fetch each site's robots.txt (once per machine) and refuse the URLs it disallows for "
                   "user_agent_token (error type opt_out).")

    def __init__(self, options: HttpFetcher.Options) -> None:
        super().__init__(options)
        if options.ignore_ssl_certificate:
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        # Under a per-host cap a request's slot is its connection's: one request per connection.
        self.keep_alive = not options.max_connections_per_host
        self._reaper = DeadlineReaper(REAPER_GRACE)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: dict[threading.Thread, requests.Session] = {}

    # -- sessions ----------------------------------------------------------

    def _session(self) -> requests.Session:
        """This thread's session, created on first use.

        Creating one also closes the sessions of threads that have ended, so
        a worker that replaces its thread pool does not leak sockets.
        """
        session = getattr(self._local, "session", None)
        if session is not None:
            return session
        session = guarded_session(self.user_agent)
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

    # -- fetching ----------------------------------------------------------

    def fetch(self, sample: Sample) -> FetchResult:
        """Attempt until success, a permanent failure, or ``retries`` extra attempts are spent."""
        number = 1
        while True:
            try:
                return self._attempt(sample.url.strip(), number)
            except FetchError as error:
                if not error.retryable or number > self.options.retries:
                    raise
                time.sleep(retry_delay(error, number, self.options.retry_backoff, self.options.max_retry_after))
            number += 1

    def _attempt(self, url: str, number: int) -> FetchResult:
        """One attempt: robots.txt, the host's turn, then the request and its redirects and body, all
        before one deadline (which starts once the host's turn has come)."""
        session = self._session()
        with HostTurn(self.hosts) as turn:
            return self._get(session, turn, url, number)

    def _get(self, session: requests.Session, turn: HostTurn, url: str, number: int, *,
             robots_txt: bool = True) -> FetchResult:
        """GET ``url`` following redirects, each hop checked against robots.txt (unless ``robots_txt``
        is false: for robots.txt itself, whose body is cut at ``ROBOTS_MAX_BYTES``)."""
        session.cookies.clear()  # cookies live for one attempt's redirect chain, not the thread
        self._check_robots_txt(url, turn, robots_txt)
        turn.go(url)
        attempt = Attempt(self.options.timeout, self.policy)
        current = CURRENT_ATTEMPT.set(attempt)
        response: requests.Response | None = None
        try:
            self._reaper.watch(attempt)
            response = self._request(session, url, attempt)
            redirects = 0
            while response.is_redirect:
                if redirects == self.options.max_redirects:
                    raise FetchError(f"Exceeded {self.options.max_redirects} redirects.",
                                     error_type="redirect")
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
        if self.robots_txt is None or not applies:
            return
        turn.leave()
        refusal = self.robots_txt.refusal(url, self._fetch_robots_txt)
        if refusal is not None:
            raise refusal

    def _fetch_robots_txt(self, url: str) -> RobotsAnswer:
        """One attempt at a robots.txt, under the same address policy, deadline and host limits."""
        session = self._session()
        try:
            with HostTurn(self.hosts) as turn:
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
        target = urljoin(response.url, session.get_redirect_target(response))
        scheme = urlsplit(target).scheme.lower()
        if scheme not in self.schemes:
            raise FetchError(f"redirect to unsupported URL scheme {scheme!r}", error_type="redirect")
        return target

    def _check(self, response: requests.Response, attempt: Attempt, number: int, *, x_robots_tag: bool) -> None:
        """Refuse error statuses, X-Robots-Tag refusals and oversized bodies before reading the body.

        A 429, a 503 or any error with ``Retry-After`` slows the host down for everyone: no request
        to it starts before the delay a retry would wait.
        """
        if response.status_code >= 400:
            error = status_error(response.status_code, response.reason, response.headers.get("Retry-After"))
            self.slow_down_after(error, response.url, number)
            self._discard(response, attempt)
            raise error
        if not x_robots_tag:
            return
        if self.disallowed and robots_refused(response.raw.headers.getlist("X-Robots-Tag"), self.token,
                                              self.disallowed):
            raise FetchError("Use of image disallowed by X-Robots-Tag directive", retryable=False,
                             error_type="opt_out")
        length = _content_length(response)
        if length is not None and length > self.options.max_body_bytes:
            raise self.too_large()

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
                raise self.too_large()
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
