"""The pyspark and ray distributors on real multi-node clusters started on this machine (slow).

A Spark standalone master with two workers, and a Ray head with a second node, each node a
group of processes of its own (tests/clusters.py). The same job gives the same dataset on
each as on multiprocessing; a Spark node killed in the middle of a run costs no shard; Ray
nodes without a plugin the run uses stop it at startup with one line.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from any2ds.testing import read_dataset, send_bytes, serve_directory
from tests.clusters import STARTUP_SECONDS, RayCluster, SparkStandalone, running
from tests.conftest import JPEG_SIZES
from tests.polling import wait_until
from tests.test_distributors import ROWS, ROWS_PER_SHARD, check_output, download, startup_error, user_environment

pytestmark = pytest.mark.slow

NAMES = [name for name, _w, _h in JPEG_SIZES]
GATE_SECONDS = 120  # how long a gated request waits at most, so that a broken test cannot hang


@pytest.fixture(scope="module")
def job(tmp_path_factory, http_server) -> tuple[Path, list[str]]:
    """The job every engine runs: 23 rows (a missing picture among them) in 5 shards."""
    urls = [http_server.url(f"/allowed/{NAMES[i % len(NAMES)]}") for i in range(ROWS - 1)]
    urls.append(http_server.url("/allowed/missing.jpg"))
    path = tmp_path_factory.mktemp("job") / "input.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(ROWS)]}), path)
    return path, urls


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """The job's dataset as the multiprocessing distributor makes it."""
    out = tmp_path_factory.mktemp("reference") / "out"
    check_output(out, job[1], download(job[0], out, "multiprocessing"))
    return read_dataset(out)


def check_same_dataset(out: Path, reference) -> None:
    """The same metadata rows and the same stored bytes per key (tar member order aside)."""
    dataset = read_dataset(out)
    assert sorted(dataset.rows, key=lambda row: row["key"]) == sorted(reference.rows, key=lambda row: row["key"])
    assert dataset.samples == reference.samples


# --------------------------------------------------------------------------- Spark standalone


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("a Spark standalone cluster needs java on PATH")
    with running(SparkStandalone(tmp_path_factory.mktemp("spark"))) as cluster:
        yield cluster


class TestSparkStandalone:
    def test_same_dataset_as_multiprocessing(self, spark_cluster, job, reference, tmp_path):
        out = tmp_path / "out"
        with spark_cluster.session():
            summary = download(job[0], out, "pyspark", subjob_size=2)
        check_output(out, job[1], summary)
        check_same_dataset(out, reference)

    def test_a_worker_killed_mid_run_costs_no_shard(self, spark_cluster, image_dir, tmp_path):
        """Both executors hold a shard whose fetches wait at a gate; one worker's whole process
        group (worker, executor, Python workers) is SIGKILLed, then the gate opens: Spark runs
        the lost shard again on the other worker and every shard is committed once."""
        gate = threading.Event()
        shards_in_flight: set[int] = set()
        fetches: Counter[int] = Counter()

        def gated(request) -> None:
            index, name = unquote(urlsplit(request.path).path).split("/")[2:4]
            fetches[int(index)] += 1
            shards_in_flight.add(int(index) // ROWS_PER_SHARD)
            gate.wait(GATE_SECONDS)
            send_bytes(request, (image_dir / name).read_bytes(), "image/jpeg")

        with serve_directory(image_dir) as server:
            server.route("/gate/", gated)
            urls = [server.url(f"/gate/{i}/{NAMES[i % len(NAMES)]}") for i in range(6 * ROWS_PER_SHARD)]
            input_file = tmp_path / "input.parquet"
            pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))]}),
                           input_file)
            out = tmp_path / "out"
            outcome: dict = {}

            def run() -> None:
                try:
                    outcome["summary"] = download(input_file, out, "pyspark", subjob_size=3)
                except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
                    outcome["error"] = exc

            with spark_cluster.session():
                runner = threading.Thread(target=run)
                runner.start()
                try:
                    wait_until(lambda: len(shards_in_flight) >= 2 or not runner.is_alive(), STARTUP_SECONDS, 0.2)
                    assert len(shards_in_flight) == 2, f"both executors should hold a shard: {shards_in_flight}"
                    spark_cluster.workers[0].kill()
                finally:
                    gate.set()
                    runner.join(STARTUP_SECONDS)
        assert "error" not in outcome, outcome.get("error")
        summary = outcome["summary"]
        assert summary["shards_failed"] == [], summary
        assert summary["shards_done"] == 6 and summary["count"] == len(urls) == summary["successes"]
        stats = sorted(path.name for path in out.glob("*_stats.json"))
        assert stats == [f"{shard:05d}_stats.json" for shard in range(6)]
        dataset = read_dataset(out)
        keys = [row["key"] for row in dataset.rows]
        assert len(keys) == len(set(keys)) == len(urls) and sorted(dataset.samples) == sorted(keys)
        assert not (out / "_tmp").exists(), "no attempt of the lost shard is left behind"
        refetched = {index // ROWS_PER_SHARD for index, count in fetches.items() if count > 1}
        assert len(refetched) == 1, f"the killed worker's shard, and it alone, runs again: {fetches}"


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    pytest.importorskip("ray")
    with running(RayCluster(tmp_path_factory.mktemp("ray"))) as cluster:
        yield cluster


class TestRayCluster:
    def test_same_dataset_as_multiprocessing(self, ray_cluster, job, reference, tmp_path, monkeypatch):
        import ray

        for name, value in {**RayCluster.ENV, "RAY_ADDRESS": ray_cluster.address}.items():
            monkeypatch.setenv(name, value)
        out = tmp_path / "out"
        ray.init()
        try:
            ray_cluster.wait_for_cpus(ray, 2)
            summary = download(job[0], out, "ray")
            nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        finally:
            ray.shutdown()
        assert len(nodes) == 2
        check_output(out, job[1], summary)
        check_same_dataset(out, reference)

    def test_nodes_without_a_plugin_stop_the_run_at_once(self, ray_cluster, installed_venv, job, tmp_path):
        """The driver's venv has the thumbnail plugin; the nodes' Python (this one) does not."""
        out = tmp_path / "out"
        result = installed_venv.any2ds(
            "download", "--url_list", str(job[0]), "--input_format", "parquet", "--output_folder", str(out),
            "--distributor", "ray", "--processors", "[thumbnail]", "--observers", "[]",
            env=user_environment(**RayCluster.ENV, RAY_ADDRESS=ray_cluster.address))
        line = startup_error(result)
        assert line.startswith(f"any2ds: error: distributor ray: the workers (host {socket.gethostname()}, python "
                               f"{sys.executable}) cannot build the run's components: processors: unknown processor "
                               "'thumbnail'"), line
        assert "any2ds-thumbnail 0.1.0" in line, line
        assert not out.exists(), "the preflight runs before the output folder is touched"
