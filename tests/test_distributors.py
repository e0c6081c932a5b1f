"""The pyspark and ray distributors, on a real local Spark and a real local Ray (no mocks).

Spark's and Ray's worker processes import this module to run ``FlakyTask``;
the ``workers_import_tests`` fixture puts the repository on their PYTHONPATH.
"""

from __future__ import annotations

import glob
import json
import os
import socket
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
from tests.polling import wait_until

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

    def __call__(self, shard: Shard, report=None, cpu_share=None) -> ShardStats:
        report(ShardProgress(shard.shard_id, samples=1, successes=1))
        tried = Path(self.marker_dir) / f"{shard.shard_id}.tried"
        if shard.shard_id in self.crash_ids and not tried.exists():
            tried.touch()
            os._exit(3)
        seen = Path(self.marker_dir) / f"{shard.shard_id}.seen"
        wait_until(seen.exists, 30)
        n = int(seen.exists())
        now = time.time()
        return ShardStats(shard.shard_id, n, n, {"success": n}, {}, {"success": n}, now, now)


class ShareRecordingTask:
    """Shards 0 and 1 wait until both have started (two workers busy) and write the ``cpu_share``
    they see then; shard 0 ends only once shard 1 has read its share (a busy machine may hold
    shard 1's worker back that long); shard 1 then waits (up to 30 s) for its share to change,
    and writes that too."""

    def __init__(self, marker_dir: Path) -> None:
        self.marker_dir = str(marker_dir)

    def __call__(self, shard: Shard, report=None, cpu_share=None) -> ShardStats:
        markers = Path(self.marker_dir)
        if shard.shard_id in (0, 1):
            (markers / f"{shard.shard_id}.started").touch()
            wait_until(lambda: all((markers / f"{i}.started").exists() for i in (0, 1)), 30)
        seen = [cpu_share()]
        if shard.shard_id == 0:
            wait_until((markers / "1.read").exists, 30)
        if shard.shard_id == 1:
            (markers / "1.read").touch()
            wait_until(lambda: cpu_share() != seen[0], 30)
            seen.append(cpu_share())
        (markers / f"{shard.shard_id}.share").write_text(json.dumps(seen))
        now = time.time()
        return ShardStats(shard.shard_id, 1, 1, {"success": 1}, {}, {"success": 1}, now, now)


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


def check_rounds(first, second, shards: int, raised: int, crashed: int, slow: int, later: int,
                 bystanders: bool = False) -> dict[int, str]:
    """``bystanders``: a shard running next to the crash may fail too (it is retried in the next round)."""
    order = [o.shard_id for o in first]
    assert sorted(order) == list(range(shards)), "one outcome per shard"
    assert order.index(later) < order.index(slow), f"slow shard {slow} held back shard {later}: {order}"
    failures = {o.shard_id: o.error for o in first if isinstance(o, ShardFailure)}
    if bystanders:
        assert {raised, crashed} <= set(failures) and len(failures) <= 3, failures
    else:
        assert sorted(failures) == sorted([raised, crashed]), failures  # a crash costs only its own shard
    assert failures[raised] == f"RuntimeError: boom in shard {raised}"
    assert all(isinstance(o, ShardStats) for o in second) and sorted(o.shard_id for o in second) == sorted(failures)
    return failures


# --------------------------------------------------------------------------- multiprocessing


def test_multiprocessing_reports_arrive_while_shards_run_even_after_a_worker_died(tmp_path):
    from any2ds_plugins.multiprocessing import MultiprocessingDistributor

    check_live_reports(MultiprocessingDistributor(None), tmp_path / "markers", 6, crash_ids={2})


def test_multiprocessing_gives_the_cores_of_workers_left_without_a_shard_to_the_last_shards(tmp_path, monkeypatch):
    """8 cores, 2 processes: 4 processing threads each while both have a shard; shard 1, left
    running alone once the others finished, may run 8."""
    from any2ds_plugins.multiprocessing import MultiprocessingDistributor

    monkeypatch.setattr("os.cpu_count", lambda: 8)  # read in this process, which shares the cores out
    outcomes = list(MultiprocessingDistributor(None).run(make_shards(3, []), ShareRecordingTask(tmp_path),
                                                         run_config()))
    assert sorted(o.shard_id for o in outcomes if isinstance(o, ShardStats)) == [0, 1, 2], outcomes
    seen = {i: json.loads((tmp_path / f"{i}.share").read_text()) for i in range(3)}
    assert seen[0] == [4] and seen[1] == [4, 8], seen


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

    def test_failures_on_active_session(self, pyspark, tmp_path, monkeypatch):
        """The active session is used and left running; a raising shard and a crashing one fail alone,
        and a slow shard holds back neither its job's other outcomes nor the next job (shard 3)."""
        from any2ds_plugins.spark import SparkDistributor, SparkOptions
        from pyspark.sql import SparkSession

        monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # read when the session starts
        session = (SparkSession.builder.master("local[2]").appName("any2ds-tests")
                   .config("spark.ui.enabled", "false").getOrCreate())
        try:
            distributor = SparkDistributor(SparkOptions(subjob_size=3))
            distributor.check()
            task = FlakyTask(tmp_path, raise_ids={1}, crash_ids={7}, slow_ids={0})
            first, second = run_rounds(distributor, task, 12, max_read_before_first=6)
            distributor.close()
            assert pyspark.SparkContext._active_spark_context is not None, "not ours to stop"
        finally:
            session.stop()
        # On a loaded machine Spark has reported the slow shard's task as crashed too, the one running
        # beside the crash: retried like any failed shard.
        failures = check_rounds(first, second, 12, raised=1, crashed=7, slow=0, later=3, bystanders=True)
        assert failures[7].startswith("Spark task failed: ") and "Python worker exited unexpectedly" in failures[7]


# --------------------------------------------------------------------------- executors' Python


def user_environment(**variables: str) -> dict[str, str]:
    """This process's environment as a user's shell has it: without the PYTHONPATH this module
    gives workers, and without PYSPARK_PYTHON unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}
    return {**env, **variables}


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A virtual environment with nothing installed, not even any2ds."""
    root = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    lacks = subprocess.run([str(root / "bin" / "python3"), "-c", "import any2ds_plugins"], capture_output=True,
                           env=user_environment(), timeout=60)
    assert lacks.returncode != 0, "the bare venv must not see any2ds_plugins"
    return root


def startup_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line ``any2ds download`` printed for a startup error (exit code 2)."""
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("any2ds: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


class TestExecutorsPython:
    """The case of a user whose any2ds lives in a virtual environment that is not activated."""

    def test_unactivated_venv_on_local_spark(self, pyspark, installed_venv, bare_venv, input_parquet, tmp_path):
        """``/path/to/venv/bin/any2ds --distributor pyspark`` with another python3 first on PATH:
        our local Spark's Python workers run the driver's interpreter, not that python3."""
        input_file, urls = input_parquet
        out = tmp_path / "out"
        result = subprocess.run(
            [str(installed_venv.root / "bin" / "any2ds"), "download", "--url_list", str(input_file),
             "--input_format", "parquet", "--caption_col", "caption", "--output_format", "webdataset",
             "--output_folder", str(out), "--distributor", "pyspark", "--processes_count", "2",
             "--number_sample_per_shard", str(ROWS_PER_SHARD), "--image_size", "32", "--thread_count", "4",
             "--allow_private_networks", "true", "--observers", "[]"],
            env=user_environment(PATH=f"{bare_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"),
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        check_output(out, urls, json.loads((out / "_any2ds" / "run_summary.json").read_text()))

    def test_executors_without_a_plugin(self, pyspark, installed_venv, input_parquet, tmp_path):
        """Executors whose Python lacks a plugin the run uses: one line at startup, no shard run."""
        input_file, _urls = input_parquet
        out = tmp_path / "out"
        result = installed_venv.any2ds(
            "download", "--url_list", str(input_file), "--input_format", "parquet", "--output_folder", str(out),
            "--distributor", "pyspark", "--processors", "[thumbnail]", "--observers", "[]",
            env=user_environment(PYSPARK_PYTHON=sys.executable))  # this interpreter has no thumbnail plugin
        line = startup_error(result)
        assert line.startswith(f"any2ds: error: distributor pyspark: the workers (host {socket.gethostname()}, "
                               f"python {sys.executable}) cannot build the run's components: processors: unknown "
                               "processor 'thumbnail'"), line
        assert "what this machine has: any2ds 0.1.0 (hook spec" in line and "any2ds-thumbnail 0.1.0" in line, line
        assert not out.exists(), "the preflight runs before the output folder is touched"

    def test_executors_without_any2ds(self, pyspark, bare_venv, input_parquet, tmp_path, monkeypatch):
        """A PYSPARK_PYTHON without any2ds cannot even load the preflight task: one ConfigError."""
        input_file, _urls = input_parquet
        monkeypatch.setenv("PYSPARK_PYTHON", str(bare_venv / "bin" / "python"))
        with pytest.raises(any2ds.ConfigError) as error:
            download(input_file, tmp_path / "out", "pyspark")
        message = str(error.value)
        assert message.startswith(f"distributor pyspark: the executors (python {bare_venv / 'bin' / 'python'}, "
                                  "master local[2]) cannot run any2ds: ModuleNotFoundError: No module named "
                                  "'any2ds"), message
        assert "\n" not in message and not (tmp_path / "out").exists()
        assert pyspark.SparkContext._active_spark_context is None, "the run's own Spark is stopped"


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
