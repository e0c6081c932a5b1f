"""The per-sample watchdog: no plugin can hold a shard for ever.

A sample's fetch and its processing are each a stage; a stage still running
``timeout`` seconds after it began (on its thread or coroutine, not while it
waited for one) is overdue: the coordinator records the sample as failed and
gives up on the stage.

The running stages are looked over every ``check_interval`` seconds (a tenth of
the timeout, at most one second), not at every event of the flow: a look visits
every sample in flight, hundreds of them, and events come thousands of times a
second. An overdue stage is therefore failed at most ``check_interval`` late.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

MAX_CHECK_INTERVAL = 1.0


class Timed(Protocol):
    started: float | None  # time.monotonic() when the current stage began to run; None while it waits


class Watchdog:
    def __init__(self, timeout: float, now: float) -> None:
        """``now``: time.monotonic() at the start; the first look is one interval later."""
        self.timeout = timeout
        self.check_interval = min(timeout / 10, MAX_CHECK_INTERVAL)
        self._next_check = now + self.check_interval

    def wait(self, now: float) -> float:
        """Seconds until the next look (0 if it is due)."""
        return max(self._next_check - now, 0.0)

    def overdue(self, jobs: Iterable[Timed], now: float) -> list:
        """When a look is due: the jobs whose running stage began more than ``timeout`` seconds
        before ``now``; else none."""
        if now < self._next_check:
            return []
        self._next_check = now + self.check_interval
        return [job for job in jobs if job.started is not None and now - job.started > self.timeout]
