"""What both http fetchers share and the main process needs of them: their options, and what
they derive from them (user agent, X-Robots-Tag directives, address policy, per-host limits,
robots.txt). Neither requests nor libcurl is imported here."""

from __future__ import annotations

from collections.abc import Collection
from typing import Optional
from urllib.parse import SplitResult, urljoin, urlsplit

import attrs
from attrs import validators as v

from any2ds import FetchError, Fetcher, at_least, between, option
from any2ds_plugins.http.addresses import AddressPolicy
from any2ds_plugins.http.hosts import MAX_CONNECTIONS_PER_HOST, HostLimits, host_key, shared_table, state_directory
from any2ds_plugins.http.retry import HTTPStatusError, retry_delay
from any2ds_plugins.http.robots import DEFAULT_DISALLOWED_DIRECTIVES, user_agent
from any2ds_plugins.http.robots_txt import RobotsTxt

# Error and redirect bodies up to this size are read so their connection can be reused.
DRAIN_LIMIT = 64 * 1024


def split_url(url: str) -> SplitResult:
    """``urlsplit(url)``; a URL it refuses, or whose port is out of range or not a number, fails
    as requests fails it (``invalid_url``), before robots.txt and the host's turn look at it."""
    try:
        parts = urlsplit(url)
        parts.port  # raises on a bad port
    except ValueError:
        raise FetchError(f"Failed to parse: {url}", retryable=False, error_type="invalid_url") from None
    return parts


def redirect_target(url: str, location: str, schemes: Collection[str]) -> str:
    """The absolute URL a redirect from ``url`` to ``location`` points to. A target that does not
    parse, or whose scheme is not one of ``schemes``, fails the attempt (``redirect``)."""
    try:
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
    except ValueError as exc:  # unbalanced brackets, a bracketed host that is no IP address
        raise FetchError(f"redirect to an invalid URL {location!r}: {exc}", error_type="redirect") from None
    if scheme not in schemes:
        raise FetchError(f"redirect to unsupported URL scheme {scheme!r}", error_type="redirect")
    return target


@attrs.frozen
class HttpOptions:
    """The options of both http fetchers (``http``, ``fast_http``): img2dataset's and any2ds's own."""

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


class SiteManners(Fetcher):
    """What both http fetchers (``http``, ``fast_http``) derive from their options, the same
    way: the user agent and its token, the X-Robots-Tag directives refused, the address policy,
    the per-host limits (shared by the machine's processes) and robots.txt."""

    def __init__(self, options: HttpOptions) -> None:
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
