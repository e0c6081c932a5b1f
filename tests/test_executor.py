"""Unit tests of the run path's parts, with fake components: no process, no server.

The shard's intake, the fetch stage (threads and event loop), the processing stage and its
routing, the byte budget, the watchdog, the shard cutter, the pipeline builder and the
metadata bounds.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import soundfile
from PIL import Image

from any2ds import (
    ConfigError, Fetcher, FetchError, FetchResult, KeyFormat, Media, Processor, Reader, Sample, SampleError, Shard,
)
from any2ds.config import CoreOptions, RunConfig
from any2ds.errors import clean_message, status_key
from any2ds.fetching import FetchStage, ReplaceablePool
from any2ds.intake import RowIntake, ShardIntake, is_safe_key
from any2ds.limits import ByteBudget
from any2ds.manager import PluginHost
from any2ds.metadata import TRUNCATION_MARK, MetadataLayout, bound_values
from any2ds.pipeline import SamplePipeline
from any2ds.processing import ProcessingStage
from any2ds.sharding import ShardCutter
from any2ds.types import InputSource, SampleResult
from any2ds.watchdog import Watchdog
from any2ds.worker import SampleFlow, StatsTally
from tests.polling import wait_until

KEYS = KeyFormat(10000, 5)


def samples(n: int, url: str = "http://example.com/{i}") -> list[Sample]:
    return [Sample(KEYS.key(0, i), 0, i, url.format(i=i)) for i in range(n)]


class BytesFetcher(Fetcher):
    """A blocking fetcher: ``size`` bytes per URL; counts calls; can be held on an event."""

    name = "fake"
    schemes = ("http",)

    def __init__(self, size: int = 10, hold: threading.Event | None = None) -> None:
        super().__init__(None)
        self.size = size
        self.hold = hold
        self.calls = 0
        self.lock = threading.Lock()

    def fetch(self, sample: Sample) -> FetchResult:
        with self.lock:
            self.calls += 1
        if self.hold is not None and sample.url.endswith("/hang"):
            self.hold.wait(30)
        return FetchResult(body=b"x" * self.size, url=sample.url)


class Recorder(Processor):
    """Stores the body under ``stream``; optionally blocks until ``gate`` is set."""

    name = "recorder"
    failure_status = "failed_to_record"

    def __init__(self, stream: str = "bin", types: tuple[str, ...] = ("*/*",), gate: threading.Event | None = None,
                 name: str | None = None) -> None:
        super().__init__(None)
        self.stream = stream
        self.media_types = types
        self.gate = gate
        if name:
            self.name = name

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        if fetched.body == b"boom":
            raise ValueError("bad at 0x7f3a4c902610")
        result.media[self.stream] = Media(fetched.body, self.stream)


def flow(fetcher, processors, *, threads=4, cpu=1, budget=10**9, timeout=30.0, routing="chain",
         cpu_share=None) -> SampleFlow:
    core = CoreOptions(url_list="x", thread_count=threads, processing_threads=cpu, max_bytes_in_flight=budget,
                       sample_timeout=timeout)
    return SampleFlow(FetchStage({"http": fetcher}, threads), ProcessingStage([], processors, routing),
                      ReplaceablePool(cpu, "test-cpu"), core, "test", cpu_share=cpu_share)


def collect(results) -> dict[str, SampleResult]:
    """Results by key, in key order (they come in completion order)."""
    return dict(sorted((r.sample.key, r) for r in results))


# -- the byte budget and admission ----------------------------------------------------------------


def test_byte_budget_counts_and_reports_full():
    budget = ByteBudget(100)
    budget.add(60)
    assert not budget.full
    budget.add(60)
    assert budget.full and budget.held == 120 and budget.peak == 120
    budget.release(60)
    assert not budget.full and budget.peak == 120


def test_no_fetch_starts_while_the_budget_is_full():
    """Processing is held, so fetched bodies pile up: fetching must stop near the budget."""
    gate = threading.Event()
    fetcher = BytesFetcher(size=30)
    sample_flow = flow(fetcher, [Recorder(gate=gate)], threads=2, cpu=1, budget=100)
    out: list[SampleResult] = []
    consumer = threading.Thread(target=lambda: out.extend(sample_flow.results(iter(samples(50)))))
    consumer.start()
    time.sleep(1.0)
    # ceil(100 / 30) = 4 bodies fill the budget; at most 2 more were in flight when it filled.
    assert fetcher.calls <= 6, f"{fetcher.calls} fetches started with the budget full"
    gate.set()
    consumer.join(30)
    assert len(out) == 50 and all(r.ok for r in out)
    assert sample_flow.budget.peak <= 100 + 2 * 30
    assert sample_flow.budget.held == 0


@pytest.mark.parametrize("inline", [False, True], ids=["fetched", "inline"])
def test_no_sample_starts_while_thread_count_bodies_wait_for_processing(inline):
    """Processing is held and the byte budget far away: samples stop starting once thread_count
    bodies wait behind the one being processed. Before, all 50 were taken in."""
    gate = threading.Event()
    taken = 0

    def counted(batch):
        nonlocal taken
        for sample in batch:
            taken += 1
            yield sample

    batch = ([Sample(KEYS.key(0, i), 0, i, data=b"x" * 30, filename=f"{i}.bin") for i in range(50)] if inline
             else samples(50))
    sample_flow = flow(BytesFetcher(size=30), [Recorder(gate=gate)], threads=4, cpu=1)
    out: list[SampleResult] = []
    consumer = threading.Thread(target=lambda: out.extend(sample_flow.results(counted(batch))))
    consumer.start()
    time.sleep(1.0)
    taken_while_held = taken
    gate.set()
    consumer.join(30)
    # 1 processing + 4 waiting; fetched ones may also have had 4 fetches in flight when that was reached.
    assert taken_while_held <= (5 if inline else 9), f"{taken_while_held} samples taken in with processing held"
    assert len(out) == 50 and all(r.ok for r in out)


class Slow(Processor):
    """Takes ``seconds`` per sample, off the GIL (as a decoder does)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__(None)
        self.seconds = seconds

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        time.sleep(self.seconds)
        result.media["bin"] = Media(fetched.body, "bin")


def test_while_bodies_queue_for_processing_finished_stages_are_taken_together(monkeypatch):
    """Processing holds the flow back: the flow's thread wakes for several finished stages at a
    time, not once each. The same flow with gathering off is the yardstick (same machine load)."""
    import any2ds.worker as worker

    class CountingFlow(SampleFlow):
        wakes = 0

        def _handle_events(self) -> None:
            self.wakes += 1
            super()._handle_events()

    def wakes(backlog: int) -> int:
        monkeypatch.setattr(worker, "GATHER_BACKLOG", backlog)
        core = CoreOptions(url_list="x", thread_count=16, processing_threads=1)
        sample_flow = CountingFlow(FetchStage({"http": BytesFetcher()}, 16),
                                   ProcessingStage([], [Slow(0.0005)], "chain"), ReplaceablePool(1, "test-cpu"),
                                   core, "test")
        out = list(sample_flow.results(iter(samples(300))))
        assert [r.sample.index for r in out] == list(range(300)) and all(r.ok for r in out)
        return sample_flow.wakes

    gathered, one_by_one = wakes(worker.GATHER_BACKLOG), wakes(10**6)
    assert gathered * 2 < one_by_one, (gathered, one_by_one)


class Shrink(Processor):
    """Stores one byte per sample; holds sample 0 until ``gate`` is set."""

    name = "shrink"

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(None)
        self.gate = gate

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        if result.sample.index == 0:
            self.gate.wait(30)
        result.media["bin"] = Media(b"y", "bin")


def test_processed_results_waiting_in_order_count_their_media_not_their_body():
    """Sample 0 is held in processing; the others are processed and wait behind it, in order. They
    hold one byte each, not their 30-byte bodies, so fetching goes on instead of stopping after
    ceil(100 / 30) of them."""
    gate = threading.Event()
    fetcher = BytesFetcher(size=30)
    sample_flow = flow(fetcher, [Shrink(gate)], threads=2, cpu=2, budget=100)
    out: list[SampleResult] = []
    consumer = threading.Thread(target=lambda: out.extend(sample_flow.results(iter(samples(50)))))
    consumer.start()
    wait_until(lambda: fetcher.calls >= 50, 10)
    assert fetcher.calls == 50 and out == []  # all fetched, none written: sample 0 is first
    assert sample_flow.budget.held == 30 + 49  # sample 0's body, and 49 one-byte results
    gate.set()
    consumer.join(30)
    assert [r.sample.index for r in out] == list(range(50))
    assert sample_flow.budget.held == 0


# -- the fetch stage ------------------------------------------------------------------------------


def test_samples_that_cannot_start_are_failed_rows():
    sample_flow = flow(BytesFetcher(), [Recorder()])
    bad = [Sample("000000000", 0, 0, None), Sample("000000001", 0, 1, "ftp://x/y"),
           Sample("000000002", 0, 2, "http://x", error=SampleError("no media member", error_type="missing"))]
    results = collect(sample_flow.results(iter(bad)))
    assert [(r.error_type, r.error_message) for r in results.values()] == [
        ("missing", "missing url"), ("unsupported", "unsupported URL scheme 'ftp' (enabled: http)"),
        ("missing", "no media member")]


def test_urls_that_cannot_be_parsed_are_failed_rows_and_the_others_go_on():
    """urlsplit raises ValueError on these; each is its own failed row, counted in the shard's stats."""
    bad = ["http://[::1", "http://x]/a", "http://[zz]/a.jpg"]
    batch = [Sample(KEYS.key(0, i), 0, i, url) for i, url in enumerate(["http://ok/0", *bad, "http://ok/4"])]
    results = collect(flow(BytesFetcher(), [Recorder()]).results(iter(batch)))
    assert [(r.status, r.error_type) for r in results.values()] == [
        ("success", None), *[("failed_to_download", "invalid_url")] * 3, ("success", None)]
    assert results["000000001"].error_message == "invalid URL: Invalid IPv6 URL"
    tally = StatsTally()
    for result in results.values():
        tally.add(result)
    assert tally.stats(0).error_types == {"invalid_url": 3}


def test_inline_data_is_not_fetched():
    fetcher = BytesFetcher()
    inline = [Sample(KEYS.key(0, i), 0, i, data=b"abc", filename=f"{i}.bin") for i in range(3)]
    results = collect(flow(fetcher, [Recorder()]).results(iter(inline)))
    assert fetcher.calls == 0 and all(r.media["bin"].data == b"abc" for r in results.values())


def test_fetch_errors_become_rows():
    class Failing(BytesFetcher):
        def fetch(self, sample):
            if sample.index == 1:
                raise FetchError("HTTP Error 404: Not Found", error_type="http_4xx")
            if sample.index == 2:
                raise RuntimeError("plugin bug")
            return super().fetch(sample)

    results = collect(flow(Failing(), [Recorder()]).results(iter(samples(3))))
    assert [r.status for r in results.values()] == ["success", "failed_to_download", "failed_to_download"]
    assert (results["000000002"].error_type, results["000000002"].error_message) == ("unexpected", "RuntimeError: plugin bug")


class SlowAsync(Fetcher):
    """An async fetcher: every fetch sleeps ``delay`` on the event loop; records concurrency."""

    name = "async"
    schemes = ("http",)

    def __init__(self, delay: float) -> None:
        super().__init__(None)
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.threads: set[int] = set()
        self.cancelled = 0

    def fetch(self, sample):
        raise AssertionError("an async fetcher's fetch() is never called")

    async def fetch_async(self, sample):
        self.threads.add(threading.get_ident())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(3600 if sample.url.endswith("/hang") else self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return FetchResult(body=b"async", url=sample.url)


def test_an_async_fetcher_keeps_many_fetches_in_flight_on_one_thread():
    fetcher = SlowAsync(delay=0.5)
    sample_flow = flow(fetcher, [Recorder()], threads=40)
    results = collect(sample_flow.results(iter(samples(40))))
    assert len(results) == 40 and all(r.media["bin"].data == b"async" for r in results.values())
    assert fetcher.peak == 40 and len(fetcher.threads) == 1
    sample_flow.fetching.close()


def test_the_watchdog_looks_over_the_stages_once_per_interval():
    """Every look visits every sample in flight: once per check_interval, not once per event."""

    class Job:
        def __init__(self, started):
            self.started = started

    class Jobs:
        looks = 0

        def __iter__(self):
            Jobs.looks += 1
            return iter([Job(0.0), Job(9.5), Job(None)])

    watchdog = Watchdog(10.0, now=0.0)
    assert watchdog.check_interval == 1.0 and watchdog.wait(0.25) == 0.75
    assert watchdog.overdue(Jobs(), 0.5) == [] and Jobs.looks == 0 and watchdog.wait(1.5) == 0.0
    overdue = watchdog.overdue(Jobs(), 10.5)  # due: the stage started at 0 is 10.5 s old
    assert [job.started for job in overdue] == [0.0] and Jobs.looks == 1 and watchdog.wait(10.5) == 1.0
    assert watchdog.overdue(Jobs(), 11.0) == [] and Jobs.looks == 1  # the next look is at 11.5
    assert Watchdog(0.5, now=0.0).check_interval == 0.05


def test_the_watchdog_cancels_a_stuck_coroutine():
    fetcher = SlowAsync(delay=0.05)
    sample_flow = flow(fetcher, [Recorder()], threads=8, timeout=1.0)
    batch = samples(6) + [Sample(KEYS.key(0, 6), 0, 6, "http://example.com/hang")]
    results = collect(sample_flow.results(iter(batch)))
    stuck = results[KEYS.key(0, 6)]
    assert (stuck.status, stuck.error_type) == ("failed_to_download", "watchdog")
    assert sum(r.ok for r in results.values()) == 6
    time.sleep(0.2)
    assert fetcher.cancelled == 1
    sample_flow.fetching.close()


def test_the_watchdog_abandons_stuck_threads_and_renews_the_pool():
    hold = threading.Event()
    fetcher = BytesFetcher(hold=hold)
    sample_flow = flow(fetcher, [Recorder()], threads=2, timeout=0.5)
    batch = [Sample(KEYS.key(0, i), 0, i, f"http://example.com/{'hang' if i in (0, 1) else i}") for i in range(6)]
    try:
        results = collect(sample_flow.results(iter(batch)))
    finally:
        hold.set()
    assert [results[KEYS.key(0, i)].error_type for i in (0, 1)] == ["watchdog", "watchdog"]
    assert all(results[KEYS.key(0, i)].ok for i in range(2, 6)), "samples queued behind stuck threads must finish"


def test_the_watchdog_fails_a_stuck_processor():
    gate = threading.Event()

    class Stuck(Recorder):
        def process(self, fetched, result):
            if result.sample.index == 0:
                gate.wait(30)
            super().process(fetched, result)

    sample_flow = flow(BytesFetcher(), [Stuck()], cpu=1, timeout=0.5)
    try:
        results = collect(sample_flow.results(iter(samples(4))))
    finally:
        gate.set()
    assert (results[KEYS.key(0, 0)].status, results[KEYS.key(0, 0)].error_type) == ("failed_to_process", "watchdog")
    assert all(results[KEYS.key(0, i)].ok for i in range(1, 4))
    assert sample_flow.budget.held == 0


# -- the processing threads: a share of the machine's cores ----------------------------------------


def test_the_processing_pool_grows_when_its_share_of_the_cores_does():
    """Samples 4 and 5 pass a two-thread barrier: they finish only if two threads process them at once,
    which the one-thread pool can do only once it has grown to the share raised during sample 2."""
    share = [1]
    both = threading.Barrier(2, timeout=10)

    class Pairs(Recorder):
        def process(self, fetched, result):
            if result.sample.index == 2:
                share[0] = 2
            if result.sample.index >= 4:
                both.wait()
            super().process(fetched, result)

    sample_flow = flow(BytesFetcher(), [Pairs()], cpu=1, cpu_share=lambda: share[0])
    results = collect(sample_flow.results(iter(samples(6))))
    assert [results[KEYS.key(0, i)].status for i in range(6)] == ["success"] * 6
    assert sample_flow.cpu_pool.threads == 2
    sample_flow.cpu_pool.close()


def test_a_resized_pool_runs_its_queued_tasks_again_on_its_new_threads():
    pool = ReplaceablePool(1, "test-cpu")
    gate = threading.Event()
    running = pool.submit(lambda: gate.wait(10))
    queued = pool.submit(lambda: "queued")
    pool.resize(2)
    assert queued.cancelled(), "the submitter starts a cancelled task again (SampleFlow._advance)"
    both = threading.Barrier(2, timeout=10)
    pair = [pool.submit(both.wait) for _ in range(2)]  # two at once: the new threads
    assert sorted(f.result(timeout=15) for f in pair) == [0, 1]
    gate.set()
    assert running.result(timeout=10) is True, "a running task ends on its old thread"
    pool.resize(2)  # the same size: nothing changes
    assert pool.submit(lambda: "same").result(timeout=10) == "same"
    pool.close()


def test_a_worker_shares_the_cores_with_the_workers_that_have_a_shard(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    core = CoreOptions(url_list="x", processes_count=4)
    assert [core.cpu_threads(), core.cpu_threads(busy_processes=4), core.cpu_threads(busy_processes=9)] == [2, 2, 2]
    assert [core.cpu_threads(busy_processes=n) for n in (3, 2, 1, 0)] == [2, 4, 8, 8]
    pinned = CoreOptions(url_list="x", processes_count=4, processing_threads=3)
    assert [pinned.cpu_threads(busy_processes=n) for n in (4, 1)] == [3, 3], "processing_threads is kept"


# -- the processing stage and routing -------------------------------------------------------------


def image_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="PNG")
    return out.getvalue()


def wav_bytes() -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(100), 8000, format="WAV")
    return out.getvalue()


def test_routing_by_type_sends_each_sample_to_the_first_taker():
    image = Recorder("img", ("image/*",), name="images")
    audio = Recorder("snd", ("audio/*",), name="sounds")
    anything = Recorder("file", ("*/*",), name="files")
    stage = ProcessingStage([], [image, audio, anything], "by_type")
    bodies = {"png": image_bytes(), "wav": wav_bytes(), "txt": b"plain text"}
    routed = {}
    for name, body in bodies.items():
        result = stage.run(Sample("0", 0, 0, f"http://x/a.{name}"), FetchResult(body, f"http://x/a.{name}"))
        routed[name] = (result.metadata["processor"], list(result.media))
    assert routed == {"png": ("images", ["img"]), "wav": ("sounds", ["snd"]), "txt": ("files", ["file"])}


def test_routing_by_type_passes_over_a_url_that_does_not_parse():
    """An inline sample's URL that urlsplit refuses names no type; its file name still does."""
    stage = ProcessingStage([], [Recorder("snd", ("audio/*",), name="sounds"), Recorder("file", name="files")],
                            "by_type")
    result = stage.run(Sample("0", 0, 0, "http://[::1/a.txt", filename="a.wav"), FetchResult(b"x", "http://[::1/a.txt"))
    assert (result.status, result.metadata.get("processor")) == ("success", "sounds")


def test_chain_runs_every_processor_and_failures_keep_their_status():
    stage = ProcessingStage([], [Recorder("a"), Recorder("b")], "chain")
    ok = stage.run(Sample("0", 0, 0, "u"), FetchResult(b"data", "u"))
    assert list(ok.media) == ["a", "b"] and "processor" not in ok.metadata
    bad = stage.run(Sample("0", 0, 0, "u"), FetchResult(b"boom", "u"))
    assert (bad.status, bad.error_type, bad.error_message) == ("failed_to_record", "unexpected", "ValueError: bad")
    assert not bad.media


def test_no_taker_is_a_failed_row():
    stage = ProcessingStage([], [Recorder("img", ("image/*",))], "by_type")
    result = stage.run(Sample("0", 0, 0, "u"), FetchResult(b"plain text", "u"))
    assert (result.status, result.error_type) == ("failed_to_process", "unsupported")


# -- intake ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, safe", [("000010005", True), ("dir/sub.v2/00001", False), ("a-b_c", True),
                                       ("../x", False), ("/abs", False), ("a.b", False), ("a//b", False),
                                       ("", False), ("x" * 201, False), ("a b", False), ("ü", False)])
def test_safe_keys(key, safe):
    assert is_safe_key(key) is safe


def test_intake_turns_rows_into_samples_and_refuses_unsafe_keys():
    class Source(Reader):
        name = "source"

        def samples(self, shard, keys, columns):
            yield Sample("../../etc/passwd", shard.shard_id, 0, data=b"x")
            yield Sample("fine", shard.shard_id, 1, data=b"y")

    rows = pa.table({"url": ["http://a", "http://b"], "text": ["one", None], "extra": [1, 2]})
    intake = ShardIntake(Source(None), RowIntake(KeyFormat(10, 5), "url", "text", ["extra"]))
    from_rows = list(intake.samples(Shard(3, rows=rows)))
    assert [(s.key, s.url, s.caption, dict(s.columns)) for s in from_rows] == [
        ("000030", "http://a", "one", {"extra": 1}), ("000031", "http://b", None, {"extra": 2})]
    unsafe, fine = intake.samples(Shard(3, work="archive", schema=pa.schema([])))
    assert unsafe.key == "000030" and unsafe.data is None and unsafe.error.error_type == "unsafe_key"
    assert fine.key == "fine"


def test_intake_reads_binary_urls_as_text_and_fails_urls_that_are_not_text():
    """A parquet binary URL column holds bytes; a Pipeline row may hold anything. Either way the
    sample's URL is text, so that nothing downstream (stats per host, metadata) meets another type."""
    intake = RowIntake(KEYS, "url", None, ())
    rows = [{"url": b"http://a/b"}, {"url": b"http://a/\xff"}, {"url": 5}, {"url": None}]
    got = [intake.sample(row, 0, i) for i, row in enumerate(rows)]
    assert [s.url for s in got] == ["http://a/b", "http://a/\\xff", "5", None]
    assert [(s.error.error_type, s.error.message) if s.error else None for s in got] == [
        None, ("invalid_url", "URL is not UTF-8 text"), ("invalid_url", "URL is int, not text"), None]
    results = collect(flow(BytesFetcher(), [Recorder()]).results(iter(got)))
    assert [(r.status, r.error_type) for r in results.values()] == [
        ("success", None), ("failed_to_download", "invalid_url"), ("failed_to_download", "invalid_url"),
        ("failed_to_download", "missing")]
    tally = StatsTally()
    for result in results.values():
        tally.add(result)
    # A SampleReader plugin's sample may still hold bytes: counted, under no host.
    tally.add(SampleResult(Sample("x", 0, 9, b"http://c/d"), "failed_to_download", "HTTP Error 404", "http_4xx"))
    assert tally.stats(0).failed_hosts == {"a": {"invalid_url": 1}}


# -- the shard cutter -----------------------------------------------------------------------------


class ListReader(Reader):
    name = "list"

    def __init__(self, files):
        super().__init__(None)
        self.files = files

    def available_columns(self, source):
        return ["url"]

    def read(self, source, columns, batch_size):
        rows = self.files[source.path]
        for start in range(0, len(rows), 3):
            yield pa.record_batch([pa.array(rows[start:start + 3])], names=["url"])


def test_the_cutter_never_merges_files_and_skips_done_shards():
    files = {"a": [f"a{i}" for i in range(7)], "b": [f"b{i}" for i in range(2)]}
    sources = [InputSource(path, None) for path in files]
    shards = list(ShardCutter(ListReader(files), sources, ["url"], 4))
    assert [(s.shard_id, s.rows.column("url").to_pylist()) for s in shards] == [
        (0, ["a0", "a1", "a2", "a3"]), (1, ["a4", "a5", "a6"]), (2, ["b0", "b1"])]
    resumed = list(ShardCutter(ListReader(files), sources, ["url"], 4, skip={0, 2}, first_id=0))
    assert [s.shard_id for s in resumed] == [1]
    extended = list(ShardCutter(ListReader(files), sources, ["url"], 4, first_id=10))
    assert [s.shard_id for s in extended] == [10, 11, 12]


# -- the pipeline builder --------------------------------------------------------------------------


def build(**core) -> SamplePipeline:
    return SamplePipeline.build(PluginHost.load(), RunConfig(CoreOptions(url_list="x", **core)))


def test_the_pipeline_refuses_duplicates_and_unknown_names():
    with pytest.raises(ConfigError, match="processors: image listed more than once"):
        build(processors=["image", "image"])
    with pytest.raises(ConfigError, match="unknown processor 'imag' \\(did you mean 'image'\\?\\)"):
        build(processors=["imag"])


def test_the_layout_orders_columns_as_img2dataset():
    pipeline = build(input_format="csv", caption_col="text", save_additional_columns=["extra"])
    layout = pipeline.layout(pa.schema([("extra", pa.int64())]))
    assert layout.schema.names == ["extra", "caption", "url", "key", "status", "error_message", "error_type",
                                   "width", "height", "original_width", "original_height", "exif", "sha256"]
    routed = build(routing="by_type", processors=["image", "file"]).layout(pa.schema([]))
    assert routed.schema.names[4:6] == ["error_type", "processor"]


def test_routing_by_type_defaults_to_image_audio_file():
    assert CoreOptions(url_list="x", routing="by_type").processor_names() == ["image", "audio", "file"]
    assert CoreOptions(url_list="x").processor_names() == ["image"]


# -- messages and metadata bounds -----------------------------------------------------------------


def test_messages_lose_addresses_and_per_object_numbers():
    message = "cannot identify image file <_io.BytesIO object at 0x7f3a4c902610>\n second line"
    assert clean_message(message) == "cannot identify image file <_io.BytesIO> second line"
    assert status_key("IncompleteRead(4705 bytes read, 4705 more expected)") == \
        "IncompleteRead(N bytes read, N more expected)"
    assert status_key("HTTP Error 404: Not Found") == "HTTP Error 404: Not Found"
    assert len(clean_message("x" * 10_000)) == 500


def test_bound_values_caps_each_field_and_the_record():
    values = {"key": "k" * 100, "caption": "é" * 1000, "exif": "e" * 50, "n": 5}
    bounded = bound_values(dict(values), max_field_bytes=301, max_total_bytes=10**6)
    assert bounded["caption"].endswith(TRUNCATION_MARK) and len(bounded["caption"].encode()) <= 301
    assert bounded["exif"] == values["exif"] and bounded["key"] == values["key"] and bounded["n"] == 5
    shared = bound_values({"a": "a" * 400, "b": "b" * 400, "c": "c" * 10}, 1000, 500)
    assert sum(len(v) for v in shared.values()) <= 500 and shared["c"] == "c" * 10


def test_records_are_bounded_for_every_writer():
    layout = MetadataLayout.build(pa.schema([("extra", pa.string())]), ["extra"], True, [], [],
                                  max_field_bytes=1000, max_record_bytes=1500)
    sample = Sample("000000000", 0, 0, "http://x", caption="c" * 10**6, columns={"extra": "e" * 10**6})
    record = layout.record(SampleResult(sample))
    assert len(record["caption"]) <= 1000 and record["caption"].endswith(TRUNCATION_MARK)
    assert len(record["caption"]) + len(record["extra"]) + len(record["url"]) + len(record["status"]) <= 1500


# -- the output folder's temporary files -----------------------------------------------------------


def test_temporary_files_of_other_runs_shards_survive_a_start(tmp_path):
    """Machines splitting one folder by offsets start at different times: a run drops only the
    leftovers of done shards, and those of a shard it is about to write."""
    from any2ds.output import OutputFolder

    out = tmp_path / "out"
    (out / "_tmp" / "00001-aaaa").mkdir(parents=True)  # done: left behind after its commit
    (out / "_tmp" / "00003-bbbb").mkdir()  # another machine's shard in progress
    (out / "_tmp" / "00005-cccc").mkdir()  # a crashed attempt at a shard this run will redo
    (out / "00001_stats.json").write_text("{}")
    folder = OutputFolder(str(out), 5)
    assert folder.prepare("incremental") == ({1}, 0)
    assert sorted(p.name for p in (out / "_tmp").iterdir()) == ["00003-bbbb", "00005-cccc"]
    target = folder.target(5)
    assert sorted(p.name for p in (out / "_tmp").iterdir())[0] == "00003-bbbb"
    assert not (out / "_tmp" / "00005-cccc").exists()
    target.abort()
    folder.finish()
    assert (out / "_tmp" / "00003-bbbb").exists()  # not empty: kept


# -- key order -------------------------------------------------------------------------------------


class ShuffledFetcher(BytesFetcher):
    """Later samples finish first: sample i sleeps (n - i) x 20 ms."""

    def __init__(self, n: int) -> None:
        super().__init__(size=10)
        self.n = n

    def fetch(self, sample):
        time.sleep((self.n - sample.index) * 0.02)
        return super().fetch(sample)


def test_results_leave_in_the_samples_order():
    batch = samples(12) + [Sample(KEYS.key(0, 12), 0, 12, None)]  # a sample failed at once, last
    ordered = [r.sample.index for r in flow(ShuffledFetcher(12), [Recorder()], threads=12).results(iter(batch))]
    assert ordered == list(range(13))
    unordered_flow = flow(ShuffledFetcher(12), [Recorder()], threads=12)
    unordered_flow.ordered = False
    unordered = [r.sample.index for r in unordered_flow.results(iter(batch))]
    assert sorted(unordered) == list(range(13)) and unordered != list(range(13))


def test_results_waiting_for_their_turn_stay_within_the_budget():
    """A slow first sample: the others finish and wait, their bytes counted, so fetching stops."""
    gate = threading.Event()

    class SlowFirst(BytesFetcher):
        def fetch(self, sample):
            if sample.index == 0:
                gate.wait(30)
            return super().fetch(sample)

    fetcher = SlowFirst(size=30)
    sample_flow = flow(fetcher, [Recorder()], threads=2, budget=100)
    out: list[SampleResult] = []
    consumer = threading.Thread(target=lambda: out.extend(sample_flow.results(iter(samples(40)))))
    consumer.start()
    time.sleep(1.0)
    assert not out and fetcher.calls <= 1 + 4 + 1, f"{fetcher.calls} fetches behind a stuck first sample"
    gate.set()
    consumer.join(30)
    assert [r.sample.index for r in out] == list(range(40)) and sample_flow.budget.held == 0
