"""Results in the order their samples came in, from a flow that completes them in any order."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from any2ds.types import Sample, SampleResult
from any2ds.worker import SampleFlow


class InputOrder:
    """Yields a :class:`~any2ds.worker.SampleFlow`'s results in the order of its samples.

    ``position(sample)`` is the sample's place in the input: 0, 1, 2, ... in
    the order the samples come. A result that completes before an earlier one
    waits here, within two bounds: the flow starts no sample more than
    ``window`` places after the earliest one not yet given out (which is
    therefore always in flight, so the wait ends), and the media bytes of
    waiting results count in the flow's byte budget (no new fetch starts while
    they and the fetched bodies exceed ``max_bytes_in_flight``).
    """

    def __init__(self, flow: SampleFlow, window: int, position: Callable[[Sample], int]) -> None:
        self.flow = flow
        self.window = window
        self.position = position

    def results(self, samples: Iterator[Sample]) -> Iterator[SampleResult]:
        started = 0
        released = 0  # the position of the next result to give out
        waiting: dict[int, tuple[SampleResult, int]] = {}

        def counted() -> Iterator[Sample]:
            nonlocal started
            for sample in samples:
                started += 1
                yield sample

        completed = self.flow.results(counted(), admit=lambda: started - released < self.window)
        try:
            for result in completed:
                size = sum(len(media.data) for media in result.media.values())
                self.flow.budget.add(size)
                waiting[self.position(result.sample)] = result, size
                while released in waiting:
                    result, size = waiting.pop(released)
                    self.flow.budget.release(size)
                    released += 1
                    yield result
        finally:
            completed.close()  # stopped early: the flow cancels what it still runs
        if waiting:
            raise RuntimeError(f"results of positions {sorted(waiting)[:5]} came without those before them "
                               f"(position {released} never completed)")
