"""The default observer: one line per finished shard and a running total, like img2dataset's."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from any2ds import Observer, RunConfig, ShardFailure, ShardStats, hookimpl


class ProgressObserver(Observer):
    """Prints progress to stderr: per shard, and totals with the rate since the run started."""

    name = "progress"

    def run_started(self, config: RunConfig) -> None:
        self._start = time.time()
        self._count = self._successes = self._shards = 0
        self._statuses: dict[str, int] = {}

    def shard_completed(self, stats: ShardStats) -> None:
        self._shards += 1
        self._count += stats.count
        self._successes += stats.successes
        for status, n in stats.statuses.items():
            self._statuses[status] = self._statuses.get(status, 0) + n
        rate = self._count / max(time.time() - self._start, 1e-9)
        shares = " - ".join(f"{s.replace('_', ' ')}: {n / self._count:.3f}" for s, n in sorted(self._statuses.items()))
        print(f"shard {stats.shard_id} done in {stats.duration:.1f}s: {stats.successes}/{stats.count} ok | "
              f"total {self._shards} shards - {shares} - samples per sec: {rate:.0f} - count: {self._count}",
              file=sys.stderr, flush=True)

    def shard_failed(self, failure: ShardFailure) -> None:
        print(f"shard {failure.shard_id} failed: {failure.error}", file=sys.stderr, flush=True)

    def run_completed(self, summary: Mapping[str, Any]) -> None:
        print(f"done: {summary['count']} samples in {summary['shards_done']} shards, "
              f"{summary['successes']} successes, {summary['duration']:.1f}s", file=sys.stderr, flush=True)


@hookimpl
def any2ds_register_observers(register):
    register(ProgressObserver)
