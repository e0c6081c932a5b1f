"""The per-sample watchdog: no plugin can hold a shard for ever.

A sample's fetch and its processing are each a stage; a stage still running
``timeout`` seconds after it began (on its thread or coroutine, not while it
waited for one) is overdue: the coordinator records the sample as failed and
gives up on the stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Timed(Protocol):
    started: float | None  # time.monotonic() when the current stage began to run; None while it waits


class Watchdog:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def wait(self, jobs: Iterable[Timed], now: float) -> float:
        """Seconds until the first running stage is overdue (at most ``timeout``, at least 50 ms)."""
        started = [job.started for job in jobs if job.started is not None]
        if not started:
            return self.timeout
        return min(max(min(started) + self.timeout - now, 0.05), self.timeout)

    def overdue(self, jobs: Iterable[Timed], now: float) -> list:
        """The jobs whose running stage began more than ``timeout`` seconds before ``now``."""
        return [job for job in jobs if job.started is not None and now - job.started > self.timeout]
