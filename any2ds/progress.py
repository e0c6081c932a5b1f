"""Live progress: sample counts from the workers to the main process, and what observers are shown.

A running shard counts its finished samples and sends what is new about twice
a second (:class:`ShardReporter`, in the worker) as a :class:`ShardProgress`,
through a channel its distributor provides (a direct call, a socket, a Ray
queue). In the main process a :class:`ProgressTracker` adds the reports up;
when a shard's outcome arrives its final counts replace what its reports said,
so a lost report, a retried shard or a distributor with no channel at all
(the counts then move a shard at a time) never leaves the totals wrong.
Every :data:`TICK_SECONDS` the run hands observers a :class:`RunProgress`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from any2ds.types import SampleResult, ShardStats

# Seconds between two reports of a running shard (at most; a report goes when a sample finishes).
REPORT_SECONDS = 0.5
# Seconds between two progress snapshots handed to observers.
TICK_SECONDS = 1.0
# Seconds of history behind samples_per_sec.
RATE_WINDOW_SECONDS = 30.0
# The DNS warning: once at least this many samples finished and this share of them failed with ``dns``.
DNS_WARNING_MIN_SAMPLES = 100
DNS_WARNING_SHARE = 0.1
DNS_DOCS = "docs/tuning.md#dns"

logger = logging.getLogger("any2ds")


@attrs.frozen
class ShardProgress:
    """What a running shard finished since its previous report: a few numbers, picklable.

    A worker sends one when the shard starts (all zero: the shard is running),
    then about every half second while samples finish. ``error_types`` counts
    the new failures by error type.
    """

    shard_id: int
    samples: int = 0
    successes: int = 0
    error_types: Mapping[str, int] = attrs.field(factory=dict)


@attrs.frozen
class RunProgress:
    """The run as it goes, handed to :meth:`any2ds.Observer.progress` about every second.

    Counts are of this run (shards done by an earlier run are not in them).
    ``rows_total`` is the number of input rows the run has to do: known from
    the start when the reader can count them (parquet footers), else the rows
    read so far, final once ``rows_total_final``; None when samples are read
    in the workers (archives: ``shards_total`` is known instead).
    ``shards_running`` is None when the distributor sends no live reports.
    ``eta`` is in seconds, None while it cannot be estimated.
    """

    elapsed: float
    samples: int
    successes: int
    error_types: Mapping[str, int]
    samples_per_sec: float
    eta: float | None
    rows_total: int | None
    rows_total_final: bool
    shards_done: int
    shards_failed: int
    shards_running: int | None
    shards_total: int | None

    @property
    def success_rate(self) -> float | None:
        """Share of finished samples that succeeded; None before the first one."""
        return self.successes / self.samples if self.samples else None

    def top_errors(self, count: int = 3) -> list[tuple[str, int]]:
        """The ``count`` most frequent error types, with their counts."""
        return Counter(self.error_types).most_common(count)


@attrs.define
class _Counts:
    samples: int = 0
    successes: int = 0
    error_types: Counter[str] = attrs.field(factory=Counter)

    def add(self, samples: int, successes: int, error_types: Mapping[str, int]) -> None:
        self.samples += samples
        self.successes += successes
        self.error_types.update(error_types)


class ShardReporter:
    """Worker side: counts one shard's finished samples, sends what is new to ``report``.

    A report goes when a sample finishes and :data:`REPORT_SECONDS` passed since
    the last one (the first finished sample is reported at once), so the cost
    per sample is a clock read and an addition. A channel that fails stops
    the reports of this shard, never the shard.
    """

    def __init__(self, shard_id: int, report: Callable[[ShardProgress], None] | None) -> None:
        self.shard_id = shard_id
        self._report = report
        self._pending = _Counts()
        self._next = 0.0
        self._send(ShardProgress(shard_id))

    def add(self, result: SampleResult) -> None:
        if self._report is None:
            return
        pending = self._pending
        pending.samples += 1
        if result.ok:
            pending.successes += 1
        elif result.error_type:
            pending.error_types[result.error_type] += 1
        now = time.monotonic()
        if now >= self._next:
            self._next = now + REPORT_SECONDS
            self._pending = _Counts()
            self._send(ShardProgress(self.shard_id, pending.samples, pending.successes, dict(pending.error_types)))

    def _send(self, update: ShardProgress) -> None:
        if self._report is None:
            return
        try:
            self._report(update)
        except Exception:  # noqa: BLE001 - progress is best effort; the outcome carries the real counts
            self._report = None


class ProgressTracker:
    """Main process: adds up reports and shard outcomes into :class:`RunProgress`. Thread-safe.

    ``live``: whether the distributor delivers workers' reports (else the
    counts move when shards finish, and how many run is unknown);
    ``rows``: whether the main process reads the input rows (not so when
    samples are read in the workers).
    """

    def __init__(self, live: bool = True, rows: bool = True) -> None:
        self.live = live
        self.rows = rows
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._done = _Counts()  # the final counts of finished shards
        self._running: dict[int, _Counts] = {}  # reported so far, per unfinished shard
        self._finished: set[int] = set()  # reports about these come late and are dropped
        self._shards_done = 0
        self._shards_failed = 0
        self._rows_read = 0
        self._shards_read = 0
        self._input_read = False
        self._rows_total: int | None = None
        self._shards_total: int | None = None
        self._history: deque[tuple[float, int]] = deque()

    # -- fed by the run and the distributor ----------------------------------------------------

    def report(self, update: ShardProgress) -> None:
        """A worker's report (called by the distributor, from any thread)."""
        with self._lock:
            if update.shard_id in self._finished:
                return
            self._running.setdefault(update.shard_id, _Counts()).add(update.samples, update.successes,
                                                                     update.error_types)

    def shard_read(self, rows: int) -> None:
        """The input gave one more shard, of ``rows`` rows (0 when its samples are read in the worker)."""
        with self._lock:
            self._shards_read += 1
            self._rows_read += rows

    def input_read(self) -> None:
        """Every shard of the run was read: what was read is the total."""
        with self._lock:
            self._input_read = True

    def set_totals(self, rows: int | None, shards: int | None) -> None:
        """The run's totals, counted before reading (parquet footers, an archive per shard)."""
        with self._lock:
            self._rows_total, self._shards_total = rows, shards

    def shard_completed(self, stats: ShardStats) -> None:
        with self._lock:
            self._running.pop(stats.shard_id, None)
            self._finished.add(stats.shard_id)
            self._done.add(stats.count, stats.successes, stats.error_types)
            self._shards_done += 1

    def shard_failed(self, shard_id: int) -> None:
        """The shard's samples are not done after all (it runs again in the next round, if any)."""
        with self._lock:
            self._running.pop(shard_id, None)
            self._shards_failed += 1

    def round_ended(self) -> None:
        """Every shard of the round has its outcome: a report still running is stale."""
        with self._lock:
            self._running.clear()

    # -- read by the run ----------------------------------------------------------------------

    def snapshot(self) -> RunProgress:
        with self._lock:
            now = time.monotonic()
            elapsed = now - self._start
            counts = _Counts(self._done.samples, self._done.successes, Counter(self._done.error_types))
            for running in self._running.values():
                counts.add(running.samples, running.successes, running.error_types)
            rate = self._rate(now, counts.samples)
            rows_final = self.rows and (self._rows_total is not None or self._input_read)
            rows_total = None if not self.rows else (
                self._rows_total if self._rows_total is not None else self._rows_read)
            shards_total = self._shards_total if self._shards_total is not None else (
                self._shards_read if self._input_read else None)
            return RunProgress(
                elapsed=elapsed, samples=counts.samples, successes=counts.successes,
                error_types=dict(counts.error_types.most_common()), samples_per_sec=rate,
                eta=self._eta(counts.samples, rate, rows_total if rows_final else None, shards_total),
                rows_total=rows_total, rows_total_final=rows_final, shards_done=self._shards_done,
                shards_failed=self._shards_failed, shards_running=len(self._running) if self.live else None,
                shards_total=shards_total,
            )

    def _rate(self, now: float, samples: int) -> float:
        """Samples per second over the last RATE_WINDOW_SECONDS (since the start, at first)."""
        history = self._history
        history.append((now, samples))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_SECONDS:
            history.popleft()
        then, before = history[0] if len(history) > 1 else (self._start, 0)
        return (samples - before) / (now - then) if now > then else 0.0

    def _eta(self, samples: int, rate: float, rows_total: int | None, shards_total: int | None) -> float | None:
        if rate <= 0:
            return None
        if rows_total is not None:
            return max(0, rows_total - samples) / rate
        if shards_total is not None and self._shards_done:  # archives: finished shards tell their size
            expected = self._done.samples / self._shards_done * shards_total
            return max(0.0, expected - samples) / rate
        return None


def dns_warning(progress: RunProgress) -> str | None:
    """The warning to print when a large share of samples fail to resolve their host, else None."""
    dns = progress.error_types.get("dns", 0)
    if progress.samples < DNS_WARNING_MIN_SAMPLES or dns < DNS_WARNING_SHARE * progress.samples:
        return None
    return (f"{dns / progress.samples:.0%} of samples failed to resolve their host name (error_type dns): "
            f"the DNS resolver may be overloaded; see {DNS_DOCS} (a local caching resolver)")


class ProgressTicker:
    """A thread handing ``tracker``'s snapshot to ``deliver`` every TICK_SECONDS, and warning once
    when DNS failures are frequent. :meth:`stop` delivers a last snapshot."""

    def __init__(self, tracker: ProgressTracker, deliver: Callable[[RunProgress], None]) -> None:
        self.tracker = tracker
        self.deliver = deliver
        self._stopped = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name="any2ds-progress", daemon=True)

    def start(self) -> ProgressTicker:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join()
        self._tick()

    def _loop(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            self._tick()

    def _tick(self) -> None:
        progress = self.tracker.snapshot()
        if not self._warned and (warning := dns_warning(progress)) is not None:
            self._warned = True
            logger.warning("any2ds: warning: %s", warning)
        self.deliver(progress)

