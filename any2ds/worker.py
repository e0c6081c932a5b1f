"""Running one shard in a worker process: intake, fetch, process, write, commit.

One coordinating thread per shard moves each sample through its stages and
is the only one that writes, so writers need not be thread-safe:

- intake (:mod:`any2ds.intake`): the shard's samples, from its rows or its SampleReader;
- fetch (:mod:`any2ds.fetching`): up to ``thread_count`` at once, on threads or an
  event loop; no new fetch starts while the byte budget (:mod:`any2ds.limits`) is full,
  or while ``thread_count`` bodies already wait for a processing thread;
- processing (:mod:`any2ds.processing`): verify, route and process on
  ``processing_threads`` threads (Pillow, OpenCV and hashlib release the GIL, so
  every core decodes in parallel);
- the watchdog (:mod:`any2ds.watchdog`) fails a sample whose stage overruns ``sample_timeout``;
- the commit (:class:`~any2ds.output.ShardTarget`): files renamed into place, stats last.
"""

from __future__ import annotations

import ctypes
import gc
import mimetypes
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from urllib.parse import urlsplit

import attrs

from any2ds.components import Fetcher
from any2ds.config import CoreOptions, RunConfig
from any2ds.errors import SampleError, status_key
from any2ds.fetching import FetchStage, ReplaceablePool
from any2ds.intake import ShardIntake
from any2ds.limits import ByteBudget
from any2ds.manager import PluginHost
from any2ds.metadata import MetadataLayout, settle_pandas_probe
from any2ds.output import OutputFolder, ShardTarget
from any2ds.pipeline import SamplePipeline
from any2ds.processing import CORE, ProcessingStage, failed_result, failure
from any2ds.progress import ShardProgress, ShardReporter
from any2ds.types import FetchResult, Sample, SampleResult, Shard, ShardStats
from any2ds.watchdog import Watchdog

FETCHING, PROCESSING = "fetching", "processing"
# Bodies waiting per processing thread from which the flow's thread lets finished stages gather,
# and for how long (SampleFlow._handle_events): at about 3 ms an image, 4 bodies keep a thread
# busy through it.
GATHER_BACKLOG = 4
EVENT_GATHER_SECONDS = 0.005
# How often a flow asks whether its process's share of the cores grew (SampleFlow.results).
CPU_SHARE_SECONDS = 0.25


@attrs.define(eq=False)
class SampleJob:
    """A sample on its way: its place in the shard, its stage, the future running it, when that
    began, the bytes it holds."""

    sample: Sample
    seq: int
    stage: str = FETCHING
    future: Future | None = None
    fetcher: Fetcher | None = None
    started: float | None = None
    fetched: FetchResult | None = None
    held_bytes: int = 0
    repeat: Repeat | None = None  # set on the first sample of a URL the shard lists more than once

    def mark_started(self) -> None:
        self.started = time.monotonic()


@attrs.define(eq=False)
class Repeat:
    """A URL a shard lists more than once, while some of its samples are still to come: fetched once
    by its first sample (``leader``), whose outcome the others share. ``remaining``: occurrences
    not yet admitted; ``waiting``: admitted ones waiting for the leader; ``fetched``: the body, kept
    when each sample is processed on its own; ``outcome``: the leader's result, when it is shared."""

    url: str
    leader: SampleJob
    remaining: int
    waiting: list[SampleJob] = attrs.field(factory=list)
    fetched: FetchResult | None = None
    outcome: SampleResult | None = None


class SampleFlow:
    """Moves one shard's samples through fetch and processing and yields their results: in the
    samples' order when ``ordered`` (a shard's files are then the same from run to run), else as
    they complete.

    No sample starts while ``thread_count`` bodies already wait for a processing thread: when
    processing is the bottleneck, a longer queue only holds memory (16 MiB of bodies waiting
    over a second each on 2 cores), and a full round of fetches in flight refills this one
    before the processing threads drain it, if ``thread_count`` fetches can keep them busy at all.

    In order, a result waits for those before it; the bytes it holds (its media once processed,
    its body before) stay counted in the byte budget until it leaves, so a slow sample at the head
    holds back at most ``max_bytes_in_flight`` of the others (and no longer than the watchdog allows).

    A URL listed several times in the shard (``repeats``: URL -> occurrences, those over one) is
    fetched once, by its first sample; the others get its result, each with its own key, caption
    and columns (``share_processing``), or its body, processed for each (when a component reads
    per-row input columns). Duplicates wait for their first sample only: it is ahead of them.

    ``cpu_share``, when given, says how many processing threads this process may run now: the
    pool takes that many as the flow starts, then the flow asks every CPU_SHARE_SECONDS and grows
    the pool when the answer does. The multiprocessing distributor raises it when workers are left
    without a shard at the end of a run: the last shards then use the cores those workers leave
    idle (a worker has one processing thread per core it shares).
    """

    def __init__(self, fetching: FetchStage, processing: ProcessingStage, cpu_pool: ReplaceablePool,
                 core: CoreOptions, reader: str, ordered: bool = True, repeats: Mapping[str, int] | None = None,
                 share_processing: bool = True, cpu_share: Callable[[], int] | None = None) -> None:
        self.reader = reader  # the name sample errors of the input are namespaced with
        self.fetching = fetching
        self.processing = processing
        self.cpu_pool = cpu_pool
        self.ordered = ordered
        self.fetch_limit = core.thread_count
        self.cpu_share = cpu_share
        self._share_asked = time.monotonic()  # when cpu_share was last asked
        if cpu_share is not None:
            cpu_pool.resize(max(1, cpu_share()))
        self.budget = ByteBudget(core.max_bytes_in_flight)
        self.watchdog = Watchdog(core.sample_timeout, time.monotonic())
        self._events: queue.SimpleQueue[SampleJob] = queue.SimpleQueue()
        self._live: set[SampleJob] = set()
        self._fetches = 0
        self._processing = 0
        self._admitted = 0  # the sequence number of the next sample
        self._ready: dict[int, tuple[SampleResult, int]] = {}  # by sequence number: (result, held bytes)
        self._next_out = 0
        self.repeats = dict(repeats or {})
        self.share_processing = share_processing
        self._repeating: dict[str, Repeat] = {}  # URL -> its group, until its last sample is admitted

    def results(self, samples: Iterator[Sample]) -> Iterator[SampleResult]:
        more = True
        try:
            while more or self._live:
                while (more and self._fetches < self.fetch_limit and self._processing < self.processing_limit
                       and not self.budget.full):
                    sample = next(samples, None)
                    if sample is None:
                        more = False
                    else:
                        self._start(sample)
                        yield from self._leaving()
                if self._live:
                    self._handle_events()
                    self._expire()
                    self._follow_cpu_share()
                yield from self._leaving()
        finally:
            for job in self._live:  # the shard stopped early (its writer or reader failed)
                job.future.cancel()

    @property
    def processing_limit(self) -> int:
        """Samples in processing, running or queued, beyond which none starts (see the class)."""
        return self.fetch_limit + self.cpu_pool.threads

    def _follow_cpu_share(self) -> None:
        if self.cpu_share is None:
            return
        now = time.monotonic()
        if now - self._share_asked >= CPU_SHARE_SECONDS:
            self._share_asked = now
            threads = self.cpu_share()
            if threads > self.cpu_pool.threads:
                self.cpu_pool.resize(threads)

    def _leaving(self) -> Iterator[SampleResult]:
        """The results that may leave now: the next ones in order, or every finished one."""
        while self._ready:
            seq = self._next_out if self.ordered else next(iter(self._ready))
            if seq not in self._ready:
                return
            result, held = self._ready.pop(seq)
            self.budget.release(held)
            self._next_out += 1
            yield result

    def _done(self, job_or_seq: SampleJob | int, result: SampleResult) -> None:
        if isinstance(job_or_seq, SampleJob):
            job = job_or_seq
            self._finish(job)
            self._ready[job.seq] = (result, job.held_bytes)
            repeat = job.repeat
            # The leader's outcome serves the others: a failed fetch always, a processed result when shared.
            if repeat is not None and repeat.leader is job and (self.share_processing or job.stage == FETCHING):
                repeat.outcome, repeat.fetched = result, None
                for waiting in repeat.waiting:
                    self._done(waiting.seq, _shared(result, waiting.sample))
                repeat.waiting.clear()
        else:
            self._ready[job_or_seq] = (result, 0)

    def _start(self, sample: Sample) -> None:
        """Start a sample's first stage; a sample that cannot start is done at once, failed."""
        seq, self._admitted = self._admitted, self._admitted + 1
        if sample.error is not None:
            self._done(seq, failure(sample, sample.error, self.reader))
            return
        job = SampleJob(sample, seq)
        url = sample.url.strip() if sample.data is None and isinstance(sample.url, str) else None
        if url in self._repeating:
            self._follow(self._repeating[url], job)
            return
        if sample.data is not None:
            self._to_processing(job, _inline(sample))
        else:
            try:
                job.fetcher = self.fetching.fetcher_for(sample.url)
            except SampleError as error:
                self._done(seq, failure(sample, error, CORE))
                return
            if url in self.repeats:
                job.repeat = self._repeating[url] = Repeat(url, job, self.repeats[url] - 1)
            self._fetches += 1
            self._run(job, self.fetching.start(job.fetcher, sample, job.mark_started))
        self._live.add(job)

    def _follow(self, repeat: Repeat, job: SampleJob) -> None:
        """A later sample of a repeated URL: the leader's outcome, its body to process, or a wait."""
        repeat.remaining -= 1
        if repeat.remaining <= 0:  # its last sample: no later one will look it up
            del self._repeating[repeat.url]
        if repeat.outcome is not None:
            self._done(job.seq, _shared(repeat.outcome, job.sample))
        elif repeat.fetched is not None:
            self._to_processing(job, repeat.fetched)
            self._live.add(job)
        else:
            repeat.waiting.append(job)

    def _run(self, job: SampleJob, future: Future) -> None:
        job.future = future
        future.add_done_callback(lambda _done, job=job: self._events.put(job))

    def _to_processing(self, job: SampleJob, fetched: FetchResult) -> None:
        job.stage, job.started, job.fetched = PROCESSING, None, fetched
        job.held_bytes = len(fetched.body)
        self.budget.add(job.held_bytes)
        self._processing += 1

        def process() -> SampleResult:
            job.mark_started()
            return self.processing.run(job.sample, fetched)

        self._run(job, self.cpu_pool.submit(process))

    def _handle_events(self) -> None:
        """Wait for the next finished stage (at most until the watchdog's next look), then
        take every stage that finished meanwhile.

        While bodies queue for the processing threads (GATHER_BACKLOG per thread), processing is
        what holds the flow back: finished stages are let to gather for EVENT_GATHER_SECONDS
        first, so that one wake of this thread takes several. Each wake costs this thread, and
        the processing thread it preempts, a context switch."""
        waiting_bodies = self._processing - self.cpu_pool.threads
        if self._events.empty() and waiting_bodies >= GATHER_BACKLOG * self.cpu_pool.threads:
            time.sleep(EVENT_GATHER_SECONDS)
        try:
            job = self._events.get(timeout=self.watchdog.wait(time.monotonic()))
        except queue.Empty:
            return
        while True:
            if job in self._live and job.future.done():
                self._advance(job)
            try:
                job = self._events.get_nowait()
            except queue.Empty:
                return

    def _advance(self, job: SampleJob) -> None:
        """A stage of ``job`` ended: start the next one, or record the sample's result."""
        future = job.future
        if future.cancelled():  # its pool was renewed before the stage began: start it again
            if job.stage == FETCHING:
                self._run(job, self.fetching.start(job.fetcher, job.sample, job.mark_started))
            else:
                self.budget.release(job.held_bytes)  # counted again by the restart
                self._processing -= 1
                self._to_processing(job, job.fetched)
            return
        error = future.exception()
        if job.stage == FETCHING:
            self._fetches -= 1
            if error is None:
                fetched = future.result()
                self._to_processing(job, fetched)
                if job.repeat is not None and not self.share_processing:  # each sample processed on its own
                    job.repeat.fetched = fetched if job.repeat.remaining > 0 else None
                    for waiting in job.repeat.waiting:
                        self._to_processing(waiting, fetched)
                        self._live.add(waiting)
                    job.repeat.waiting.clear()
            else:
                self._done(job, failure(job.sample, error, job.fetcher.name))
            return
        job.fetched = None  # the result holds what it keeps of the body
        self._processing -= 1
        result = future.result() if error is None else failure(job.sample, error, CORE, "failed_to_process")
        self._hold_result(job, result)
        self._done(job, result)

    def _hold_result(self, job: SampleJob, result: SampleResult) -> None:
        """A processed sample waiting to leave holds its result's media (and bytes its sample brought),
        no longer the body: counting that would fill the budget with bodies already freed (a photo
        is about three times its 256 px thumbnail), stopping fetches behind a slow sample sooner."""
        kept = sum(len(media.data) for media in result.media.values()) + len(job.sample.data or b"")
        self.budget.release(job.held_bytes)
        self.budget.add(kept)  # more than the body when a small image is enlarged
        job.held_bytes = kept

    def _finish(self, job: SampleJob) -> None:
        """``job`` leaves the flow. Its future's done-callback refers back to it: a finished
        job keeping its future would be freed, bytes and all, only by the cyclic garbage
        collector, and such jobs piled up far beyond the byte budget."""
        self._live.discard(job)
        job.future = None

    def _expire(self) -> None:
        for job in self.watchdog.overdue(self._live, time.monotonic()):
            if job.stage == FETCHING:
                self._fetches -= 1
                self.fetching.abandon(job.future, job.fetcher)
                status = "failed_to_download"
            else:
                self._processing -= 1
                if not job.future.cancel():
                    self.cpu_pool.abandon()
                status = "failed_to_process"
            self._done(job, failed_result(job.sample, status, f"sample did not finish within sample_timeout="
                                          f"{self.watchdog.timeout:g} s", "watchdog"))


def _shared(result: SampleResult, sample: Sample) -> SampleResult:
    """``result`` for another sample of the same URL: the same media (not copied), its own row."""
    return attrs.evolve(result, sample=sample, media=dict(result.media), metadata=dict(result.metadata))


def _inline(sample: Sample) -> FetchResult:
    """The FetchResult of a sample that brought its bytes: nothing to fetch."""
    content_type = mimetypes.guess_type(sample.filename)[0] if sample.filename else None
    return FetchResult(body=sample.data, url=sample.url or sample.filename or "", content_type=content_type,
                       attempts=0)


# status_dict: distinct failure messages counted per shard; later new ones are counted by error type.
MAX_STATUS_KEYS = 100
# failed_hosts: the hosts with the most failures, per shard.
TOP_FAILED_HOSTS = 20


class StatsTally:
    """A shard's counts as its results are written: statuses, messages (img2dataset's
    ``status_dict``, keyed by :func:`~any2ds.errors.status_key`, at most MAX_STATUS_KEYS
    distinct messages, the rest under ``<error_type> (other messages)``), error types,
    and the failures of the hosts failing most."""

    def __init__(self, reported_statuses: tuple[str, ...] = ()) -> None:
        self.reported_statuses = reported_statuses
        self.start = time.time()
        self.statuses: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()
        self.hosts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._distinct_messages = 0

    def add(self, result: SampleResult) -> None:
        self.statuses[result.status] += 1
        if result.error_message is None:
            self.messages[result.status] += 1
            return
        error_type = result.error_type or result.status
        host = _host(result.sample.url)
        key = status_key(result.error_message, host)
        if key not in self.messages:
            if self._distinct_messages >= MAX_STATUS_KEYS:
                key = f"{error_type} (other messages)"
            else:
                self._distinct_messages += 1
        self.messages[key] += 1
        self.error_types[error_type] += 1
        if host:
            self.hosts[host][error_type] += 1

    def stats(self, shard_id: int) -> ShardStats:
        return ShardStats(shard_id=shard_id, count=sum(self.statuses.values()), successes=self.statuses["success"],
                          status_dict=dict(self.messages), error_types=dict(self.error_types),
                          statuses=dict(self.statuses), start_time=self.start, end_time=time.time(),
                          reported_statuses=self.reported_statuses,
                          failed_hosts=top_hosts(self.hosts, TOP_FAILED_HOSTS))


def top_hosts(hosts: Mapping[str, Counter[str]], count: int) -> dict[str, dict[str, int]]:
    """The ``count`` hosts with the most failures (ties by name), each with its failures by type."""
    top = sorted(hosts.items(), key=lambda item: (-item[1].total(), item[0]))[:count]
    return {host: dict(types.most_common()) for host, types in top}


def _host(url: str | None) -> str | None:
    try:
        return urlsplit(url).hostname if url and isinstance(url, str) else None  # a plugin's sample may hold bytes
    except ValueError:  # not a URL at all; its failure says so
        return None


class SampleStages:
    """A process's machinery that moves samples: the plugins, the fetch stage, the processing
    stage and its threads, built once and shared by every flow (shard, or Pipeline call)."""

    def __init__(self, pipeline: SamplePipeline) -> None:
        core = pipeline.config.core
        self.pipeline = pipeline
        self.fetching = FetchStage(pipeline.fetchers, core.thread_count)
        self.processing = ProcessingStage(pipeline.verifiers, pipeline.processors, core.routing)
        self.cpu_pool = ReplaceablePool(core.cpu_threads(), "any2ds-process")
        # Samples of one URL share their processing unless a component reads per-row input columns.
        self.share_processing = not any(c.read_columns() for c in (*pipeline.verifiers, *pipeline.processors))

    @classmethod
    def load(cls, config: RunConfig, read_input: bool = True) -> SampleStages:
        """Stages whose plugins are built from ``config`` in this process (a worker's)."""
        host = PluginHost.load(local_plugins=config.core.plugins or ())
        return cls(SamplePipeline.build(host, config, read_input))

    def flow(self, ordered: bool = True, repeats: Mapping[str, int] | None = None,
             cpu_share: Callable[[], int] | None = None) -> SampleFlow:
        """A flow for one batch of samples (its own byte budget and watchdog; shared pools);
        ``repeats``: the URLs the batch lists more than once, with their counts; ``cpu_share``: see
        :class:`SampleFlow`."""
        reader = self.pipeline.reader.name if self.pipeline.reader is not None else CORE
        return SampleFlow(self.fetching, self.processing, self.cpu_pool, self.pipeline.config.core, reader, ordered,
                          repeats, self.share_processing, cpu_share)

    def close(self) -> None:
        self.fetching.close()
        self.cpu_pool.close()
        self.pipeline.close()


class ShardWrite:
    """One shard being written: its writer, its target's temporary files and its stats, until
    :meth:`commit` or :meth:`abort`. Used by one thread at a time."""

    def __init__(self, pipeline: SamplePipeline, target: ShardTarget, layout: MetadataLayout) -> None:
        self.target = target
        self.tally = StatsTally(pipeline.reported_statuses())
        try:
            self.writer = pipeline.writer.open_shard(target, layout)
        except BaseException:
            target.abort()
            raise

    def write(self, result: SampleResult) -> None:
        self.writer.write(result)
        self.tally.add(result)

    def commit(self, shard_id: int) -> ShardStats:
        """Finish the writer's files, rename them into place and write the stats file, last."""
        try:
            self.writer.close()
        except BaseException:
            self.abort()
            raise
        stats = self.tally.stats(shard_id)
        self.target.commit(stats.to_json())
        return stats

    def abort(self) -> None:
        """Drop every file of the shard."""
        try:
            self.writer.abort()
        finally:
            self.target.abort()


class ShardRunner:
    """Runs shards for one process: plugins, pools and output built once, reused per shard."""

    def __init__(self, config: RunConfig, dedicated_process: bool = False) -> None:
        """``dedicated_process``: this process runs nothing but this runner's shards (see
        :attr:`~any2ds.Distributor.dedicated_workers`)."""
        _limit_malloc_arenas()
        self.stages = SampleStages.load(config)
        if dedicated_process:
            settle_pandas_probe()
        self.pipeline = self.stages.pipeline
        self.output = OutputFolder(config.core.output_folder, config.core.oom_shard_count, config.core.storage())
        self.intake = ShardIntake(self.pipeline.reader, self.pipeline.row_intake())
        # What exists now (modules, plugins) lives as long as the process: the cyclic collector's full
        # passes need not walk it again and again (they took 5% of a worker's CPU).
        gc.freeze()

    def run(self, shard: Shard, report: Callable[[ShardProgress], None] | None = None,
            cpu_share: Callable[[], int] | None = None) -> ShardStats:
        """Fetch, process and write every sample of ``shard``, then commit it atomically;
        ``report`` receives the samples' counts as they finish (see :mod:`any2ds.progress`);
        ``cpu_share``: the processing threads this process may run now (see :class:`SampleFlow`)."""
        reporter = ShardReporter(shard.shard_id, report)
        layout = self.pipeline.layout(shard.column_schema)
        shard_write = ShardWrite(self.pipeline, self.output.target(shard.shard_id), layout)
        try:
            flow = self.stages.flow(repeats=self.intake.repeated_urls(shard), cpu_share=cpu_share)
            for result in flow.results(self.intake.samples(shard)):
                shard_write.write(result)
                reporter.add(result)
        except BaseException:
            shard_write.abort()
            raise
        return shard_write.commit(shard.shard_id)

    def close(self) -> None:
        self.stages.close()


# glibc's mallopt parameter for the number of malloc arenas.
M_ARENA_MAX = -8


def _limit_malloc_arenas() -> None:
    """Two malloc arenas for the process's threads. glibc gives threads that allocate at once arenas of
    their own, up to 8 per core, each keeping what was freed in it: bodies and pixels freed by one
    thread sat in its arena (15 MB per worker process on the benchmark). No-op off glibc."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


_RUNNERS: dict[str, ShardRunner] = {}
_RUNNERS_LOCK = threading.Lock()


class ShardTask:
    """The picklable unit a distributor ships: the config, rebuilt into a runner per process.

    ``task(shard, report, cpu_share=None)``: ``report``, if given, is called on the shard's thread
    with a :class:`~any2ds.progress.ShardProgress` when the shard starts and then about every half
    second while samples finish; the distributor carries these to the main process. ``cpu_share``,
    if given, returns how many processing threads the shard may run now (see
    :meth:`~any2ds.Distributor.run`).
    """

    def __init__(self, config: RunConfig, dedicated_workers: bool = False) -> None:
        self.config = config
        self.dedicated_workers = dedicated_workers  # Distributor.dedicated_workers of the run's distributor
        self._config_id = config.digest()

    def runner(self) -> ShardRunner:
        with _RUNNERS_LOCK:
            runner = _RUNNERS.get(self._config_id)
            if runner is None:
                runner = _RUNNERS[self._config_id] = ShardRunner(self.config, self.dedicated_workers)
            return runner

    def __call__(self, shard: Shard, report: Callable[[ShardProgress], None] | None = None,
                 cpu_share: Callable[[], int] | None = None) -> ShardStats:
        return self.runner().run(shard, report, cpu_share)


def close_runners() -> None:
    """Close every runner of this process (end of run, or worker shutdown)."""
    with _RUNNERS_LOCK:
        for runner in _RUNNERS.values():
            runner.close()
        _RUNNERS.clear()
