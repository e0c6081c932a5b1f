"""The built-in HTTP(S) fetcher: img2dataset's request behaviour, with the holes fixed.

Compared with img2dataset's ``urlopen`` (reference §6) this fetcher keeps
connections alive per thread, enforces ``timeout`` as a *total* deadline per
attempt (a server trickling bytes is cut off), caps body size and redirects,
and retries only transient failures, with backoff and ``Retry-After``. The
user agent, the X-Robots-Tag rules and the error messages stay img2dataset's
so that metadata and statistics remain comparable.

URL lists come from the web, so by default no request reaches loopback,
private, link-local or cloud-metadata addresses: every connection resolves
its host itself, checks the addresses and connects only to an allowed one
(docs/security.md).
"""

from __future__ import annotations

import email.utils
import math
import random
import socket
import threading
import time
import warnings
from concurrent.futures import Future
from contextvars import ContextVar
from datetime import datetime, timezone
from http import HTTPStatus
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Optional
from urllib.parse import urljoin, urlsplit

import attrs
import requests
import urllib3
from attrs import validators as v
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from any2ds.components import Fetcher, option
from any2ds.errors import FetchError
from any2ds.hookspecs import hookimpl
from any2ds.types import FetchResult, Sample

BASE_USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

_CHUNK = 64 * 1024
# Error and redirect bodies up to this size are read so their connection can be reused.
_DRAIN_LIMIT = 64 * 1024
# Hosts whose idle connection each thread keeps; bounds idle sockets to threads x this.
_HOSTS_PER_THREAD = 2
# Seconds past an attempt's deadline after which its sockets are shut down. Socket timeouts
# normally end a stalled read at the deadline itself; the reaper ends reads that keep receiving.
REAPER_GRACE = 1.0

IPAddress = IPv4Address | IPv6Address
ALLOW_PRIVATE = "allow_private_networks"
ALLOW_LINK_LOCAL = "allow_link_local"
# Cloud metadata endpoints outside 169.254.0.0/16 (which is link-local, so blocked as a whole).
METADATA_ADDRESSES = frozenset(ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean...
    "fd00:ec2::254",  # AWS over IPv6 (inside fc00::/7)
    "100.100.100.200",  # Alibaba Cloud (inside 100.64.0.0/10)
    "168.63.129.16",  # Azure WireServer (a public address, reachable only from inside Azure)
))
PRIVATE_NETWORKS = tuple(ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
NAT64_NETWORK = ip_network("64:ff9b::/96")


def user_agent(token: str | None) -> str:
    """img2dataset's exact User-Agent, naming ``token`` (already normalised) when given."""
    if not token:
        return BASE_USER_AGENT
    return f"{BASE_USER_AGENT} (compatible; {token}; +https://github.com/rom1504/img2dataset)"


def robots_refused(values: list[str], token: str | None, disallowed: frozenset[str]) -> bool:
    """Whether X-Robots-Tag header ``values`` forbid use, by img2dataset's rule.

    Each value is ``[ua_token:] directive, directive...``; it applies when it
    names no token or names ``token``, and refuses when any of its directives
    is in ``disallowed``.
    """
    for value in values:
        head, sep, tail = value.partition(":")
        value_token = head.strip().lower() if sep else None
        directives = (tail if sep else head).split(",")
        if value_token is not None and value_token != token:
            continue
        if any(d.strip().lower() in disallowed for d in directives):
            return True
    return False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def root_message(exc: BaseException) -> str:
    """The innermost cause's message (``[Errno 111] Connection refused``), not urllib3's nested repr."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else None
        inner = inner or exc.__cause__ or next((a for a in exc.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        exc = inner
    return str(exc) or type(exc).__name__


def as_fetch_error(exc: Exception) -> FetchError:
    """Classify a requests/urllib3/socket exception: timeouts and connection trouble are retryable."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.ReadTimeoutError)):
        return FetchError("timed out", retryable=True, error_type="Timeout")
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        return FetchError(root_message(exc), retryable=False, error_type="SSLError")
    if isinstance(exc, requests.RequestException):  # every requests error is an OSError: sort them first
        transient = isinstance(exc, requests.ConnectionError)
    else:
        transient = isinstance(exc, (urllib3.exceptions.ProtocolError, OSError))
    if transient:
        return FetchError(root_message(exc), retryable=True, error_type="ConnectionError")
    return FetchError(root_message(exc), retryable=False, error_type=type(exc).__name__)


class HTTPStatusError(FetchError):
    """An HTTP error status; carries the server's ``Retry-After`` delay in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


def status_error(response: requests.Response) -> HTTPStatusError:
    """img2dataset's ``HTTP Error 404: Not Found``, with the server's reason phrase."""
    status = response.status_code
    reason = response.reason
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return HTTPStatusError(f"HTTP Error {status}: {reason}", retryable=status in RETRYABLE_STATUSES,
                           error_type="HTTPError",
                           retry_after=parse_retry_after(response.headers.get("Retry-After")))


# -- where requests may go ---------------------------------------------------


class BlockedAddress(FetchError):
    """A URL whose host is, or resolves to, an address the run does not allow; never retried."""


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped ``::ffff:a.b.c.d``, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_NETWORK:
        return IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def address_kind(ip: IPAddress) -> tuple[str, str] | None:
    """What non-public kind of address ``ip`` is and the option allowing it; None for a public one."""
    if isinstance(ip, IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return address_kind(embedded)
        ip = ip_address(str(ip).split("%")[0])  # a zone (fe80::1%eth0) names no other address
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address", ALLOW_LINK_LOCAL
    if ip.is_link_local:
        return "a link-local address", ALLOW_LINK_LOCAL
    if ip.is_loopback:
        return "a loopback address", ALLOW_PRIVATE
    if ip.is_unspecified:
        return "an unspecified address", ALLOW_PRIVATE
    if ip.is_multicast:
        return "a multicast address", ALLOW_PRIVATE
    if any(ip in network for network in PRIVATE_NETWORKS):
        return "a private network address", ALLOW_PRIVATE
    if ip.is_reserved or not ip.is_global:
        return "a reserved or special-purpose address", ALLOW_PRIVATE
    return None


@attrs.frozen
class AddressPolicy:
    """Which non-public addresses requests may connect to (public ones always)."""

    allow_private_networks: bool = False
    allow_link_local: bool = False

    @property
    def allows_everything(self) -> bool:
        return self.allow_private_networks and self.allow_link_local

    def refusal(self, address: str) -> BlockedAddress | None:
        """The error for connecting to ``address`` (an IP), or None when it is allowed."""
        kind = address_kind(ip_address(address))
        if kind is None:
            return None
        description, option = kind
        if getattr(self, option):
            return None
        return BlockedAddress(f"blocked: {address} is {description} (set {option} to allow)")


def resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """``getaddrinfo`` within ``timeout`` seconds, which it cannot do itself.

    IP literals (including ``2130706433`` and ``0x7f.0.0.1``) are parsed at
    once; names are resolved on a helper thread, abandoned if it overruns
    (it ends when the resolver gives up). Raises TimeoutError on overrun.
    """
    host = host.strip("[]")
    family = allowed_gai_family()
    try:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    answer: Future[list[tuple]] = Future()

    def lookup() -> None:
        try:
            answer.set_result(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting thread
            answer.set_exception(exc)

    threading.Thread(target=lookup, name="any2ds-dns", daemon=True).start()
    return answer.result(timeout)


class Attempt:
    """One fetch attempt as its connections see it (through ``_CURRENT_ATTEMPT``).

    requests cannot hand an absolute deadline or an address policy down to
    the socket layer, so the attempt carries them: its connections resolve,
    check and connect within the deadline, and record the sockets they use
    so the reaper can shut them down if the attempt overruns. (A TLS
    handshake needs no reaper: Python bounds it as a whole by the socket
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
        return FetchError(f"timed out (total deadline of {self.timeout} s)", retryable=True, error_type="Timeout")

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


_CURRENT_ATTEMPT: ContextVar[Attempt] = ContextVar("any2ds_http_attempt")


class DeadlineReaper:
    """A thread shutting down the sockets of attempts still running past their deadline.

    Socket timeouts bound each read, not their sum: a server trickling its
    headers a byte at a time outlives any of them. A
    socket shut down from another thread wakes the read blocked on it,
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


class _GuardedConnection:
    """Mixin for urllib3 connections: connect and read within the current attempt's policy and deadline.

    The host is resolved here and the socket connected to a checked address,
    so no DNS trick (a public name for 127.0.0.1, rebinding between check
    and connect) reaches a blocked one; Host, SNI and certificate checks
    still use the hostname.
    """

    def _new_conn(self) -> socket.socket:
        try:
            return _CURRENT_ATTEMPT.get().connect(self._dns_host, self.port, self.source_address,
                                                  self.socket_options)
        except socket.gaierror as exc:  # the errors urllib3's own _new_conn raises
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc

    def getresponse(self):
        """Read the headers with the socket timeout cut to the time left (a reused socket is watched too)."""
        attempt = _CURRENT_ATTEMPT.get()
        attempt.use(self.sock)
        self.timeout = attempt.remaining()
        return super().getresponse()


class _GuardedHTTPConnection(_GuardedConnection, urllib3.connection.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnection, urllib3.connection.HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    """Direct connections go through the guarded pools; through a proxy, the target host is checked.

    The proxy itself is trusted (the user configured it). It resolves the
    target on its own, so for proxied requests the check is of this
    machine's resolution of the name, made just before the request.
    """

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPConnectionPool,
                                                   "https": _GuardedHTTPSConnectionPool}

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        if select_proxy(request.url, proxies):
            target = urlsplit(request.url)
            _CURRENT_ATTEMPT.get().check_host(target.hostname, target.port or (443 if target.scheme == "https" else 80))
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)


class HttpFetcher(Fetcher):
    """GETs http(s) URLs with ``requests``: one keep-alive session per thread.

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
    ``BlockedAddress``, never retried. Through a proxy (``http_proxy``...)
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

    def __init__(self, options: HttpFetcher.Options) -> None:
        super().__init__(options)
        self.token = (options.user_agent_token or "").strip().lower() or None
        self.user_agent = user_agent(self.token)
        directives = options.disallowed_header_directives
        if directives is None:
            directives = DEFAULT_DISALLOWED_DIRECTIVES
        self.disallowed = frozenset(d.strip().lower() for d in directives)
        if options.ignore_ssl_certificate:
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self.policy = AddressPolicy(options.allow_private_networks, options.allow_link_local)
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
        session = requests.Session()
        session.headers["User-Agent"] = self.user_agent
        adapter = _GuardedAdapter(pool_connections=_HOSTS_PER_THREAD, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # A no-op auth stops requests from reading ~/.netrc on every request
        # (about 9% of a worker's CPU); proxy variables are still honoured.
        session.auth = _no_auth
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
                time.sleep(self._retry_delay(error, number))
            number += 1

    def _retry_delay(self, error: FetchError, attempt: int) -> float:
        """The server's Retry-After if it sent one, else jittered exponential backoff; capped."""
        delay = error.retry_after if isinstance(error, HTTPStatusError) else None
        if delay is None:
            delay = self.options.retry_backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        return min(delay, self.options.max_retry_after)

    def _attempt(self, url: str, number: int) -> FetchResult:
        """One attempt: request, follow redirects, check, read the body; all before one deadline."""
        session = self._session()
        session.cookies.clear()  # cookies live for one attempt's redirect chain, not the thread
        attempt = Attempt(self.options.timeout, self.policy)
        current = _CURRENT_ATTEMPT.set(attempt)
        response: requests.Response | None = None
        try:
            self._reaper.watch(attempt)
            response = self._request(session, url, attempt)
            redirects = 0
            while response.is_redirect:
                if redirects == self.options.max_redirects:
                    raise FetchError(f"Exceeded {self.options.max_redirects} redirects.",
                                     error_type="TooManyRedirects")
                url = self._redirect_target(session, response)
                self._discard(response, attempt)
                redirects += 1
                response = self._request(session, url, attempt)
            self._check(response, attempt)
            body = self._read_body(response, attempt, self.options.max_body_bytes)
            if attempt.expired:  # the reaper cut the body short
                raise attempt.deadline_error()
            response.raw.release_conn()
            return FetchResult(body=body, url=response.url, content_type=response.headers.get("Content-Type"),
                               headers=dict(response.headers), attempts=number)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if attempt.expired:
                raise attempt.deadline_error() from exc
            raise as_fetch_error(exc) from exc
        finally:
            self._reaper.unwatch(attempt)
            _CURRENT_ATTEMPT.reset(current)
            if response is not None:
                response.close()  # closes the connection unless it was released above

    def _request(self, session: requests.Session, url: str, attempt: Attempt) -> requests.Response:
        """Send a GET and read the headers, with connect and read timeouts bounded by the deadline."""
        remaining = attempt.remaining()
        # verify per request: a session-level False loses to REQUESTS_CA_BUNDLE in the environment.
        return session.get(url, stream=True, allow_redirects=False, timeout=(remaining, remaining),
                           verify=not self.options.ignore_ssl_certificate)

    def _redirect_target(self, session: requests.Session, response: requests.Response) -> str:
        """The absolute URL a redirect points to; only http(s) targets are followed."""
        target = urljoin(response.url, session.get_redirect_target(response))
        scheme = urlsplit(target).scheme.lower()
        if scheme not in self.schemes:
            raise FetchError(f"redirect to unsupported URL scheme {scheme!r}", error_type="UnsupportedRedirect")
        return target

    def _check(self, response: requests.Response, attempt: Attempt) -> None:
        """Refuse error statuses, X-Robots-Tag refusals and oversized bodies before reading the body."""
        if response.status_code >= 400:
            error = status_error(response)
            self._discard(response, attempt)
            raise error
        if self.disallowed and robots_refused(response.raw.headers.getlist("X-Robots-Tag"), self.token,
                                              self.disallowed):
            raise FetchError("Use of image disallowed by X-Robots-Tag directive", retryable=False,
                             error_type="XRobotsTagRefusal")
        length = _content_length(response)
        if length is not None and length > self.options.max_body_bytes:
            raise self._too_large()

    def _read_body(self, response: requests.Response, attempt: Attempt, limit: int) -> bytes:
        """The decoded body, at most ``limit`` bytes, read before ``deadline``.

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
                raise self._too_large()
            chunks.append(chunk)

    def _discard(self, response: requests.Response, attempt: Attempt) -> None:
        """Drop a redirect's or error's body, keeping the connection when the body is small."""
        length = _content_length(response)
        if length is None or length > _DRAIN_LIMIT:
            response.close()
            return
        try:
            self._read_body(response, attempt, _DRAIN_LIMIT)
        except (FetchError, urllib3.exceptions.HTTPError, OSError):
            response.close()
        else:
            response.raw.release_conn()

    def _too_large(self) -> FetchError:
        return FetchError(f"body larger than {self.options.max_body_bytes} bytes", retryable=False,
                          error_type="BodyTooLarge")


def _content_length(response: requests.Response) -> int | None:
    """The Content-Length header as an int, or None when absent or malformed."""
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Leaves requests unauthenticated (see HttpFetcher._session)."""
    return request


@hookimpl
def any2ds_register_fetchers(register):
    register(HttpFetcher)
