"""What one worker process may hold at once: bytes of fetched bodies and of results waiting to be written."""

from __future__ import annotations


class ByteBudget:
    """Bytes a worker holds of its samples: a body from the end of its fetch to the end of its
    processing, then its result's media until the result is written.

    A body that has arrived is already in memory, so it is always counted;
    the budget bounds memory by admission instead: while it is :attr:`full`,
    the worker starts no new fetch. A worker therefore holds at most
    ``capacity`` bytes of waiting bodies plus the bodies of the fetches in
    flight when it filled up. Only the shard's coordinating thread uses it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0

    @property
    def full(self) -> bool:
        return self.held >= self.capacity

    def add(self, size: int) -> None:
        self.held += size
        self.peak = max(self.peak, self.held)

    def release(self, size: int) -> None:
        self.held -= size
