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
from typing import TYPE_CHECKING

from any2ds import FetchError, FetchResult, Sample
from any2ds_plugins.http.manners import HttpOptions, SiteManners, split_url
from any2ds_plugins.http.retry import retry_delay

if TYPE_CHECKING:
    from any2ds_plugins.http.requests_client import RequestsClient


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
    Options = HttpOptions

    def __init__(self, options: HttpOptions) -> None:
        super().__init__(options)
        self._client: RequestsClient | None = None
        self._client_lock = threading.Lock()

    def _requests(self) -> RequestsClient:
        """The sessions and attempts, built on the first fetch: requests (7 MB, 50 ms to import) loads
        only in the processes that fetch with this fetcher, not in the main process."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    from any2ds_plugins.http.requests_client import RequestsClient
                    self._client = RequestsClient(self)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def fetch(self, sample: Sample) -> FetchResult:
        """Attempt until success, a permanent failure, or ``retries`` extra attempts are spent."""
        url = sample.url.strip()
        split_url(url)
        number = 1
        while True:
            try:
                return self._requests().attempt(url, number)
            except FetchError as error:
                if not error.retryable or number > self.options.retries:
                    raise
                time.sleep(retry_delay(error, number, self.options.retry_backoff, self.options.max_retry_after))
            number += 1
