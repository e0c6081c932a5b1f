"""The ``inprocess`` distributor: shards run one after another in the main process.

For debugging (a breakpoint, a profiler or a traceback reaches plugin code
directly, with no worker process in between) and for tests: plugin objects
registered in this process only (``any2ds.testing.registered_plugin``) are
seen by the shards, since no worker has to rebuild the plugins from entry
points. ``processes_count`` is ignored; ``thread_count`` still applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from any2ds import Distributor, RunConfig, Shard, ShardFailure, ShardFunction, ShardProgress, ShardStats, hookimpl


class InProcessDistributor(Distributor):
    """Runs each shard's task in this process; a shard that raises becomes a ShardFailure (retried)."""

    name = "inprocess"

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig,
            progress: Callable[[ShardProgress], None] | None = None) -> Iterator[ShardStats | ShardFailure]:
        for shard in shards:
            try:
                outcome = task(shard) if progress is None else task(shard, progress)  # reports go straight in
            except Exception as exc:  # the shard's failure, retried by the core; Ctrl-C still stops the run
                outcome = ShardFailure(shard.shard_id, f"{type(exc).__name__}: {exc}")
            yield outcome


@hookimpl
def any2ds_register_distributors(register):
    register(InProcessDistributor)
