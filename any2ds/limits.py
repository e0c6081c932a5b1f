"""Bounds on what one worker process holds at once: CPU slots and body bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ByteBudget:
    """At most ``capacity`` bytes reserved at a time; reservations beyond it wait.

    A single reservation larger than the whole budget waits until nothing else
    is reserved, then goes ahead alone, so an oversized body is slow, never stuck.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserved = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.reserved == 0 or self.reserved + size <= self.capacity)
            self.reserved += size
        try:
            yield
        finally:
            with self._changed:
                self.reserved -= size
                self._changed.notify_all()


class WorkerLimits:
    """The CPU slots and body budget shared by a worker's threads.

    Bodies are counted from the end of their fetch to the end of their
    processing; a thread waiting here fetches nothing more, so a worker holds
    at most ``body_bytes`` of waiting bodies plus one body per fetch thread.
    """

    def __init__(self, cpu_threads: int, body_bytes: int) -> None:
        self.cpu_slots = threading.BoundedSemaphore(cpu_threads)
        self.body_budget = ByteBudget(body_bytes)
