"""The built-in HTTP(S) fetcher: img2dataset's request behaviour, with the holes fixed.

Compared with img2dataset's ``urlopen`` (reference §6) this fetcher keeps
connections alive per thread, enforces ``timeout`` as a *total* deadline per
attempt (a server trickling bytes is cut off), caps body size and redirects,
and retries only transient failures, with backoff and ``Retry-After``. The
user agent, the X-Robots-Tag rules and the error messages stay img2dataset's
so that metadata and statistics remain comparable.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
import warnings
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Optional
from urllib.parse import urljoin, urlsplit

import attrs
import requests
import urllib3
from attrs import validators as v
from requests.adapters import HTTPAdapter

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


class HttpFetcher(Fetcher):
    """GETs http(s) URLs with ``requests``: one keep-alive session per thread.

    ``timeout`` bounds each attempt as a whole: connecting, every redirect hop
    and the body share one deadline. Two waits escape it: DNS resolution
    (``getaddrinfo`` takes no timeout) and a server sending its *headers*
    byte by byte (each read is bounded, not their sum).
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
        adapter = HTTPAdapter(pool_connections=_HOSTS_PER_THREAD, pool_maxsize=1, max_retries=0)
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

    # -- fetching ----------------------------------------------------------

    def fetch(self, sample: Sample) -> FetchResult:
        """Attempt until success, a permanent failure, or ``retries`` extra attempts are spent."""
        attempt = 1
        while True:
            try:
                return self._attempt(sample.url.strip(), attempt)
            except FetchError as error:
                if not error.retryable or attempt > self.options.retries:
                    raise
                time.sleep(self._retry_delay(error, attempt))
            attempt += 1

    def _retry_delay(self, error: FetchError, attempt: int) -> float:
        """The server's Retry-After if it sent one, else jittered exponential backoff; capped."""
        delay = error.retry_after if isinstance(error, HTTPStatusError) else None
        if delay is None:
            delay = self.options.retry_backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        return min(delay, self.options.max_retry_after)

    def _attempt(self, url: str, attempt: int) -> FetchResult:
        """One attempt: request, follow redirects, check, read the body; all before one deadline."""
        session = self._session()
        session.cookies.clear()  # cookies live for one attempt's redirect chain, not the thread
        deadline = time.monotonic() + self.options.timeout
        response: requests.Response | None = None
        try:
            response = self._request(session, url, deadline)
            redirects = 0
            while response.is_redirect:
                if redirects == self.options.max_redirects:
                    raise FetchError(f"Exceeded {self.options.max_redirects} redirects.",
                                     error_type="TooManyRedirects")
                url = self._redirect_target(session, response)
                self._discard(response, deadline)
                redirects += 1
                response = self._request(session, url, deadline)
            self._check(response, deadline)
            body = self._read_body(response, deadline, self.options.max_body_bytes)
            response.raw.release_conn()
            return FetchResult(body=body, url=response.url, content_type=response.headers.get("Content-Type"),
                               headers=dict(response.headers), attempts=attempt)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise as_fetch_error(exc) from exc
        finally:
            if response is not None:
                response.close()  # closes the connection unless it was released above

    def _request(self, session: requests.Session, url: str, deadline: float) -> requests.Response:
        """Send a GET and read the headers, with connect and read timeouts bounded by the deadline."""
        remaining = self._remaining(deadline)
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

    def _check(self, response: requests.Response, deadline: float) -> None:
        """Refuse error statuses, X-Robots-Tag refusals and oversized bodies before reading the body."""
        if response.status_code >= 400:
            error = status_error(response)
            self._discard(response, deadline)
            raise error
        if self.disallowed and robots_refused(response.raw.headers.getlist("X-Robots-Tag"), self.token,
                                              self.disallowed):
            raise FetchError("Use of image disallowed by X-Robots-Tag directive", retryable=False,
                             error_type="XRobotsTagRefusal")
        length = _content_length(response)
        if length is not None and length > self.options.max_body_bytes:
            raise self._too_large()

    def _read_body(self, response: requests.Response, deadline: float, limit: int) -> bytes:
        """The decoded body, at most ``limit`` bytes, read before ``deadline``.

        ``read1`` returns as soon as any bytes arrive, so the deadline is
        checked however slowly the server sends; the socket timeout is cut
        to the time left, so a stalled read cannot outlive it either.
        """
        raw = response.raw
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = self._remaining(deadline)
            settimeout = getattr(getattr(raw.connection, "sock", None), "settimeout", None)
            if settimeout is not None:
                settimeout(remaining)
            try:
                chunk = raw.read1(_CHUNK, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError:
                if size:  # the server was sending, just too slowly
                    raise self._deadline_error() from None
                raise
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)

    def _discard(self, response: requests.Response, deadline: float) -> None:
        """Drop a redirect's or error's body, keeping the connection when the body is small."""
        length = _content_length(response)
        if length is None or length > _DRAIN_LIMIT:
            response.close()
            return
        try:
            self._read_body(response, deadline, _DRAIN_LIMIT)
        except (FetchError, urllib3.exceptions.HTTPError, OSError):
            response.close()
        else:
            response.raw.release_conn()

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_error()
        return remaining

    def _deadline_error(self) -> FetchError:
        return FetchError(f"timed out (total deadline of {self.options.timeout} s)", retryable=True,
                          error_type="Timeout")

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
