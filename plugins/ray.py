"""The ``ray`` distributor: one Ray task per shard, a bounded number in flight.

Unlike img2dataset's, it fails loudly at startup when ray is missing, reads
the input lazily (at most ``ray_max_in_flight`` shards are submitted at
once), yields each outcome as its task ends (``ray.wait``), and turns task
errors and dead workers or nodes into ``ShardFailure``s that the core
retries instead of dropping the shards.

It uses the Ray cluster this process is already connected to, or the one
``RAY_ADDRESS`` names, else starts a local one with ``processes_count`` CPUs
(shut down at the end of the run). Every node of a cluster needs any2ds and
its plugins installed, for the python that ran ``ray start`` there: before the
first shard, one task checks that a worker can load them at this machine's
versions, and the run stops at once with one line if it cannot.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from any2ds import (
    ConfigError, Distributor, RunConfig, Shard, ShardFailure, ShardFunction, ShardProgress, ShardStats, at_least,
    hookimpl, option,
)

# Seconds the thread taking reports waits on the queue before looking whether the run ended.
RECEIVE_SECONDS = 0.5

MISSING_RAY = "distributor ray needs ray: pip install 'any2ds[ray]'"
# Seconds the preflight task may wait for a worker (a cluster may be scaling up).
PREFLIGHT_SECONDS = 300
# Where a task failed, in Ray's message: "(pid=1234, ip=10.0.0.5)".
_WORKER_ADDRESS = re.compile(r"\bip=([^,)\s]+)")




@attrs.frozen
class RayOptions:
    ray_max_in_flight: int = option(
        0, "ray distributor: shards submitted at once (bounds memory); 0: twice the cluster's CPUs.", at_least(0)
    )


class RayDistributor(Distributor):
    """Runs shards as Ray tasks on the connected (or a local) Ray cluster."""

    name = "ray"
    Options = RayOptions

    def __init__(self, options: RayOptions) -> None:
        super().__init__(options)
        self._started_ray = False

    def check(self) -> None:
        _import_ray()

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig,
            progress: Callable[[ShardProgress], None] | None = None) -> Iterator[ShardStats | ShardFailure]:
        ray = _import_ray()
        self._connect(ray, config)
        run_shard = ray.remote(max_retries=0)(_run_shard)  # the core retries failed shards
        window = self.options.ray_max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        task_ref = ray.put(task)  # stored once, not once per shard
        reports = ReportQueue(progress) if progress is not None else None
        pending: dict[Any, int] = {}
        try:
            for shard in shards:
                while len(pending) >= window:
                    yield from _collect(ray, pending)
                pending[run_shard.remote(task_ref, shard, reports and reports.queue)] = shard.shard_id
            while pending:
                yield from _collect(ray, pending)
        finally:
            for ref in pending:  # the consumer stopped early (error, Ctrl-C): stop our tasks
                with contextlib.suppress(Exception):  # already finished, or Ray is gone
                    ray.cancel(ref, force=True)
            if reports is not None:
                reports.close()

    def probe_workers(self, probe: Callable[[], Any], config: RunConfig) -> Any:
        """One Ray task runs ``probe`` (connecting to, or starting, Ray first); a task that fails
        or waits PREFLIGHT_SECONDS for a worker is a ConfigError."""
        ray = _import_ray()
        self._connect(ray, config)
        ref = ray.remote(max_retries=0)(_call).remote(probe)
        try:
            return ray.get(ref, timeout=PREFLIGHT_SECONDS)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise ConfigError(f"distributor ray: no Ray worker ran the preflight task within {PREFLIGHT_SECONDS} s; "
                              "does the cluster have free CPUs?") from None
        except Exception as exc:  # noqa: BLE001 - the workers could not even load the task
            where = _WORKER_ADDRESS.search(str(exc))
            raise ConfigError(f"distributor ray: the Ray workers ({f'ip {where.group(1)}, ' if where else ''}"
                              f"cluster {ray.get_runtime_context().gcs_address}) cannot run any2ds: {_describe(exc)}. "
                              "Install any2ds and the run's plugins on every node, for the python that runs "
                              "`ray start` there") from exc

    def close(self) -> None:
        if self._started_ray:
            self._started_ray = False
            _import_ray().shutdown()

    def _connect(self, ray: Any, config: RunConfig) -> None:
        if ray.is_initialized():
            return
        address = os.environ.get("RAY_ADDRESS", "")
        if address and address != "local":
            ray.init(address="auto")  # Ray reads the address (ray://... included) from RAY_ADDRESS
        else:
            ray.init(address="local", num_cpus=config.core.processes_count, include_dashboard=False)
        self._started_ray = True


class ReportQueue:
    """The workers' reports, through a Ray queue (an actor holding no CPU), handed to ``deliver``
    by a thread of the main process."""

    def __init__(self, deliver: Callable[[ShardProgress], None]) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._deliver = deliver
        self._open = True
        self._thread = threading.Thread(target=self._receive, name="any2ds-ray-reports", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        from ray.util.queue import Empty

        while self._open:
            try:
                update = self.queue.get(timeout=RECEIVE_SECONDS)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - Ray is gone: the outcomes still carry the counts
                return
            self._deliver(update)

    def close(self) -> None:
        self._open = False
        self._thread.join()
        with contextlib.suppress(Exception):
            self.queue.shutdown()


def _collect(ray: Any, pending: dict[Any, int]) -> Iterator[ShardStats | ShardFailure]:
    """Wait for at least one task; yield the outcome of every one that has ended."""
    done, _ = ray.wait(list(pending), num_returns=1)
    for ref in done:
        shard_id = pending.pop(ref)
        try:
            outcome = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - worker or node died, task cancelled, object lost, ...
            outcome = ShardFailure(shard_id, _describe(exc))
        yield outcome


def _describe(exc: BaseException) -> str:
    """``Type: first line``: Ray's messages carry whole tracebacks."""
    cause = getattr(exc, "cause", None)  # RayTaskError wraps what the task raised
    error = cause if isinstance(cause, BaseException) else exc
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


def _call(probe: Callable[[], Any]) -> Any:
    """Runs in a Ray worker."""
    return probe()


def _run_shard(task: ShardFunction, shard: Shard, reports: Any = None) -> ShardStats | ShardFailure:
    """Runs in a Ray worker; ``reports``: the run's report queue, if it has one."""
    try:
        return task(shard) if reports is None else task(shard, reports.put)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the core retries the shard
        return ShardFailure(shard.shard_id, f"{type(exc).__name__}: {exc}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(MISSING_RAY) from exc
    return ray


@hookimpl
def any2ds_register_distributors(register):
    register(RayDistributor)
