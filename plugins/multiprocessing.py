"""The default distributor: shards run on ``processes_count`` local worker processes."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from any2ds import Distributor, RunConfig, Shard, ShardFailure, ShardFunction, ShardStats, hookimpl


class MultiprocessingDistributor(Distributor):
    """Runs shards on spawned processes; a dead worker fails only the shards it held.

    Shards are read from the input only a few at a time (two per process), so
    the input is never held in memory. Processes are spawned, not forked, so
    fetch threads and sockets of the parent are never inherited; scripts
    calling ``any2ds.download`` therefore need an ``if __name__ == "__main__"``
    guard, as with any spawned multiprocessing.
    """

    name = "multiprocessing"

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig) -> Iterator[ShardStats | ShardFailure]:
        processes = config.core.processes_count
        window = 2 * processes
        pool = _new_pool(processes)
        pending: dict[Future[ShardStats], Shard] = {}
        # Shards that were in a pool when one of its workers died: any of them may
        # have killed it, so each is re-run alone to find out, instead of every
        # bystander losing a retry round to the culprit.
        suspects: list[Shard] = []
        try:
            for shard in shards:
                while len(pending) >= window:
                    outcomes, pool = self._collect(pending, pool, processes, suspects)
                    yield from outcomes
                pending[pool.submit(task, shard)] = shard
            while pending:
                outcomes, pool = self._collect(pending, pool, processes, suspects)
                yield from outcomes
            yield from self._run_alone(suspects, task)
        except BaseException:
            _stop(pool, grace=0)
            raise
        # Every shard is committed; a worker kept alive by a thread its watchdog
        # abandoned must not hold the run open.
        _stop(pool, grace=5)

    @staticmethod
    def _collect(pending: dict[Future[ShardStats], Shard], pool: ProcessPoolExecutor, processes: int,
                 suspects: list[Shard]) -> tuple[list[ShardStats | ShardFailure], ProcessPoolExecutor]:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        outcomes: list[ShardStats | ShardFailure] = []
        broken = False
        for future in done:
            shard = pending.pop(future)
            try:
                outcomes.append(future.result())
            except BrokenProcessPool:
                broken = True
                suspects.append(shard)
            except Exception as exc:
                outcomes.append(ShardFailure(shard.shard_id, f"{type(exc).__name__}: {exc}"))
        if broken:  # every other future of the dead pool fails too; start a fresh pool
            suspects.extend(pending.values())
            pending.clear()
            _stop(pool, grace=0)
            pool = _new_pool(processes)
        return outcomes, pool

    @staticmethod
    def _run_alone(shards: list[Shard], task: ShardFunction) -> Iterator[ShardStats | ShardFailure]:
        """Run each shard alone in a one-worker pool: a worker death is then that shard's own."""
        pool = _new_pool(1)
        try:
            for shard in shards:
                try:
                    yield pool.submit(task, shard).result()
                except BrokenProcessPool as exc:
                    yield ShardFailure(shard.shard_id, f"worker process died: {exc}")
                    _stop(pool, grace=0)
                    pool = _new_pool(1)
                except Exception as exc:
                    yield ShardFailure(shard.shard_id, f"{type(exc).__name__}: {exc}")
        finally:
            _stop(pool, grace=5)


def _new_pool(processes: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_interrupts)


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group; the main process alone decides how to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: ProcessPoolExecutor, grace: float) -> None:
    """Shut the pool down, terminating workers still alive after ``grace`` seconds."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public API lists them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=grace)
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


@hookimpl
def any2ds_register_distributors(register):
    register(MultiprocessingDistributor)
