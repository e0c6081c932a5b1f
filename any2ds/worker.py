"""Running one shard inside a worker process.

Fetching runs on ``thread_count`` threads; the CPU-heavy part of each sample
(verify, decode, resize, encode) runs on the same threads but at most
``processing_threads`` at a time, so every core decodes in parallel (Pillow,
OpenCV and hashlib release the GIL) without hundreds of threads fighting for
them. The shard's own thread only writes, so writers need not be thread-safe.
"""

from __future__ import annotations

import hashlib
import mimetypes
import pickle
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from urllib.parse import urlsplit

import attrs

from any2ds.components import Processor
from any2ds.config import RunConfig
from any2ds.errors import FetchError, ProcessError, SampleError
from any2ds.limits import WorkerLimits
from any2ds.manager import PluginHost
from any2ds.output import OutputFolder
from any2ds.pipeline import SamplePipeline
from any2ds.types import FetchResult, KeyFormat, Sample, SampleResult, Shard, ShardStats


class ShardRunner:
    """Runs shards for one process: plugins, thread pool and output built once, reused per shard."""

    def __init__(self, config: RunConfig, host: PluginHost | None = None) -> None:
        self.config = config
        host = host or PluginHost.load(local_plugins=config.core.plugins or ())
        self.pipeline = SamplePipeline.build(host, config)
        self.output = OutputFolder(config.core.output_folder, config.core.oom_shard_count)
        self._fetch_threads = self._new_thread_pool()
        self._abandoned_threads = 0
        self._limits = self._new_limits()

    def run(self, shard: Shard) -> ShardStats:
        """Fetch, process and write every row of ``shard``, then commit it atomically."""
        start = time.time()
        layout = self.pipeline.layout(shard.column_schema)
        target = self.output.target(shard.shard_id)
        writer = None
        statuses: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        error_types: Counter[str] = Counter()
        try:
            writer = self.pipeline.writer.open_shard(target, layout)
            for result in self._results(shard):
                writer.write(result)
                statuses[result.status] += 1
                messages[result.error_message if result.error_message is not None else result.status] += 1
                if result.error_type:
                    error_types[result.error_type] += 1
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            target.abort()
            raise
        stats = ShardStats(shard_id=shard.shard_id, count=sum(statuses.values()), successes=statuses["success"],
                           status_dict=dict(messages), error_types=dict(error_types), statuses=dict(statuses),
                           start_time=start, end_time=time.time())
        target.commit(stats.to_json())
        return stats

    def _samples(self, shard: Shard) -> Iterator[Sample]:
        core = self.config.core
        keys = KeyFormat(core.number_sample_per_shard, core.oom_shard_count)
        if shard.rows is None:
            yield from self.pipeline.reader.samples(shard, keys, self.pipeline.sample_columns())
            return
        url_col = core.url_col
        caption_col = core.caption_col if self.pipeline.has_caption else None
        for index, row in enumerate(shard.rows.to_pylist()):
            url = row.pop(url_col)
            caption = row.pop(caption_col) if caption_col else None
            yield Sample(key=keys.key(shard.shard_id, index), shard_id=shard.shard_id, index=index, url=url,
                         caption=None if caption is None else str(caption), columns=row)

    def _results(self, shard: Shard) -> Iterator[SampleResult]:
        """Sample results in completion order, at most 2 x thread_count samples in flight.

        The watchdog: a sample still running ``sample_timeout`` seconds after it
        started is recorded as failed and its thread abandoned, so no plugin can
        hold a shard for ever. When half the threads are abandoned the pool is
        replaced and the samples still queued move to the new one.
        """
        window = 2 * self.config.core.thread_count
        samples = self._samples(shard)
        in_flight: dict[Future[SampleResult], _Attempt] = {}
        more = True
        while more or in_flight:
            while more and len(in_flight) < window:
                sample = next(samples, None)
                if sample is None:
                    more = False
                else:
                    attempt = _Attempt(sample)
                    in_flight[self._fetch_threads.submit(self.process_sample, attempt)] = attempt
            if not in_flight:
                break
            done, _ = wait(in_flight, timeout=self._watchdog_wait(in_flight.values()), return_when=FIRST_COMPLETED)
            for future in done:
                if not future.cancelled():
                    del in_flight[future]
                    yield future.result()
            yield from self._expire(in_flight)


    def _watchdog_wait(self, attempts: Iterable[_Attempt]) -> float:
        limit = self.config.core.sample_timeout
        started = [a.started for a in attempts if a.started is not None]
        if not started:
            return limit
        return min(max(min(started) + limit - time.monotonic(), 0.05), limit)

    def _expire(self, in_flight: dict[Future[SampleResult], _Attempt]) -> Iterator[SampleResult]:
        limit = self.config.core.sample_timeout
        now = time.monotonic()
        for future, attempt in list(in_flight.items()):
            if attempt.started is not None and now - attempt.started > limit and not future.done():
                del in_flight[future]
                self._abandoned_threads += 1
                if attempt.limits is self._limits:
                    # The stuck thread may hold a CPU slot and body bytes for ever: start afresh.
                    self._limits = self._new_limits()
                yield _failed(attempt.sample, "failed_to_download",
                              f"sample did not finish within sample_timeout={limit:g} s", "Watchdog")
        if self._abandoned_threads >= max(1, self.config.core.thread_count // 2):
            self._replace_thread_pool(in_flight)

    def _replace_thread_pool(self, in_flight: dict[Future[SampleResult], _Attempt]) -> None:
        old = self._fetch_threads
        self._fetch_threads = self._new_thread_pool()
        self._abandoned_threads = 0
        old.shutdown(wait=False, cancel_futures=True)  # stuck threads are left to die on their own
        for future, attempt in list(in_flight.items()):
            if future.cancelled():
                del in_flight[future]
                in_flight[self._fetch_threads.submit(self.process_sample, attempt)] = attempt

    def _new_limits(self) -> WorkerLimits:
        return WorkerLimits(self.config.core.cpu_threads(), self.config.core.max_bytes_in_flight)

    def _new_thread_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.config.core.thread_count, thread_name_prefix="any2ds-fetch")

    def process_sample(self, attempt: _Attempt) -> SampleResult:
        """Fetch, verify and process one sample; any failure becomes the result's status."""
        attempt.started = time.monotonic()
        sample = attempt.sample
        result = SampleResult(sample)
        stage_status = "failed_to_download"
        try:
            if sample.error is not None:
                raise sample.error
            fetched = _inline(sample) if sample.data is not None else self._fetcher_for(sample.url).fetch(sample)
            limits = attempt.limits = self._limits
            with limits.body_budget.reserve(len(fetched.body)), limits.cpu_slots:
                for verifier in self.pipeline.verifiers:
                    result.metadata.update(verifier.verify(sample, fetched))
                for processor in self.pipeline.processors:
                    stage_status = processor.failure_status
                    processor.process(fetched, result)
                    _check_extensions(result, processor)
        except SampleError as error:
            return _failed(sample, error.status, error.message, error.error_type)
        except Exception as error:  # a plugin bug must cost one sample, not the shard
            return _failed(sample, stage_status, str(error) or type(error).__name__, type(error).__name__)
        return result

    def _fetcher_for(self, url: str | None):
        if url is None or not str(url).strip():
            raise FetchError("missing url", error_type="MissingURL")
        scheme = urlsplit(str(url).strip()).scheme.lower()
        fetcher = self.pipeline.fetchers.get(scheme)
        if fetcher is None:
            enabled = ", ".join(sorted(self.pipeline.fetchers)) or "none"
            raise FetchError(f"unsupported URL scheme {scheme!r} (enabled: {enabled})", error_type="UnsupportedScheme")
        return fetcher

    def close(self) -> None:
        # Not waiting: a thread the watchdog abandoned may never return.
        self._fetch_threads.shutdown(wait=False, cancel_futures=True)
        self.pipeline.close()


@attrs.define
class _Attempt:
    """A sample handed to the thread pool; ``started`` is set when a thread picks it up,
    ``limits`` to the limits it took CPU slots and body bytes from."""

    sample: Sample
    started: float | None = None
    limits: WorkerLimits | None = None


# A media extension ends up in file and tar member names: letters and digits,
# dot-separated (``jpg``, ``thumb.jpg``), so no path can be smuggled through it.
_SAFE_EXTENSION = re.compile(r"[A-Za-z0-9]{1,16}(\.[A-Za-z0-9]{1,16}){0,3}")


def _check_extensions(result: SampleResult, processor: Processor) -> None:
    for stream, media in result.media.items():
        if not _SAFE_EXTENSION.fullmatch(media.extension):
            raise ProcessError(f"processor {processor.name!r} gave stream {stream!r} the unsafe extension "
                               f"{media.extension!r}", status=processor.failure_status, error_type="UnsafeExtension")


def _inline(sample: Sample) -> FetchResult:
    """The FetchResult of a sample that brought its bytes: nothing to fetch."""
    content_type = mimetypes.guess_type(sample.filename)[0] if sample.filename else None
    return FetchResult(body=sample.data, url=sample.url or sample.filename or "", content_type=content_type,
                       attempts=0)


def _failed(sample: Sample, status: str, message: str, error_type: str) -> SampleResult:
    return SampleResult(sample, status=status, error_message=message, error_type=error_type)


_RUNNERS: dict[str, ShardRunner] = {}
_RUNNERS_LOCK = threading.Lock()


class ShardTask:
    """The picklable unit a distributor ships: the config, rebuilt into a runner per process."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._config_id = hashlib.sha256(pickle.dumps(config)).hexdigest()

    def runner(self) -> ShardRunner:
        with _RUNNERS_LOCK:
            runner = _RUNNERS.get(self._config_id)
            if runner is None:
                runner = _RUNNERS[self._config_id] = ShardRunner(self.config)
            return runner

    def __call__(self, shard: Shard) -> ShardStats:
        return self.runner().run(shard)


def close_runners() -> None:
    """Close every runner of this process (end of run, or worker shutdown)."""
    with _RUNNERS_LOCK:
        for runner in _RUNNERS.values():
            runner.close()
        _RUNNERS.clear()
