"""The default distributor: shards run on ``processes_count`` local worker processes."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import attrs

from any2ds import (CoreOptions, Distributor, RunConfig, Shard, ShardFailure, ShardFunction, ShardProgress,
                    ShardStats, hookimpl)

# A report is a few hundred bytes of JSON; a datagram can hold far more.
MAX_REPORT_BYTES = 65536
# Seconds the receiving thread waits before looking whether the run ended.
RECEIVE_SECONDS = 0.2
# Seconds between a worker's looks at whether its main process is still there.
PARENT_CHECK_SECONDS = 0.5


class MultiprocessingDistributor(Distributor):
    """Runs shards on spawned processes; a dead worker fails only the shards it held.

    Shards are read from the input only a few at a time (two per process), so
    the input is never held in memory. Processes are spawned, not forked, so
    fetch threads and sockets of the parent are never inherited; scripts
    calling ``any2ds.download`` therefore need an ``if __name__ == "__main__"``
    guard, as with any spawned multiprocessing.

    Each worker runs as many processing threads as its share of the cores. Once the input is
    read, fewer shards than processes may be left: the workers still running one then share the
    cores of those left idle (``cpu_share`` of the shard task), so that the last shards of a run
    do not run on one core each while the others wait.
    """

    name = "multiprocessing"
    dedicated_workers = True

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig,
            progress: Callable[[ShardProgress], None] | None = None) -> Iterator[ShardStats | ShardFailure]:
        receiver = ProgressReceiver.open(progress) if progress is not None else None
        try:
            yield from self._run(shards, task, config.core, receiver and receiver.address)
        finally:
            if receiver is not None:
                receiver.close()

    def _run(self, shards: Iterable[Shard], task: ShardFunction, core: CoreOptions,
             reports: str | None) -> Iterator[ShardStats | ShardFailure]:
        processes = core.processes_count
        window = 2 * processes
        # The processing threads each busy worker may run: written here, read by the workers.
        cpu_share = multiprocessing.get_context("spawn").RawValue("i", core.cpu_threads())
        workers = _Workers(reports, cpu_share)
        pool = workers.pool(processes)
        pending: dict[Future[ShardStats], Shard] = {}
        # Shards that were in a pool when one of its workers died: any of them may
        # have killed it, so each is re-run alone to find out, instead of every
        # bystander losing a retry round to the culprit.
        suspects: list[Shard] = []
        try:
            for shard in shards:
                while len(pending) >= window:
                    outcomes, pool = self._collect(pending, pool, processes, suspects, workers)
                    yield from outcomes
                pending[pool.submit(_run_shard, task, shard)] = shard
            while pending:  # every shard is given out: as they finish, workers are left without one
                cpu_share.value = core.cpu_threads(busy_processes=len(pending))
                outcomes, pool = self._collect(pending, pool, processes, suspects, workers)
                yield from outcomes
            cpu_share.value = core.cpu_threads(busy_processes=1)
            yield from self._run_alone(suspects, task, workers)
        except BaseException:
            _stop(pool, grace=0)
            raise
        # Every shard is committed; a worker kept alive by a thread its watchdog
        # abandoned must not hold the run open.
        _stop(pool, grace=5)

    @staticmethod
    def _collect(pending: dict[Future[ShardStats], Shard], pool: ProcessPoolExecutor, processes: int,
                 suspects: list[Shard], workers: _Workers,
                 ) -> tuple[list[ShardStats | ShardFailure], ProcessPoolExecutor]:
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
            pool = workers.pool(processes)
        return outcomes, pool

    @staticmethod
    def _run_alone(shards: list[Shard], task: ShardFunction, workers: _Workers) -> Iterator[ShardStats | ShardFailure]:
        """Run each shard alone in a one-worker pool: a worker death is then that shard's own."""
        pool = workers.pool(1)
        try:
            for shard in shards:
                try:
                    yield pool.submit(_run_shard, task, shard).result()
                except BrokenProcessPool as exc:
                    yield ShardFailure(shard.shard_id, f"worker process died: {exc}")
                    _stop(pool, grace=0)
                    pool = workers.pool(1)
                except Exception as exc:
                    yield ShardFailure(shard.shard_id, f"{type(exc).__name__}: {exc}")
        finally:
            _stop(pool, grace=5)


class ProgressReceiver:
    """Main process: receives the workers' reports, one datagram each, on a Unix socket.

    Not a multiprocessing.Queue: its writers share a lock, which a worker
    killed in the middle of a put (a crash, the OOM killer) would hold for
    ever, silencing every other worker. Datagrams share nothing; a report
    lost to a full buffer costs nothing (the shard's outcome has the real
    counts). The socket lives in a private temporary folder, so only this
    user's processes can write to it.
    """

    def __init__(self, deliver: Callable[[ShardProgress], None], folder: str, sock: socket.socket) -> None:
        self._deliver = deliver
        self._folder = folder
        self._socket = sock
        self.address = sock.getsockname()
        self._open = True
        self._thread = threading.Thread(target=self._receive, name="any2ds-progress-receiver", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, deliver: Callable[[ShardProgress], None]) -> ProgressReceiver | None:
        """A receiver, or None where Unix datagram sockets are missing (the run then goes without)."""
        folder = tempfile.mkdtemp(prefix="any2ds-")
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(os.path.join(folder, "progress"))
        except (AttributeError, OSError):
            shutil.rmtree(folder, ignore_errors=True)
            return None
        sock.settimeout(RECEIVE_SECONDS)
        return cls(deliver, folder, sock)

    def _receive(self) -> None:
        while self._open:
            try:
                data = self._socket.recv(MAX_REPORT_BYTES)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                update = ShardProgress(**json.loads(data))
            except (ValueError, TypeError):  # not a report: nothing of ours sends it
                continue
            self._deliver(update)

    def close(self) -> None:
        self._open = False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", self.address)  # ends the thread's wait now, not RECEIVE_SECONDS later
        self._thread.join()
        self._socket.close()
        shutil.rmtree(self._folder, ignore_errors=True)


@attrs.frozen
class _Workers:
    """What the run's worker processes are started with: where reports go, and the shared
    ``cpu_share`` (a ``RawValue``, which a process can only inherit)."""

    reports: str | None
    cpu_share: Any

    def pool(self, processes: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self.reports, self.cpu_share, os.getpid()))


# In a worker process: where reports go, the socket they are sent from, the shared cpu_share.
_REPORTS_ADDRESS: str | None = None
_REPORTS_SOCKET: socket.socket | None = None
_CPU_SHARE: Any = None


def _start_worker(reports: str | None, cpu_share: Any, parent: int) -> None:
    """Ctrl-C reaches the whole process group; the main process alone decides how to stop."""
    global _REPORTS_ADDRESS, _CPU_SHARE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _REPORTS_ADDRESS, _CPU_SHARE = reports, cpu_share
    threading.Thread(target=_exit_with_parent, args=(parent,), name="any2ds-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker outlives no run: once its main process is gone (SIGKILL, the OOM killer), the
    worker is re-parented and exits, its open shard left uncommitted for a rerun to redo, rather
    than go on writing into a folder that a rerun may be writing too, then wait for ever."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _run_shard(task: ShardFunction, shard: Shard) -> ShardStats:
    """Runs in a worker process."""
    return task(shard, None if _REPORTS_ADDRESS is None else _send_report, cpu_share=_cpu_share)


def _cpu_share() -> int:
    return _CPU_SHARE.value


def _send_report(update: ShardProgress) -> None:
    global _REPORTS_SOCKET
    if _REPORTS_SOCKET is None:
        _REPORTS_SOCKET = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _REPORTS_SOCKET.setblocking(False)  # a full buffer drops the report rather than stall the shard
    try:
        _REPORTS_SOCKET.sendto(json.dumps(attrs.asdict(update)).encode(), _REPORTS_ADDRESS)
    except OSError:  # buffer full, or the run is ending
        pass


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
