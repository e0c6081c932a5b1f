"""The ``fast_http`` fetcher: the ``http`` fetcher's guarantees, with libcurl doing the protocol work.

Every fetch of a worker process runs on the process's event loop, on one
libcurl multi handle (``curl``): connecting, TLS, parsing and framing
responses and keep-alive happen in C, off the GIL. Per request it costs
about a twentieth of the CPU of ``http`` (requests) and a fifth of aiohttp's
(docs/performance.md), and no thread per fetch: ``thread_count`` fetches in
flight are ``thread_count`` transfers on one thread. Under a per-host cap its
connections are kept alive, each holding one of the host's slots
(``host_connections``).

What ``http`` guarantees holds here too, with the same options, messages and
error types: one total deadline per attempt (libcurl's timeout, cut to the
time left at each redirect hop); the address policy checked on the address
each new connection is opened to (libcurl's open-socket callback) and on the
address each request goes out on (its pre-request callback), at every hop;
http(s) only, also after a redirect; body and redirect caps; X-Robots-Tag;
retries only for transient failures, with backoff and Retry-After; the user
agent; and responses framed strictly (informational responses skipped up to
a limit, 101 refused, a response followed by bytes past its end refused and
its connection closed, a connection with bytes waiting never reused).
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import socket
import threading
import time
import weakref
import zlib
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import certifi
import pycurl
from any2ds_plugins.http.addresses import BlockedAddress, resolve
from any2ds_plugins.http.curl import CurlDriver, Transfer
from any2ds_plugins.http.deadline import Attempt
from any2ds_plugins.http.framing import (
    INCOMPLETE_HEAD, MAX_INTERIM_RESPONSES, OVERRUN, TOO_MANY_INTERIM, UNEXPECTED_101,
)
from any2ds_plugins.http.host_connections import (
    IDLE_SECONDS, DaemonThreads, HostConnections, HostState, socket_inode,
)
from any2ds_plugins.http.hosts import host_key, port_of
from any2ds_plugins.http.manners import DRAIN_LIMIT, HttpOptions, SiteManners, redirect_target, split_url
from any2ds_plugins.http.retry import HTTPStatusError, retry_delay, status_error, too_many_redirects, unsent
from any2ds_plugins.http.robots import robots_refused
from any2ds_plugins.http.robots_txt import RobotsAnswer

from any2ds import FetchError, FetchResult, Sample

T = TypeVar("T")

DNS_SECONDS = 60.0
MAX_DNS_ENTRIES = 10_000
MAX_REMEMBERED_CONNECTIONS = 65_536  # sockets known by address (for a timeout's message), forgotten past this
MAX_OWN_SOCKETS = 4096  # sockets opened, kept for a fork; past this the closed ones are forgotten
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
REQUEST_HEADERS = ["Accept: */*", "Accept-Encoding: gzip, deflate", "Connection: keep-alive"]
# Through a proxy under a per-host cap (its slot is counted per attempt), and a request retiring its
# connection: one request on the connection.
ONE_REQUEST_HEADERS = ["Accept: */*", "Accept-Encoding: gzip, deflate", "Connection: close"]
# Threads that wait in the kernel, off the event loop: for a host's connection slot (they depend on
# nothing but connections in use), and for robots.txt verdicts (which may need slots): two pools, so
# that robots.txt waits can never hold every thread a slot wait needs.
SLOT_WAIT_THREADS = 64
ROBOTS_WAIT_THREADS = 16
PROXY_VARIABLES = (b"http_proxy", b"https_proxy", b"all_proxy", b"HTTP_PROXY", b"HTTPS_PROXY", b"ALL_PROXY")
# The process environment as bytes: os.environ and os.environb share it; a plain dict lookup per
# variable (their own lookups encode the key and raise KeyError for a missing one: ~1 us each).
_ENVIRONMENT = getattr(os.environb, "_data", os.environb)
# How libcurl's failures read, in the words of the ``http`` fetcher (http.client's and the OS's).
GOT_NOTHING = "Remote end closed connection without response"
_SSL_CODES = frozenset({pycurl.E_SSL_CONNECT_ERROR, pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CERTPROBLEM,
                        pycurl.E_SSL_CIPHER, pycurl.E_SSL_CACERT_BADFILE, pycurl.E_SSL_ISSUER_ERROR,
                        pycurl.E_SSL_PINNEDPUBKEYNOTMATCH, pycurl.E_SSL_INVALIDCERTSTATUS})
# A URL of these characters only (no '%', no space, nothing non-ASCII) is sent as it is.
_PLAIN_URL = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]*")
# One header field: its name and its value without surrounding blanks.
_FIELD = re.compile(r"^([^:\r\n]+):[ \t]*([^\r\n]*?)[ \t]*\r?$", re.MULTILINE)
_BAD_URL_CODES = frozenset({pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL})
# libcurl's codes for an answer it cannot read as HTTP, and for a URL it cannot use: which one, is
# told by whether a request went out. Code 8 is libcurl's CURLE_WEIRD_SERVER_REPLY, under its old FTP name in
# pycurl; BAD_CONTENT_ENCODING is a Transfer-Encoding libcurl does not know (fast_http decodes Content-Encoding itself).
_REFUSED_ANSWER_CODES = frozenset({pycurl.E_UNSUPPORTED_PROTOCOL, pycurl.E_FTP_WEIRD_SERVER_REPLY,
                                   pycurl.E_BAD_CONTENT_ENCODING})
# libcurl's CURLE_TOO_LARGE (8.6 and later; pycurl does not name it): a request over libcurl's
# limit, or a response header line over 100 KiB (its message is then empty).
_E_TOO_LARGE = getattr(pycurl, "E_TOO_LARGE", 100)


class _Redirect(Exception):
    """A redirect whose body is not worth reading: the transfer stops at its head (and its connection)."""


class _Response:
    """The final response of one hop, read from its head lines."""

    def __init__(self, head: list[bytes]) -> None:
        status_line, _, fields = b"".join(head).decode("latin-1").partition("\n")
        _version, status, *reason = status_line.split(None, 2)
        self.status = int(status)
        self.reason = reason[0].strip() if reason else ""
        self.fields: list[tuple[str, str]] = _FIELD.findall(fields)
        self.headers = dict(self.fields)  # as sent; a repeated header's values joined with ", " (as urllib3)
        if len(self.headers) != len(self.fields):
            self.headers = {}
            for name, value in self.fields:
                self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        self._lower = {name.lower(): value for name, value in self.headers.items()}

    def header(self, name: str) -> str | None:
        """A header's value by its lower-case name (repeated ones joined), or None."""
        return self._lower.get(name)

    def values(self, name: str) -> list[str]:
        """Every value of a header, by its lower-case name."""
        return [value for field, value in self.fields if field.lower() == name] if name in self._lower else []

    @property
    def content_length(self) -> int | None:
        try:
            return int(self._lower["content-length"])
        except (KeyError, ValueError):
            return None

    @property
    def redirect_location(self) -> str | None:
        if self.status not in REDIRECT_STATUSES:
            return None
        location = self.header("location")
        # As requests: http.client decodes headers as latin-1, servers mostly send UTF-8.
        return location.encode("latin-1").decode("utf-8", "replace") if location is not None else None


class FastHttpFetcher(SiteManners):
    """GETs http(s) URLs with libcurl's multi interface on the worker's event loop.

    Same options as ``http`` (its ``Options``), same checks, messages and error
    types; see the module's docstring and ``HttpFetcher``.
    """

    name = "fast_http"
    schemes = ("http", "https")
    Options = HttpOptions

    def __init__(self, options: HttpOptions) -> None:
        super().__init__(options)
        self._waits: dict[str, ThreadPoolExecutor | DaemonThreads] = {}  # "slots", "robots": made on first use
        self._fd_by_address: dict[tuple[str, int, str, int], int] = {}  # a connection's addresses -> its socket
        self._dns: dict[tuple[str, int], tuple[float, list | None]] = {}  # (host, port) -> (until, getaddrinfo)
        self._drivers: dict[asyncio.AbstractEventLoop, CurlDriver] = {}
        self._host_connections: dict[asyncio.AbstractEventLoop, HostConnections] = {}
        self._own_loop: asyncio.AbstractEventLoop | None = None  # for fetch(), made on first use
        self._lock = threading.Lock()
        self._sockets: dict[int, int | None] = {}  # fd -> inode of the sockets opened for libcurl
        _FETCHERS.add(self)

    # -- the two ways in ----------------------------------------------------

    async def fetch_async(self, sample: Sample) -> FetchResult:
        """Attempt until success, a permanent failure, or ``retries`` extra attempts are spent."""
        url = sample.url.strip()
        number = 1
        while True:
            try:
                return await self._attempt(url, number)
            except FetchError as error:
                if not error.retryable or number > self.options.retries:
                    raise
                await asyncio.sleep(retry_delay(error, number, self.options.retry_backoff,
                                                self.options.max_retry_after))
            number += 1

    def fetch(self, sample: Sample) -> FetchResult:
        """The same, from any thread, on an event loop of the fetcher's own (callers without a loop)."""
        return self._run_on_own_loop(self.fetch_async(sample))

    def _run_on_own_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
                threading.Thread(target=self._own_loop.run_forever, name="any2ds-fast-http", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._own_loop).result()

    def close(self) -> None:
        """Close every loop's multi handle on its loop. A worker's loop is being stopped when its
        components close: its driver is closed there if the loop gets to it, else with the process."""
        own_loop, self._own_loop = self._own_loop, None
        for loop, driver in list(self._drivers.items()):
            close = functools.partial(_close_loop_state, driver, self._host_connections.get(loop))
            if loop is own_loop:
                asyncio.run_coroutine_threadsafe(_call(close), loop).result()
            elif loop.is_running():
                loop.call_soon_threadsafe(close)
            elif not loop.is_closed():
                close()
        self._drivers.clear()
        self._host_connections.clear()
        if own_loop is not None:
            own_loop.call_soon_threadsafe(own_loop.stop)
        for pool in self._waits.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._waits.clear()

    # -- an attempt ---------------------------------------------------------

    def _driver(self) -> CurlDriver:
        loop = asyncio.get_running_loop()
        driver = self._drivers.get(loop)
        if driver is None:
            driver = self._drivers[loop] = CurlDriver(loop)
        return driver

    async def _attempt(self, url: str, number: int, *, robots_txt: bool = True) -> FetchResult:
        """One attempt: robots.txt, the host's turn, then the request, its redirects (each hop
        checked and given its host's turn) and body, all before one deadline (which starts once
        the host's turn has come). ``robots_txt`` false: robots.txt itself (cut when it is parsed)."""
        driver = self._driver()
        transfer = driver.idle.pop() if driver.idle else Transfer(self._set_up)
        turn = _HostTurn(self, transfer)
        try:
            url = _prepared(url)
            await self._check_robots_txt(url, turn, robots_txt)
            await turn.go(url)
            attempt = Attempt(self.options.timeout, self.policy)
            response = await self._request(driver, transfer, url, attempt, number, robots_txt)
            redirects = 0
            while (location := response.redirect_location) is not None:
                if redirects == self.options.max_redirects:
                    raise too_many_redirects(response.status, response.reason)
                url = _prepared(redirect_target(url, location, self.schemes))
                redirects += 1
                await self._check_robots_txt(url, turn, robots_txt)
                await turn.go(url)
                response = await self._request(driver, transfer, url, attempt, number, robots_txt)
            body = transfer.body()
            encoding = response.header("content-encoding")
            if encoding is not None:
                body = await asyncio.get_running_loop().run_in_executor(
                    None, _decoded, body, encoding, self.options.max_body_bytes)
            if robots_txt and len(body) > self.options.max_body_bytes:  # a robots.txt is cut when parsed
                raise self.too_large()
            return FetchResult(body=body, url=url, content_type=response.header("content-type"),
                               headers=response.headers, attempts=number)
        finally:
            turn.leave()
            transfer.chunks.clear()
            driver.idle.append(transfer)

    async def _check_robots_txt(self, url: str, turn: _HostTurn, applies: bool) -> None:
        """Refuse ``url`` if robots.txt disallows it. The attempt leaves its host first: fetching
        a robots.txt takes a turn of its own, and an attempt holds one host's turn at a time. The
        verdict may wait for another process's fetch of the same robots.txt: on a waiting thread."""
        if self.robots_txt is None or not applies:
            return
        turn.leave()
        loop = asyncio.get_running_loop()

        def fetch(robots_url: str) -> RobotsAnswer:  # on the waiting thread: the fetch runs on the loop
            return asyncio.run_coroutine_threadsafe(self._fetch_robots_txt(robots_url), loop).result()

        refusal = await loop.run_in_executor(self._wait_pool("robots"), self.robots_txt.refusal, url, fetch)
        if refusal is not None:
            raise refusal

    async def _fetch_robots_txt(self, url: str) -> RobotsAnswer:
        """One attempt at a robots.txt, under the same address policy, deadline and host limits."""
        try:
            result = await self._attempt(url, 1, robots_txt=False)
        except BlockedAddress:
            raise  # the row fails for its address, not for robots.txt
        except FetchError as error:
            return RobotsAnswer.of_failure(error)
        return RobotsAnswer(200, result.body)

    async def _enter_host(self, key: str) -> HostState | None:
        """Admission to ``key`` under the cap (see ``HostConnections``; None without a cap), then
        its start time."""
        host = await self._connections().enter(key) if self.hosts.max_connections else None
        try:
            delay = self.hosts.start_delay(key)
            if delay > 0:
                await asyncio.sleep(delay)
        except BaseException:
            if host is not None:
                host.owner.leave(host)
            raise
        return host

    def _connections(self) -> HostConnections:
        loop = asyncio.get_running_loop()
        connections = self._host_connections.get(loop)
        if connections is None:
            driver = self._driver()
            connections = self._host_connections[loop] = HostConnections(
                self.hosts.table, self.hosts.max_connections, loop, lambda: self._wait_pool("slots"),
                lambda: driver.last_start)
        return connections

    def _wait_pool(self, kind: str) -> ThreadPoolExecutor | DaemonThreads:
        pool = self._waits.get(kind)
        if pool is None:
            with self._lock:
                pool = self._waits.get(kind)
                if pool is None:
                    name = f"any2ds-fast-http-{kind}"
                    pool = self._waits[kind] = (DaemonThreads(SLOT_WAIT_THREADS, name) if kind == "slots"
                                                else ThreadPoolExecutor(ROBOTS_WAIT_THREADS, thread_name_prefix=name))
        return pool

    async def _request(self, driver: CurlDriver, transfer: Transfer, url: str, attempt: Attempt,
                       number: int, robots_txt: bool) -> _Response:
        """One hop: the final response to a GET of ``url``, its body in ``transfer``; a status error
        raised (after reading a small body, so the connection serves again). A 429, a 503 or any
        error with ``Retry-After`` slows the host down for everyone, as long as a retry would wait."""
        try:
            return await self._hop(driver, transfer, url, attempt, robots_txt)
        except HTTPStatusError as error:
            self.slow_down_after(error, url, number)
            raise

    async def _hop(self, driver: CurlDriver, transfer: Transfer, url: str, attempt: Attempt,
                   robots_txt: bool) -> _Response:
        remaining = attempt.remaining()
        proxy = _proxy_for(url)
        transfer.via_proxy = proxy is not None
        target = urlsplit(url)
        if proxy is not None and not self.policy.allows_everything:  # the proxy resolves; check the target here
            await asyncio.get_running_loop().run_in_executor(
                None, attempt.check_host, target.hostname, port_of(target))
            remaining = attempt.remaining()
        handle = transfer.handle
        if proxy is None:
            resolved = await self._resolve(target.hostname, port_of(target), attempt)
            if resolved is not None:
                handle.setopt(pycurl.RESOLVE, [resolved])
                remaining = attempt.remaining()
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.PROXY, proxy or "")
        handle.setopt(pycurl.TIMEOUT_MS, max(1, int(remaining * 1000)))
        # Through a proxy under a cap, and a request retiring its connection (``HostConnections``).
        one_request = (transfer.via_proxy and bool(self.hosts.max_connections)) or (
            transfer.host is not None and transfer.host.owner.retires(transfer.host))
        if one_request != transfer.one_request:
            handle.setopt(pycurl.HTTPHEADER, ONE_REQUEST_HEADERS if one_request else REQUEST_HEADERS)
            handle.setopt(pycurl.FORBID_REUSE, int(one_request))
            transfer.one_request = one_request
        transfer.prepare(self._check_head if robots_txt else self._check_robots_txt_head)
        try:
            code, message = await driver.perform(transfer)
        finally:
            if transfer.host is not None:
                transfer.host.owner.carried(transfer.host, transfer)
        if isinstance(transfer.abort, _Redirect):
            return transfer.response
        if transfer.abort is not None:
            raise transfer.abort
        if code:
            raise self._failure(code, message, url, driver, transfer, attempt)
        if not transfer.head_complete:  # libcurl takes what came before the connection closed as a head
            raise FetchError(INCOMPLETE_HEAD, retryable=True, error_type="connect")
        transfer.check_head()  # a response without body bytes: checked now
        if transfer.overrun:
            raise FetchError(OVERRUN, retryable=False, error_type="protocol")
        response = transfer.response
        if response.status >= 400:
            raise status_error(response.status, response.reason, response.header("retry-after"))
        return response

    async def _resolve(self, host: str, port: int, attempt: Attempt) -> str | None:
        """For a host name, libcurl's ``RESOLVE`` entry of its allowed addresses; None for an IP literal.

        Names are resolved here rather than by libcurl, as the ``http`` fetcher resolves them:
        with the same resolver call, within the deadline, and refused at once when no address is
        allowed (libcurl, left to itself, would also wait for answers of the other address family).
        Answers are kept ``DNS_SECONDS``, as libcurl's own cache keeps them.
        """
        key = (host, port)
        known = self._dns.get(key)
        now = time.monotonic()
        if known is None or known[0] < now:
            try:
                socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
                known = (math.inf, None)  # an IP literal: libcurl connects to it, checked as it opens the socket
            except (socket.gaierror, UnicodeError):
                try:
                    infos = await asyncio.get_running_loop().run_in_executor(None, resolve, host, port,
                                                                             attempt.remaining())
                except OSError as exc:  # socket.gaierror, a resolver too slow to answer included
                    raise FetchError(unsent(str(exc)), retryable=True, error_type="dns") from exc
                known = (now + DNS_SECONDS, infos)
            if len(self._dns) > MAX_DNS_ENTRIES:
                self._dns.clear()
            self._dns[key] = known
        infos = known[1]
        if infos is None:
            return None
        allowed = [info[4][0] for info in infos if self.policy.refusal(info[4][0]) is None]
        if not allowed:
            raise self.policy.refusal(infos[0][4][0])
        return f"{host}:{port}:" + ",".join(f"[{address}]" if ":" in address else address for address in allowed)

    def _check_robots_txt_head(self, transfer: Transfer) -> None:
        """``_check_head`` for a robots.txt: its X-Robots-Tag speaks of the file, not of the site's
        pages, and a large one is cut when parsed (at ROBOTS_MAX_BYTES), not refused."""
        self._check_head(transfer, page=False)

    def _check_head(self, transfer: Transfer, page: bool = True) -> None:
        """The final response head, checked when its first body bytes arrive (or after a transfer
        without any): informational responses (a few) skipped, 101 refused; error statuses and
        redirects with bodies not worth reading, X-Robots-Tag refusals and oversized bodies stop
        the transfer there, and close its connection. Sets ``transfer.response``."""
        heads = transfer.heads()
        interim = sum(1 for head in heads if head[0].split(None, 2)[1][:1] == b"1")
        response = transfer.response = _Response(heads[-1])
        if response.status == 101:
            raise FetchError(UNEXPECTED_101, retryable=False, error_type="protocol")
        if interim > MAX_INTERIM_RESPONSES:
            raise FetchError(TOO_MANY_INTERIM, retryable=False, error_type="protocol")
        status = response.status
        if status in REDIRECT_STATUSES and response.redirect_location is None:  # nowhere to go: urllib fails it
            raise status_error(status, response.reason, None)
        if status >= 400 or response.redirect_location is not None:
            length = response.content_length
            if length is None or length > DRAIN_LIMIT:  # not worth reading: drop the connection instead
                if status >= 400:
                    raise status_error(status, response.reason, response.header("retry-after"))
                raise _Redirect()
            return
        if not page:
            return
        if self.disallowed and robots_refused(response.values("x-robots-tag"), self.token, self.disallowed):
            raise FetchError("Use of image disallowed by X-Robots-Tag directive", retryable=False,
                             error_type="opt_out")
        length = response.content_length
        if length is not None and length > self.options.max_body_bytes:
            raise self.too_large()

    def _failure(self, code: int, message: str, url: str, driver: CurlDriver, transfer: Transfer,
                 attempt: Attempt) -> FetchError:
        """libcurl's failure ``code`` as the ``http`` fetcher words and classifies the same failure."""
        if transfer.refusals and code in (pycurl.E_COULDNT_CONNECT, pycurl.E_ABORTED_BY_CALLBACK):
            # Every address refused: name an IPv4 one if any (libcurl tries ::1 before 127.0.0.1 for
            # localhost, where the resolver lists 127.0.0.1 first, as the http fetcher reports it).
            return min(transfer.refusals, key=lambda refused: refused[0] != socket.AF_INET)[1]
        if code == pycurl.E_OPERATION_TIMEDOUT:
            # As ``http``: the total deadline's message when the server was sending, just too slowly.
            final_head = transfer.head_complete and transfer.heads()[-1][0].split(None, 2)[1][:1] != b"1"
            if any(transfer.chunks) or (driver.received_since_start(transfer) and not final_head):
                return attempt.deadline_error()
            connected = transfer.handle.getinfo(pycurl.CONNECT_TIME) > 0  # as ``http``: its connect timeout
            return FetchError("timed out" if connected else unsent("timed out"), retryable=True, error_type="timeout")
        if code == pycurl.E_FILESIZE_EXCEEDED:
            return self.too_large()
        if code in (pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY):
            return FetchError(unsent(message), retryable=True, error_type="dns")
        if code in _SSL_CODES:
            detail = message.removeprefix("SSL certificate problem: ")
            if code == pycurl.E_PEER_FAILED_VERIFICATION:
                message = f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {detail}"
            return FetchError(unsent(message), retryable=False, error_type="tls")
        if code == _E_TOO_LARGE:
            if transfer.handle.getinfo(pycurl.REQUEST_SIZE):  # as http.client refuses a header line over 64 KiB
                return FetchError(message or "response head too large", retryable=False, error_type="protocol")
            return FetchError(message, retryable=False, error_type="invalid_url")  # a URL too long to send
        if code in _REFUSED_ANSWER_CODES and transfer.handle.getinfo(pycurl.REQUEST_SIZE):
            # The request went out and libcurl refused the answer (not HTTP, its status line, a header,
            # conflicting lengths), as http.client and urllib3 refuse it: the server would send it again.
            return FetchError(message, retryable=False, error_type="protocol")
        if code in _BAD_URL_CODES:
            return FetchError(f"Invalid URL {url!r}: {message}", retryable=False, error_type="invalid_url")
        if code == pycurl.E_GOT_NOTHING:
            message = GOT_NOTHING
        elif code == pycurl.E_PARTIAL_FILE and transfer.heads():
            expected, got = _Response(transfer.heads()[-1]).content_length, sum(map(len, transfer.chunks))
            if expected is not None:
                message = f"IncompleteRead({got} bytes read, {expected - got} more expected)"
        else:
            errno = transfer.handle.getinfo(pycurl.OS_ERRNO)
            if errno and code in (pycurl.E_COULDNT_CONNECT, pycurl.E_RECV_ERROR, pycurl.E_SEND_ERROR):
                message = f"[Errno {errno}] {os.strerror(errno)}"
            if code == pycurl.E_COULDNT_CONNECT:
                message = unsent(message)
        return FetchError(message, retryable=True, error_type="connect")

    # -- a handle's settings and its connection callbacks --------------------

    def _set_up(self, handle: pycurl.Curl, transfer: Transfer) -> None:
        """The options every request of ``handle`` shares."""
        handle.setopt(pycurl.USERAGENT, self.user_agent)
        handle.setopt(pycurl.HTTPHEADER, REQUEST_HEADERS)
        if self.hosts.max_connections:  # a kept-alive connection holds a slot: not idle for long
            handle.setopt(pycurl.MAXAGE_CONN, IDLE_SECONDS)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.MAXFILESIZE_LARGE, self.options.max_body_bytes)  # the raw body; decoded: _decoded
        handle.setopt(pycurl.OPENSOCKETFUNCTION, lambda purpose, address: self._open_socket(transfer, address))
        handle.setopt(pycurl.PREREQFUNCTION, lambda remote, local, port, local_port: self._before_request(
            transfer, remote, local, port, local_port))
        if self.options.ignore_ssl_certificate:
            handle.setopt(pycurl.SSL_VERIFYPEER, 0)
            handle.setopt(pycurl.SSL_VERIFYHOST, 0)
        else:  # the CA bundle requests would use, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE included
            handle.setopt(pycurl.CAINFO, os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                          or certifi.where())

    def _open_socket(self, transfer: Transfer, address: Any) -> int:
        """A socket for libcurl to connect to ``address``, if the policy allows it (the proxy is
        trusted); a refused address is skipped, the transfer fails with its refusal if none is left."""
        family, kind, protocol, where = address
        if not transfer.via_proxy:
            refusal = self.policy.refusal(where[0])
            if refusal is not None:
                transfer.refusals.append((family, refusal))
                return pycurl.SOCKET_BAD
        try:
            sock = socket.socket(family, kind, protocol)
        except OSError:
            return pycurl.SOCKET_BAD
        fd = sock.detach()  # libcurl owns it now, and closes it
        transfer.opened_fds.append(fd)
        if len(self._sockets) > MAX_OWN_SOCKETS:
            self._sockets = {fd: inode for fd, inode in list(self._sockets.items()) if socket_inode(fd) == inode}
        self._sockets[fd] = socket_inode(fd)
        return fd

    def _disown_sockets(self) -> None:
        """In a forked child: each socket still open from the parent's connections becomes
        /dev/null here, so that what the child does with the parent's libcurl state (its clean-up
        reads, shuts down and closes connections) never reaches the parent's connections."""
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for fd, inode in list(self._sockets.items()):
                if socket_inode(fd) == inode:
                    os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
        self._sockets = {}

    def _before_request(self, transfer: Transfer, remote: str, local: str, port: int, local_port: int) -> int:
        """Just before a request goes out, on a new or a reused connection: the address it goes to
        is allowed (a second check, after the socket's), and which socket carries it (counted
        under the host's cap). A connection is known by its addresses and ports: a local port
        alone may serve two connections to different addresses at once."""
        address = (remote, port, local, local_port)
        opened = transfer.opened_fds
        new_fd = -1
        if opened:  # a new connection: remember its socket for when it is reused
            new_fd = opened[0] if len(opened) == 1 else _socket_on_port(opened, local_port)
            opened.clear()
            if len(self._fd_by_address) > MAX_REMEMBERED_CONNECTIONS:
                self._fd_by_address.clear()
            self._fd_by_address[address] = new_fd
        transfer.connected_fd = self._fd_by_address.get(address, -1)
        if transfer.via_proxy:
            return pycurl.PREREQFUNC_OK
        if transfer.host is not None:
            transfer.host.owner.carrying(transfer.host, transfer, address, new_fd)
        refusal = self.policy.refusal(remote)
        if refusal is not None:
            transfer.refusals.append((socket.AF_UNSPEC, refusal))
            return pycurl.PREREQFUNC_ABORT
        return pycurl.PREREQFUNC_OK


_FETCHERS: weakref.WeakSet[FastHttpFetcher] = weakref.WeakSet()


def _disown_parent_sockets() -> None:
    for fetcher in list(_FETCHERS):
        fetcher._disown_sockets()


os.register_at_fork(after_in_child=_disown_parent_sockets)


class _HostTurn:
    """An attempt's turn at one host at a time, waited for on the event loop: ``go(url)`` leaves
    the current host and waits for the URL's; the attempt's transfer knows the host it is at."""

    def __init__(self, fetcher: FastHttpFetcher, transfer: Transfer) -> None:
        self.fetcher = fetcher
        self.transfer = transfer
        self.key: str | None = None

    async def go(self, url: str) -> None:
        key = host_key(url)
        if key == self.key:
            return
        self.leave()
        self.transfer.host = await self.fetcher._enter_host(key)
        self.key = key

    def leave(self) -> None:
        if self.key is None:
            return
        host, self.transfer.host, self.key = self.transfer.host, None, None
        if host is not None:
            host.owner.leave(host)


def _socket_on_port(fds: list[int], port: int) -> int:
    """Of the sockets libcurl raced to connect, the one bound to local ``port`` (-1 if none)."""
    for fd in fds:
        sock = socket.socket(fileno=fd)
        try:
            if sock.getsockname()[1] == port:
                return fd
        except OSError:
            pass
        finally:
            sock.detach()
    return -1


def _close_loop_state(driver: CurlDriver, connections: HostConnections | None) -> None:
    """On its loop: its multi handle closed (its connections with it), then its slots given back."""
    driver.close()
    if connections is not None:
        connections.close()


def _call(function):
    async def call():
        function()
    return call()


def _prepared(url: str) -> str:
    """``url`` as requests would send it (percent-encoded as UTF-8, the host IDNA-encoded); a URL
    without a host, or that does not parse, fails as requests fails it."""
    parts = split_url(url)
    if not parts.hostname:
        raise FetchError(f"Invalid URL {url!r}: No host supplied", retryable=False, error_type="invalid_url")
    if not parts.netloc.isascii():
        try:
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise FetchError(f"Invalid URL {url!r}: URL has an invalid label.", retryable=False,
                             error_type="invalid_url") from exc
        netloc = parts.netloc.rsplit("@", 1)
        netloc[-1] = netloc[-1].lower().replace(parts.hostname, host)
        parts = parts._replace(netloc="@".join(netloc))
        url = parts.geturl()
    if _PLAIN_URL.fullmatch(url):
        return url
    from requests.utils import requote_uri  # requests loads only for the rare URL that needs quoting
    return requote_uri(url)


def _proxy_for(url: str) -> str | None:
    """The proxy requests would use for ``url`` (environment variables, no_proxy), or None."""
    if not any(name in _ENVIRONMENT for name in PROXY_VARIABLES):
        return None
    from requests.utils import get_environ_proxies, select_proxy  # requests loads only when a proxy is set
    return select_proxy(url, get_environ_proxies(url))


def _decoded(body: bytes, encodings: str, limit: int) -> bytes:
    """``body`` decoded from its Content-Encoding(s) (gzip, deflate; others are left as they are),
    at most ``limit`` + 1 bytes of it, as urllib3 decodes for requests."""
    for encoding in reversed([e.strip().lower() for e in encodings.split(",")]):
        if encoding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit)
        elif encoding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit)
            except FetchError:  # raw deflate, as some servers send it
                body = _inflate(body, -zlib.MAX_WBITS, limit)
    return body


def _inflate(data: bytes, window_bits: int, limit: int) -> bytes:
    try:
        inflater = zlib.decompressobj(window_bits)
        out = inflater.decompress(data, limit + 1)
        while inflater.eof and inflater.unused_data and window_bits > 16 and len(out) <= limit:  # gzip members
            data, inflater = inflater.unused_data, zlib.decompressobj(window_bits)
            out += inflater.decompress(data, limit + 1 - len(out))
    except zlib.error as exc:
        raise FetchError(str(exc), retryable=False, error_type="protocol") from exc
    return out
