"""The pyspark and ray distributors, on a real local Spark and a real local Ray (no mocks).

Spark's and Ray's worker processes import this module to run ``FlakyTask``;
the ``workers_import_tests`` fixture puts the repository on their PYTHONPATH.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import any2ds
from any2ds.config import CoreOptions, RunConfig
from any2ds.progress import ShardProgress
from any2ds.types import Shard, ShardFailure, ShardStats
from tests.conftest import JPEG_SIZES

ROWS = 23  # 5 shards of 5 rows, the last one short
ROWS_PER_SHARD = 5


class FlakyTask:
    """A picklable stand-in for ShardTask, run in Spark/Ray workers.

    The first run of a shard in ``raise_ids`` raises; the first run of one in
    ``crash_ids`` kills its worker process. Marker files in ``marker_dir``
    remember the first run across processes. Shards in ``slow_ids`` take
    ``SLOW_SECONDS``.
    """

    SLOW_SECONDS = 3.0

    def __init__(self, marker_dir: Path, raise_ids=(), crash_ids=(), slow_ids=()) -> None:
        Path(marker_dir).mkdir(parents=True, exist_ok=True)
        self.marker_dir = str(marker_dir)
        self.raise_ids = frozenset(raise_ids)
        self.crash_ids = frozenset(crash_ids)
        self.slow_ids = frozenset(slow_ids)

    def __call__(self, shard: Shard) -> ShardStats:
        marker = Path(self.marker_dir) / f"{shard.shard_id}.tried"
        if shard.shard_id in self.raise_ids | self.crash_ids and not marker.exists():
            marker.touch()
            if shard.shard_id in self.raise_ids:
                raise RuntimeError(f"boom in shard {shard.shard_id}")
            os._exit(3)
        time.sleep(self.SLOW_SECONDS if shard.shard_id in self.slow_ids else 0.05)
        now = time.time()
        n = shard.rows.num_rows
        return ShardStats(shard.shard_id, n, n, {"success": n}, {}, {"success": n}, now, now)


# Spark's and Ray's worker processes import this module (FlakyTask).
pytestmark = pytest.mark.usefixtures("workers_import_tests")


class ReportingTask:
    """Reports a sample, then waits until the main process has received the report (the test's
    ``progress`` writes a marker file): a shard whose report did not arrive while it ran counts
    no sample. The first run of a shard in ``crash_ids`` kills its worker just after reporting."""

    def __init__(self, marker_dir: Path, crash_ids=()) -> None:
        self.marker_dir = str(marker_dir)
        self.crash_ids = frozenset(crash_ids)

    def __call__(self, shard: Shard, report=None) -> ShardStats:
        report(ShardProgress(shard.shard_id, samples=1, successes=1))
        tried = Path(self.marker_dir) / f"{shard.shard_id}.tried"
        if shard.shard_id in self.crash_ids and not tried.exists():
            tried.touch()
            os._exit(3)
        seen = Path(self.marker_dir) / f"{shard.shard_id}.seen"
        deadline = time.monotonic() + 30
        while not seen.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        n = int(seen.exists())
        now = time.time()
        return ShardStats(shard.shard_id, n, n, {"success": n}, {}, {"success": n}, now, now)


def check_live_reports(distributor, marker_dir: Path, shards: int, crash_ids=()) -> None:
    """Every shard's report reaches ``progress`` in the main process while the shard runs, also
    after a worker died."""
    marker_dir.mkdir()

    def progress(update: ShardProgress) -> None:
        if update.samples:
            (marker_dir / f"{update.shard_id}.seen").touch()

    outcomes = list(distributor.run(make_shards(shards, []), ReportingTask(marker_dir, crash_ids), run_config(),
                                    progress=progress))
    counts = {o.shard_id: o.count for o in outcomes if isinstance(o, ShardStats)}
    assert counts == {shard_id: 1 for shard_id in range(shards)}, outcomes


@pytest.fixture
def input_parquet(tmp_path, http_server) -> tuple[Path, list[str]]:
    names = [name for name, _w, _h in JPEG_SIZES]
    urls = [http_server.url(f"/allowed/{names[i % len(names)]}") for i in range(ROWS - 1)]
    urls.append(http_server.url("/allowed/missing.jpg"))  # a failed sample still gets its metadata row
    path = tmp_path / "input.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(ROWS)]}), path)
    return path, urls


def download(input_file: Path, out: Path, distributor: str, **options) -> dict:
    return any2ds.download(url_list=str(input_file), input_format="parquet", output_folder=str(out),
                           allow_private_networks=True,
                           output_format="webdataset", caption_col="caption", distributor=distributor,
                           processes_count=2, thread_count=4, number_sample_per_shard=ROWS_PER_SHARD,
                           image_size=32, observers=[], **options)


def check_output(out: Path, urls: list[str], summary: dict) -> None:
    shards = -(-len(urls) // ROWS_PER_SHARD)
    assert summary["state"] == "done" and summary["shards_done"] == shards and summary["shards_failed"] == []
    assert summary["count"] == len(urls) and summary["successes"] == len(urls) - 1
    for shard_id in range(shards):
        for suffix in (".tar", ".parquet", "_stats.json"):
            assert (out / f"{shard_id:05d}{suffix}").is_file(), f"{shard_id:05d}{suffix} missing"
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(f"{out}/*_stats.json")]
    assert sum(s["count"] for s in stats) == len(urls)
    metadata = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{out}/[0-9]*.parquet"))]).to_pylist()
    assert sorted(row["url"] for row in metadata) == sorted(urls)
    keys = [row["key"] for row in metadata]
    assert len(set(keys)) == len(keys) == len(urls)
    assert sum(row["status"] == "success" for row in metadata) == len(urls) - 1


def make_shards(count: int, consumed: list[int]) -> Iterator[Shard]:
    """``count`` one-row shards, counting in ``consumed`` how many the distributor has read."""
    for shard_id in range(count):
        consumed.append(shard_id)
        yield Shard(shard_id, pa.table({"url": [f"http://127.0.0.1:9/{shard_id}.jpg"]}))


def run_config() -> RunConfig:
    return RunConfig(core=CoreOptions(url_list="unused", processes_count=2))


def run_rounds(distributor, task: FlakyTask, shards: int, max_read_before_first: int):
    """Round 1 on every shard, then round 2 on the failed ones, as the core does."""
    consumed: list[int] = []
    first: list[ShardStats | ShardFailure] = []
    for outcome in distributor.run(make_shards(shards, consumed), task, run_config()):
        if not first:
            assert len(consumed) <= max_read_before_first, "the input must be read lazily"
        first.append(outcome)
    failed = sorted(o.shard_id for o in first if isinstance(o, ShardFailure))
    retry = [Shard(i, pa.table({"url": ["x"]})) for i in failed]
    second = list(distributor.run(iter(retry), task, run_config()))
    return first, second


def check_rounds(first, second, shards: int, raised: int, crashed: int, slow: int, later: int) -> dict[int, str]:
    order = [o.shard_id for o in first]
    assert sorted(order) == list(range(shards)), "one outcome per shard"
    assert order.index(later) < order.index(slow), f"slow shard {slow} held back shard {later}: {order}"
    failures = {o.shard_id: o.error for o in first if isinstance(o, ShardFailure)}
    assert sorted(failures) == sorted([raised, crashed]), failures  # a crash costs only its own shard
    assert failures[raised] == f"RuntimeError: boom in shard {raised}"
    assert all(isinstance(o, ShardStats) for o in second) and sorted(o.shard_id for o in second) == sorted(failures)
    return failures


# --------------------------------------------------------------------------- multiprocessing


def test_multiprocessing_reports_arrive_while_shards_run_even_after_a_worker_died(tmp_path):
    from any2ds_plugins.multiprocessing import MultiprocessingDistributor

    check_live_reports(MultiprocessingDistributor(None), tmp_path / "markers", 6, crash_ids={2})


# --------------------------------------------------------------------------- pyspark


@pytest.fixture(scope="class")
def pyspark():
    return pytest.importorskip("pyspark")


class TestSpark:
    def test_download_on_own_local_spark(self, pyspark, input_parquet, tmp_path):
        """No active session: the distributor starts local[processes_count] and stops it at the end."""
        input_file, urls = input_parquet
        out = tmp_path / "out"
        summary = download(input_file, out, "pyspark", subjob_size=2)  # 3 jobs, 2 at a time
        check_output(out, urls, summary)
        assert pyspark.SparkContext._active_spark_context is None

    def test_failures_on_active_session(self, pyspark, tmp_path):
        """The active session is used and left running; a raising shard and a crashing one fail alone,
        and a slow shard holds back neither its job's other outcomes nor the next job (shard 3)."""
        from any2ds_plugins.spark import SparkDistributor, SparkOptions
        from pyspark.sql import SparkSession

        session = (SparkSession.builder.master("local[2]").appName("any2ds-tests")
                   .config("spark.ui.enabled", "false").config("spark.pyspark.python", sys.executable)
                   .getOrCreate())
        try:
            distributor = SparkDistributor(SparkOptions(subjob_size=3))
            distributor.check()
            task = FlakyTask(tmp_path, raise_ids={1}, crash_ids={7}, slow_ids={0})
            first, second = run_rounds(distributor, task, 12, max_read_before_first=6)
            distributor.close()
            assert pyspark.SparkContext._active_spark_context is not None, "not ours to stop"
        finally:
            session.stop()
        failures = check_rounds(first, second, 12, raised=1, crashed=7, slow=0, later=3)
        assert failures[7].startswith("Spark task failed: ") and "Python worker exited unexpectedly" in failures[7]


# --------------------------------------------------------------------------- ray


@pytest.fixture(scope="class")
def ray():
    return pytest.importorskip("ray")


class TestRay:
    def test_local_ray(self, ray, input_parquet, tmp_path):
        """One Ray start serves both paths: the distributor starts a local Ray (processes_count CPUs)
        and shuts it down in close(); a run finding Ray running uses it and leaves it running.

        A raising shard and a dead worker fail alone and succeed when retried; outcomes come as
        tasks end, so a slow shard holds back no other.
        """
        from any2ds_plugins.ray import RayDistributor, RayOptions

        distributor = RayDistributor(RayOptions(ray_max_in_flight=4))
        distributor.check()
        try:
            task = FlakyTask(tmp_path / "markers", raise_ids={1}, crash_ids={7}, slow_ids={0})
            first, second = run_rounds(distributor, task, 12, max_read_before_first=5)
            assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
            input_file, urls = input_parquet
            summary = download(input_file, tmp_path / "out", "ray", ray_max_in_flight=3)
            assert ray.is_initialized(), "the download found Ray running: not its to shut down"
            check_live_reports(distributor, tmp_path / "reports", 4)
        finally:
            distributor.close()
        assert not ray.is_initialized()
        failures = check_rounds(first, second, 12, raised=1, crashed=7, slow=0, later=3)
        assert "died" in failures[7] or "Crashed" in failures[7], failures[7]
        check_output(tmp_path / "out", urls, summary)


# --------------------------------------------------------------------------- missing libraries


@pytest.mark.parametrize("distributor, module, message", [
    ("pyspark", "pyspark", "distributor pyspark needs pyspark: pip install 'any2ds[spark]'"),
    ("ray", "ray", "distributor ray needs ray: pip install 'any2ds[ray]'"),
])
def test_missing_library_is_a_startup_error(tmp_path, distributor, module, message):
    """img2dataset's ray distributor silently did nothing without ray; any2ds refuses to start."""
    input_file = tmp_path / "input.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"]}), input_file)
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # import {module} now raises ImportError
        import any2ds
        try:
            any2ds.download(url_list={str(input_file)!r}, input_format="parquet", output_folder={str(out)!r},
                            distributor={distributor!r})
        except any2ds.ConfigError as exc:
            print("ConfigError:", exc)
        else:
            print("no error")
    """)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == f"ConfigError: {message}", result.stdout + result.stderr
    assert not glob.glob(f"{out}/*.tar")
