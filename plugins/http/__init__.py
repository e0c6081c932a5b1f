"""The built-in ``http`` fetcher, one module per concern.

- ``addresses``: which IP addresses requests may reach, and resolution within a deadline;
- ``deadline``: the total deadline of an attempt and the reaper thread enforcing it;
- ``robots``: img2dataset's User-Agent and X-Robots-Tag rules;
- ``hosts``: limits per host shared by the machine's processes: connection slots, pacing, back-off;
- ``robots_txt``: robots.txt, fetched once per site per machine and matched with protego;
- ``retry``: retryable statuses, Retry-After and backoff;
- ``framing``: http.client responses matched strictly to their request on a kept-alive connection;
- ``transport``: requests sessions whose connections obey the attempt's policy and deadline;
- ``manners``: the options both fetchers share, and what they derive from them (what the main
  process loads of the fetchers);
- ``fetcher``: the ``HttpFetcher`` component; ``requests_client``: its sessions and attempts on
  requests, imported on its first fetch;
- ``curl``: libcurl's multi interface run by an asyncio event loop;
- ``fast``: the ``FastHttpFetcher`` (``fast_http``): the same guarantees, on libcurl.

``addresses``, ``deadline``, ``hosts`` and ``robots_txt`` do not depend on requests, so other
fetchers can reuse them.
"""

from __future__ import annotations

from any2ds import hookimpl
from any2ds_plugins.http.fast import FastHttpFetcher
from any2ds_plugins.http.fetcher import HttpFetcher


@hookimpl
def any2ds_register_fetchers(register):
    register(HttpFetcher)
    register(FastHttpFetcher)
