"""requests sessions whose every connection obeys the current attempt's address policy and deadline,
and reads responses strictly framed (``framing``).

Also the classification of what requests, urllib3 and sockets raise into
the fetcher's errors: timeouts and connection trouble are transient.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from http.client import BadStatusLine, HTTPException, LineTooLong, RemoteDisconnected, UnknownProtocol
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from any2ds import FetchError
from any2ds_plugins.http.deadline import CURRENT_ATTEMPT
from any2ds_plugins.http.framing import FramedResponse, UnframedResponse
from any2ds_plugins.http.hosts import port_of
from any2ds_plugins.http.retry import unsent

# Hosts whose idle connection each thread keeps; bounds idle sockets to threads x this.
HOSTS_PER_THREAD = 2


class StaleConnection(ConnectionResetError):
    """A kept-alive connection the server closed before answering: the request can go again on a new one."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (causes, urllib3's reasons, exceptions in args), outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        inner = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else None
        exc = inner or exc.__cause__ or next((a for a in exc.args if isinstance(a, BaseException)), None)


def root_message(exc: BaseException) -> str:
    """The innermost cause's message (``[Errno 111] Connection refused``), not urllib3's nested repr."""
    *_, root = causes(exc)
    return str(root) or type(root).__name__


def is_stale_connection(exc: BaseException) -> bool:
    return any(isinstance(cause, StaleConnection) for cause in causes(exc))


# requests' and urllib3's ways of saying the URL itself is wrong.
_INVALID_URL = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                requests.exceptions.URLRequired, urllib3.exceptions.LocationParseError)


def as_fetch_error(exc: Exception) -> FetchError:
    """Classify a requests/urllib3/socket exception into the core's error types: timeouts,
    resolver and connection trouble are retryable; an answer that does not frame cleanly is
    ``protocol``, not retried."""
    chain = list(causes(exc))
    unframed = next((cause for cause in chain if isinstance(cause, UnframedResponse)), None)
    if unframed is not None:
        return FetchError(str(unframed), retryable=False, error_type="protocol")
    # An answer that is not HTTP at all (img2dataset's message: the line, as http.client quotes
    # it), or a head http.client refuses otherwise (see _refused_head): the server would send it
    # again. A kept-alive connection closed unanswered (RemoteDisconnected) is a connection failure.
    if any(_refused_head(cause) for cause in chain):
        return FetchError(root_message(exc), retryable=False, error_type="protocol")
    if any(isinstance(cause, (NameResolutionError, socket.gaierror)) for cause in chain):
        return FetchError(unsent(root_message(exc)), retryable=True, error_type="dns")
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.ReadTimeoutError)):
        connecting = any(isinstance(cause, ConnectTimeoutError) for cause in chain)
        return FetchError(unsent("timed out") if connecting else "timed out", retryable=True, error_type="timeout")
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):  # the handshake
        return FetchError(unsent(root_message(exc)), retryable=False, error_type="tls")
    if isinstance(exc, requests.RequestException):  # every requests error is an OSError: sort them first
        transient = isinstance(exc, requests.ConnectionError)
    else:
        transient = isinstance(exc, (urllib3.exceptions.ProtocolError, OSError))
    if transient:
        message = root_message(exc)
        if any(isinstance(cause, NewConnectionError) for cause in chain):
            message = unsent(message)
        return FetchError(message, retryable=True, error_type="connect")
    kind = "invalid_url" if isinstance(exc, _INVALID_URL) else "protocol"
    return FetchError(root_message(exc), retryable=False, error_type=kind)


def _refused_head(cause: BaseException) -> bool:
    """Whether http.client refused a response head: its status line or HTTP version, a line too
    long, or more headers than it reads (a bare HTTPException; its subclass IncompleteRead is a
    short body)."""
    if isinstance(cause, BadStatusLine):
        return not isinstance(cause, RemoteDisconnected)
    return isinstance(cause, (LineTooLong, UnknownProtocol)) or type(cause) is HTTPException


def guarded_session(user_agent: str) -> requests.Session:
    """A session whose connections go through the guarded pools, keeping one idle connection per host."""
    session = _ClientRedirectsSession()
    session.headers["User-Agent"] = user_agent
    adapter = _GuardedAdapter(pool_connections=HOSTS_PER_THREAD, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # A no-op auth stops requests from reading ~/.netrc on every request
    # (about 9% of a worker's CPU); proxy variables are still honoured.
    session.auth = _no_auth
    return session


class _ClientRedirectsSession(requests.Session):
    """A session whose redirects its client follows itself, each hop checked. requests, even told
    not to follow them, works out the next hop of a redirect (for ``Response.next``), and for that
    read the redirect's whole body, however large (our drain stops at DRAIN_LIMIT), and raised a
    bare ValueError on a Location that does not parse. That look-ahead is skipped."""

    def resolve_redirects(self, *_args, **_kwargs):
        return iter(())


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Leaves requests unauthenticated (see guarded_session)."""
    return request


class _GuardedConnection:
    """Mixin for urllib3 connections: connect and read within the current attempt's policy and deadline.

    The host is resolved here and the socket connected to a checked address,
    so no DNS trick (a public name for 127.0.0.1, rebinding between check
    and connect) reaches a blocked one; Host, SNI and certificate checks
    still use the hostname. Responses are ``FramedResponse``s.
    """

    response_class = FramedResponse
    # Whether a response already came over the current socket, i.e. the server may have closed it since.
    _reused = False

    def _new_conn(self) -> socket.socket:
        self._reused = False
        try:
            return CURRENT_ATTEMPT.get().connect(self._dns_host, self.port, self.source_address,
                                                 self.socket_options)
        except socket.gaierror as exc:  # the errors urllib3's own _new_conn raises
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc

    def getresponse(self):
        """Read the headers with the socket timeout cut to the time left (a reused socket is watched too)."""
        attempt = CURRENT_ATTEMPT.get()
        attempt.use(self.sock)
        self.timeout = attempt.remaining()
        try:
            response = super().getresponse()
        except ConnectionResetError as exc:  # a reset, or the connection closed without a status line
            if self._reused:
                raise StaleConnection(str(exc)) from exc
            raise
        self._reused = True
        return response


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
            CURRENT_ATTEMPT.get().check_host(target.hostname, port_of(target))
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
