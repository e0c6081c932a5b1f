"""The ``pyspark`` distributor: shards run as Spark tasks, one partition per shard.

Shards are sent in jobs of ``subjob_size`` shards (img2dataset's flag), but
unlike img2dataset there is no barrier per job:

* two jobs are in flight at once, so when the first one is down to its last
  stragglers the scheduler already runs the second one's tasks;
* every task reports its outcome through an accumulator as soon as it ends,
  so outcomes (progress, commits) stream per shard, not per job; that is
  also as live as the progress gets: Spark sends a task's accumulator updates
  when the task ends, so ``run`` takes no ``progress`` channel and the counts
  move a shard at a time;
* a task that kills its Python worker fails only its own shard: Spark aborts
  the whole job, so the shards the abort killed are sent again in a later
  job, and only the shard named by the failure becomes a ``ShardFailure``.

The input is read lazily, ``subjob_size`` shards at a time. pyspark is
imported only when this distributor is selected; the active SparkSession is
used if there is one (a cluster), else a ``local[processes_count]`` one is
started and stopped at the end of the run; its Python workers run this
interpreter (``PYSPARK_PYTHON``, unless set, is set for that session).
Before the first shard, one task checks that an executor's Python can load
any2ds and the run's plugins at this machine's versions: if not, the run stops
at once with one line saying what is missing where.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import attrs

from any2ds import (
    ConfigError, Distributor, RunConfig, Shard, ShardFailure, ShardFunction, ShardStats, at_least, hookimpl, option,
)

MISSING_PYSPARK = "distributor pyspark needs pyspark: pip install 'any2ds[spark]'"

# Jobs submitted at once: the next one fills the slots the current one's stragglers leave.
JOBS_IN_FLIGHT = 2
# Seconds between looks at the outcomes of running tasks.
POLL_SECONDS = 0.5
# Seconds the preflight task may wait for an executor (a cluster may be scaling up).
PREFLIGHT_SECONDS = 300
# Spark's message when a task failure aborted a job names the task, i.e. the partition.
_FAILED_TASK = re.compile(r"Task (\d+) in stage \S+ failed \d+ times?")
_FAILURE_REASON = re.compile(r"most recent failure: (?:Lost task \S+ in stage \S+ \([^)]*\) \([^)]*\): )?([^\n]*)")




@attrs.frozen
class SparkOptions:
    subjob_size: int = option(1000, "pyspark distributor: shards per Spark job (two jobs run at once).", at_least(1))


class SparkDistributor(Distributor):
    """Runs shards on the active Spark cluster, or on a local Spark with processes_count cores."""

    name = "pyspark"
    Options = SparkOptions

    def __init__(self, options: SparkOptions) -> None:
        super().__init__(options)
        self._own_session: Any = None

    def check(self) -> None:
        try:
            import pyspark  # noqa: F401
            from pyspark import SparkContext
        except ImportError as exc:
            raise ConfigError(MISSING_PYSPARK) from exc
        if os.environ.get("SPARK_CONNECT_MODE_ENABLED") or os.environ.get("SPARK_REMOTE"):
            raise ConfigError("distributor pyspark needs a classic SparkSession (it uses RDDs); "
                              "Spark Connect (SPARK_REMOTE) is not supported")
        if SparkContext._active_spark_context is None and not _java_available():
            raise ConfigError("distributor pyspark starts a local Spark, which needs Java 17+: install a JDK, "
                              "put java on PATH or set JAVA_HOME (or create a SparkSession before the run)")

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig) -> Iterator[ShardStats | ShardFailure]:
        sc = self._spark_context(config)
        outcomes = sc.accumulator([], _OutcomeList())
        run_partition = functools.partial(_run_partition, task, outcomes)
        group = f"any2ds-{uuid.uuid4().hex[:12]}"
        source = iter(shards)
        requeued: deque[Shard] = deque()  # shards killed by another shard's failure, to send again
        requeued_ids: set[int] = set()
        jobs: dict[Future[list[Any]], _Job] = {}
        owner: dict[int, _Job] = {}
        submitter = ThreadPoolExecutor(JOBS_IN_FLIGHT, thread_name_prefix="any2ds-spark-job")
        input_done = False
        try:
            while True:
                while len(jobs) < JOBS_IN_FLIGHT:
                    batch = [requeued.popleft() for _ in range(min(len(requeued), self.options.subjob_size))]
                    if not input_done and len(batch) < self.options.subjob_size:
                        wanted = self.options.subjob_size - len(batch)
                        fresh = list(itertools.islice(source, wanted))
                        input_done = len(fresh) < wanted
                        batch += fresh
                    if not batch:
                        break
                    job = _Job(batch)
                    for shard in batch:
                        owner[shard.shard_id] = job
                    jobs[submitter.submit(_run_job, sc, group, batch, run_partition)] = job
                if not jobs:
                    break
                done, _ = wait(jobs, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                # Every finished task's outcome is in the accumulator before its job ends.
                yield from _claim(_drain(outcomes), owner)
                for future in done:
                    job = jobs.pop(future)
                    error = future.exception()
                    if error is None:
                        yield from _claim(future.result(), owner)
                        for shard_id in sorted(job.waiting):  # cannot happen; never lose a shard
                            yield owner.pop(shard_id).fail(shard_id, "Spark returned no outcome for the shard")
                    else:
                        failures, again = job.aborted(error, requeued_ids)
                        for failure in failures:
                            owner.pop(failure.shard_id, None)
                            yield failure
                        requeued.extend(again)
                        requeued_ids.update(shard.shard_id for shard in again)
        finally:
            if jobs:  # the consumer stopped early (error, Ctrl-C): stop our Spark jobs
                with contextlib.suppress(Exception):  # the context may already be gone
                    sc.cancelJobGroup(group)
            submitter.shutdown(wait=False, cancel_futures=True)

    def probe_workers(self, probe: Callable[[], Any], config: RunConfig) -> Any:
        """One single-partition Spark job runs ``probe`` on an executor (starting our local Spark
        if there is no session); a job that fails or waits PREFLIGHT_SECONDS is a ConfigError."""
        sc = self._spark_context(config)
        group = f"any2ds-preflight-{uuid.uuid4().hex[:12]}"
        runner = ThreadPoolExecutor(1, thread_name_prefix="any2ds-spark-preflight")
        try:
            return runner.submit(_run_probe, sc, group, probe).result(timeout=PREFLIGHT_SECONDS)
        except FutureTimeout:
            sc.cancelJobGroup(group)
            raise ConfigError(f"distributor pyspark: no executor of {sc.master} ran the preflight task within "
                              f"{PREFLIGHT_SECONDS} s; does the cluster have free executors?") from None
        except Exception as exc:  # noqa: BLE001 - the executors could not even load the task
            _partition, why = _failed_task(exc)
            raise ConfigError(f"distributor pyspark: the executors (python {sc.pythonExec}, master {sc.master}) "
                              f"cannot run any2ds: {why}. Install any2ds and the run's plugins for that python on "
                              "every executor, or set PYSPARK_PYTHON to an interpreter that has them") from exc
        finally:
            runner.shutdown(wait=False)

    def close(self) -> None:
        if self._own_session is not None:
            session, self._own_session = self._own_session, None
            session.stop()

    def _spark_context(self, config: RunConfig) -> Any:
        try:
            from pyspark import SparkContext
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise ConfigError(MISSING_PYSPARK) from exc
        if SparkContext._active_spark_context is not None:
            return SparkContext._active_spark_context
        active = SparkSession.getActiveSession()
        if active is not None:
            try:
                return active.sparkContext
            except Exception as exc:  # a Spark Connect session has no SparkContext
                raise ConfigError(f"distributor pyspark needs a classic SparkSession (it uses RDDs), "
                                  f"not {type(active).__module__}: {exc}") from exc
        # Our own local Spark. The progress observer replaces Spark's console bar, and the
        # web UI is off (it doubles startup time); to get it, or any other setting, create
        # the SparkSession yourself before the run.
        processes = config.core.processes_count
        builder = (SparkSession.builder.master(f"local[{processes}]").appName("any2ds")
                   .config("spark.driver.memory", _driver_memory())
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false"))
        if "PYSPARK_PYTHON" in os.environ:
            self._own_session = builder.getOrCreate()
            return self._own_session.sparkContext
        # Local workers must run this interpreter (a virtualenv's plugins), not whatever python3 is
        # on PATH. pyspark reads the workers' Python from PYSPARK_PYTHON when the context starts;
        # its spark.pyspark.python setting is read by spark-submit only.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        try:
            self._own_session = builder.getOrCreate()
        finally:
            del os.environ["PYSPARK_PYTHON"]
        return self._own_session.sparkContext


class _Job:
    """One Spark job: its shards and the ones whose outcome has not come back yet."""

    def __init__(self, batch: list[Shard]) -> None:
        self.batch = batch
        self.waiting = {shard.shard_id for shard in batch}

    def fail(self, shard_id: int, error: str) -> ShardFailure:
        self.waiting.discard(shard_id)
        return ShardFailure(shard_id, error)

    def aborted(self, error: BaseException, requeued_before: set[int]) -> tuple[list[ShardFailure], list[Shard]]:
        """Spark aborted the job: the shard whose task failed fails; the others it killed run again.

        When the failed task cannot be told (the job failed to start, or
        Spark's message changed), every shard still waiting fails; so does a
        killed shard that was already sent again once (a broken cluster must
        not cost one job per shard).
        """
        index, why = _failed_task(error)
        blamed = self.batch[index] if index is not None and index < len(self.batch) else None
        if blamed is None or blamed.shard_id not in self.waiting:
            failures = [self.fail(shard_id, f"Spark job failed: {why}") for shard_id in sorted(self.waiting)]
            return failures, []
        failures = [self.fail(blamed.shard_id, f"Spark task failed: {why}")]
        again = []
        for shard in self.batch:
            if shard.shard_id not in self.waiting:
                continue
            if shard.shard_id in requeued_before:
                failures.append(self.fail(shard.shard_id, f"Spark job failed twice; last time: {why}"))
            else:
                again.append(shard)
        self.waiting.clear()
        return failures, again


def _failed_task(error: BaseException) -> tuple[int | None, str]:
    """The partition whose task failure aborted a Spark job, and why it failed (one line).

    A ``Py4JJavaError`` carries the JVM's whole message (``Task 3 in stage
    0.0 failed``); when the worker raised while loading or running the task,
    pyspark raises a ``PythonException`` showing only the Python traceback,
    with the ``Py4JJavaError`` kept as its ``__context__``.
    """
    shown = _text(error).split("\n\nJVM stacktrace:")[0]
    chain, link = [], error
    while link is not None and len(chain) < 5:
        chain.append(link)
        link = link.__cause__ or link.__context__
    text = "\n".join([shown, *(_text(link) for link in chain[1:])])
    match = _FAILED_TASK.search(text)
    lines = [line.strip() for line in shown.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in shown and lines:
        why = lines[-1]  # the Python exception: "Type: message"
    elif (reason := _FAILURE_REASON.search(text)) is not None:
        why = reason.group(1).strip()
    else:
        why = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return (int(match.group(1)) if match else None), why[:500]


def _text(error: BaseException) -> str:
    try:
        return str(error)  # a Py4JJavaError asks the JVM, which may be gone
    except Exception:  # noqa: BLE001
        return type(error).__name__


def _claim(outcomes: Iterable[ShardStats | ShardFailure],
           owner: dict[int, _Job]) -> Iterator[ShardStats | ShardFailure]:
    """Each shard's first outcome; the same outcome seen again (accumulator, then collect) is dropped."""
    for outcome in outcomes:
        job = owner.get(outcome.shard_id)
        if job is not None and outcome.shard_id in job.waiting:
            job.waiting.discard(outcome.shard_id)
            del owner[outcome.shard_id]
            yield outcome


def _drain(accumulator: Any) -> list[ShardStats | ShardFailure]:
    """Take the outcomes the accumulator received so far (Spark appends from its own thread)."""
    received = accumulator.value
    count = len(received)
    taken = received[:count]
    del received[:count]
    return taken


def _run_job(sc: Any, group: str, batch: list[Shard], run_partition: Any) -> list[Any]:
    """One Spark job, one partition (task) per shard; runs on a submitter thread."""
    sc.setJobGroup(group, f"any2ds: {len(batch)} shards from shard {batch[0].shard_id}", interruptOnCancel=True)
    return sc.parallelize(batch, len(batch)).mapPartitions(run_partition).collect()


def _run_probe(sc: Any, group: str, probe: Callable[[], Any]) -> Any:
    sc.setJobGroup(group, "any2ds: preflight", interruptOnCancel=True)
    return sc.parallelize([probe], 1).map(_call).collect()[0]


def _call(probe: Callable[[], Any]) -> Any:
    """Runs in the Spark executor's Python worker."""
    return probe()


def _run_partition(task: ShardFunction, outcomes: Any, shards: Iterable[Shard]) -> Iterator[ShardStats | ShardFailure]:
    """Runs in the Spark executor's Python worker."""
    for shard in shards:
        outcome = _run_shard(task, shard)
        outcomes.add([outcome])
        yield outcome


def _run_shard(task: ShardFunction, shard: Shard) -> ShardStats | ShardFailure:
    try:
        return task(shard)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the core retries the shard; the job must go on
        return ShardFailure(shard.shard_id, f"{type(exc).__name__}: {exc}")


class _OutcomeList:
    """A Spark AccumulatorParam (duck-typed, so this module imports without pyspark): a list."""

    def zero(self, value: list[Any]) -> list[Any]:
        return []

    def addInPlace(self, value1: list[Any], value2: list[Any]) -> list[Any]:  # Spark's name
        value1.extend(value2)
        return value1


def _java_available() -> bool:
    return bool(os.environ.get("JAVA_HOME")) or shutil.which("java") is not None


def _driver_memory() -> str:
    """img2dataset's 16G, capped to half the machine (local mode keeps the in-flight shards in the JVM)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return "4g"
    return f"{max(1, min(16, total // 2**31))}g"


@hookimpl
def any2ds_register_distributors(register):
    register(SparkDistributor)
