"""Starting fetches: a blocking fetcher on a pool of threads, an async one on the worker's event loop.

Either way a fetch is a ``concurrent.futures.Future``, so the shard's
coordinator treats both alike. A thread stuck in a blocking fetch cannot be
stopped, only abandoned: when half the pool is lost that way, a fresh pool
takes over (the fetches still queued on the old one are cancelled, and the
coordinator starts them again). A stuck coroutine is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

from any2ds.components import Fetcher
from any2ds.errors import FetchError
from any2ds.types import FetchResult, Sample

T = TypeVar("T")


def is_async(fetcher: Fetcher) -> bool:
    """Whether the fetcher implements ``fetch_async`` (then it runs on the event loop)."""
    return type(fetcher).fetch_async is not Fetcher.fetch_async


class ReplaceablePool:
    """A thread pool whose threads may be abandoned to a stuck task, renewed when half are lost,
    and resized (a worker's share of the machine's cores, see :class:`~any2ds.worker.SampleFlow`).

    Thread-safe: the flows of several threads (any2ds.Pipeline calls) may share one.
    """

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.name = name
        self.abandoned = 0
        self._lock = threading.Lock()  # no task may be submitted to a pool being replaced
        self._pool = self._new()

    def _new(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        with self._lock:
            return self._pool.submit(fn)

    def resize(self, threads: int) -> None:
        """Run on ``threads`` threads from now on: tasks queued are cancelled (their submitters start
        them again, on the new threads), the running ones end on the old threads."""
        with self._lock:
            if threads == self.threads:
                return
            self.threads = threads
            old = self._renew()
        old.shutdown(wait=False, cancel_futures=True)

    def abandon(self) -> None:
        """One thread is lost to a task that will not end; renew the pool at half of them lost."""
        with self._lock:
            self.abandoned += 1
            if self.abandoned < max(1, self.threads // 2):
                return
            old = self._renew()
        old.shutdown(wait=False, cancel_futures=True)  # stuck threads are left to end on their own

    def _renew(self) -> ThreadPoolExecutor:
        """Put a new pool in place (under the lock); returns the old one."""
        old, self._pool, self.abandoned = self._pool, self._new(), 0
        return old

    def close(self) -> None:
        # Not waiting: a thread the watchdog abandoned may never return.
        with self._lock:
            self._pool.shutdown(wait=False, cancel_futures=True)


class EventLoopThread:
    """This process's event loop for async fetchers, run on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def submit(self, coroutine: Any) -> Future:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="any2ds-fetch-loop", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


class FetchStage:
    """Starts each sample's fetch with the fetcher claiming its URL's scheme.

    ``on_start(sample)`` is called where the fetch begins to run (on its
    thread, or in its coroutine), for the watchdog's clock.
    """

    def __init__(self, fetchers: Mapping[str, Fetcher], threads: int) -> None:
        self.fetchers = dict(fetchers)
        self._threads = threads
        self._pool: ReplaceablePool | None = None
        self._loop: EventLoopThread | None = None
        self._lock = threading.Lock()  # flows of several threads may start the first fetch at once

    def fetcher_for(self, url: str | None) -> Fetcher:
        if url is None or not str(url).strip():
            raise FetchError("missing url", error_type="missing")
        try:
            scheme = urlsplit(str(url).strip()).scheme.lower()
        except ValueError as exc:  # unbalanced brackets, a bracketed host that is no IP address
            raise FetchError(f"invalid URL: {exc}", error_type="invalid_url") from None
        fetcher = self.fetchers.get(scheme)
        if fetcher is None:
            enabled = ", ".join(sorted(self.fetchers)) or "none"
            raise FetchError(f"unsupported URL scheme {scheme!r} (enabled: {enabled})", error_type="unsupported")
        return fetcher

    def start(self, fetcher: Fetcher, sample: Sample, on_start: Callable[[], None]) -> Future[FetchResult]:
        if is_async(fetcher):
            if self._loop is None:
                with self._lock:
                    self._loop = self._loop or EventLoopThread()

            async def fetch() -> FetchResult:
                on_start()
                return await fetcher.fetch_async(sample)

            return self._loop.submit(fetch())
        if self._pool is None:
            with self._lock:
                self._pool = self._pool or ReplaceablePool(self._threads, "any2ds-fetch")

        def fetch_blocking() -> FetchResult:
            on_start()
            return fetcher.fetch(sample)

        return self._pool.submit(fetch_blocking)

    def abandon(self, future: Future, fetcher: Fetcher) -> None:
        """Give up on a fetch that overran: cancel a coroutine, write off a thread."""
        if not future.cancel() and not is_async(fetcher) and self._pool is not None:
            self._pool.abandon()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._loop is not None:
            self._loop.close()
