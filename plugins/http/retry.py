"""When to try a URL again and how long to wait: retryable statuses, Retry-After, backoff.

Which transport errors are transient is decided where they are raised
(``transport.as_fetch_error``); this module knows only HTTP.
"""

from __future__ import annotations

import email.utils
import random
from datetime import datetime, timezone
from http import HTTPStatus

from any2ds import FetchError

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Statuses saying the server is overloaded: the host is slowed down for every request (hosts.py).
OVERLOAD_STATUSES = frozenset({429, 503})


class HTTPStatusError(FetchError):
    """An HTTP error status; carries the HTTP status and the server's ``Retry-After`` delay in seconds, if any."""

    def __init__(self, message: str, *, http_status: int, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.http_status = http_status
        self.retry_after = retry_after

    @property
    def slows_host(self) -> bool:
        """Whether the answer asks every client to slow down: a 429, a 503, or a ``Retry-After``."""
        return self.http_status in OVERLOAD_STATUSES or self.retry_after is not None


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


def status_error(status: int, reason: str | None, retry_after: str | None) -> HTTPStatusError:
    """img2dataset's ``HTTP Error 404: Not Found``, with the server's reason phrase if it sent one."""
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    # A 3xx that is an error is a redirect without a Location (urllib's "HTTP Error 302: Found").
    kind = ("redirect" if status < 400 else "rate_limited" if status == 429 else "http_4xx" if status < 500
            else "http_5xx")
    return HTTPStatusError(f"HTTP Error {status}: {reason}", retryable=status in RETRYABLE_STATUSES,
                           error_type=kind, http_status=status, retry_after=parse_retry_after(retry_after))


def unsent(message: str) -> str:
    """img2dataset's (urllib's) wording of a failure before a request went out: resolving the
    host, connecting, the TLS handshake, sending (``<urlopen error [Errno 111] Connection refused>``)."""
    return f"<urlopen error {message}>"


def too_many_redirects(status: int, reason: str | None) -> FetchError:
    """img2dataset's (urllib's) message for a redirect loop or too long a chain: the code and
    reason of the last redirect. Its newlines become spaces, as in every failure message."""
    return FetchError(f"HTTP Error {status}: The HTTP server returned a redirect error that would lead to an "
                      f"infinite loop.\nThe last 30x error message was:\n{reason or HTTPStatus(status).phrase}",
                      retryable=False, error_type="redirect")


def retry_delay(error: FetchError, failed_attempts: int, backoff: float, longest: float) -> float:
    """Seconds before the next attempt: the server's Retry-After if it sent one, else
    exponential backoff from ``backoff`` seconds, jittered; at most ``longest``."""
    delay = error.retry_after if isinstance(error, HTTPStatusError) else None
    if delay is None:
        delay = backoff * 2 ** (failed_attempts - 1) * random.uniform(0.5, 1.0)
    return min(delay, longest)
