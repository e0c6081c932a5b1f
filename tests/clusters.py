"""Real multi-node clusters on this machine, for the tests: a Spark standalone master with its
workers, and a Ray head with a second node, each node a process group of its own.

Every process is started in a new session, so that stopping a node (or killing it, as a
machine dies) ends its whole process tree: the Spark worker with its executor and Python
workers, the Ray node with its raylet and workers. ``stop()`` ends every group it started and
nothing else (``ray stop`` would end every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.polling import wait_until

STARTUP_SECONDS = 300  # JVMs and raylets start slowly on a loaded 2-core machine
STOP_GRACE_SECONDS = 5


class NodeProcess:
    """One process started in a session of its own, its output in ``log``."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.command = command
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, text: str, what: str) -> None:
        """Wait until the log shows ``text``; RuntimeError with the log's end if the process
        exits or STARTUP_SECONDS pass first."""
        def shown() -> bool:
            return text in self.log.read_text(errors="replace")

        wait_until(lambda: shown() or not self.alive(), STARTUP_SECONDS, 0.5)
        if not shown():
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} did not start ({' '.join(self.command[:3])}...):\n{tail}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the node dies at once, as a machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_GRACE_SECONDS)
        self.kill()


@contextlib.contextmanager
def running(cluster: SparkStandalone | RayCluster) -> Iterator[Any]:
    """``cluster`` started for the block and stopped after it, also when it fails to start."""
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SparkStandalone:
    """A Spark standalone master and ``workers`` workers (1 core, 1 GiB each) on 127.0.0.1,
    started with ``spark-class`` from the pyspark package."""

    def __init__(self, root: Path, workers: int = 2) -> None:
        import pyspark

        self.root = root
        self.home = Path(pyspark.__file__).parent
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SPARK_HOME": str(self.home), "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_DAEMON_MEMORY": "256m", "SPARK_LOG_DIR": str(root)}
        self.master: NodeProcess | None = None
        self.workers: list[NodeProcess | None] = [None] * workers
        self._starts = 0

    def start(self) -> None:
        self.master = self._spark_class("master", "org.apache.spark.deploy.master.Master",
                                        "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", "0")
        self.master.wait_for("I have been elected leader", "the Spark master")
        self.ensure_workers()

    def ensure_workers(self) -> None:
        """Start every worker not running (the first time, or after a test killed one)."""
        started = []
        for index, worker in enumerate(self.workers):
            if worker is None or not worker.alive():
                self.workers[index] = worker = self._spark_class(
                    f"worker{index}", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                    "--cores", "1", "--memory", "1g", "--webui-port", "0",
                    "--work-dir", str(self.root / f"work{index}"))
                started.append(worker)
        for worker in started:
            worker.wait_for("Successfully registered with master", "a Spark worker")

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A SparkSession on this cluster whose executors (one per worker) are all up; its Python
        workers run this interpreter, set as a user sets it: PYSPARK_PYTHON."""
        from pyspark.sql import SparkSession

        self.ensure_workers()
        builder = (SparkSession.builder.master(self.url).appName("any2ds-cluster-tests")
                   .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.executor.memory", "512m").config("spark.executor.cores", "1")
                   .config("spark.cores.max", str(len(self.workers))).config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false"))
        previous = os.environ.get("PYSPARK_PYTHON")
        os.environ["PYSPARK_PYTHON"] = sys.executable
        try:
            session = builder.getOrCreate()
        finally:
            if previous is None:
                del os.environ["PYSPARK_PYTHON"]
            else:
                os.environ["PYSPARK_PYTHON"] = previous
        try:
            def executors() -> int:
                return session.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1  # the driver is one

            if not wait_until(lambda: executors() >= len(self.workers), STARTUP_SECONDS, 0.5):
                raise RuntimeError(f"only {executors()} executors registered")
            yield session
        finally:
            session.stop()

    def stop(self) -> None:
        for node in [*self.workers, self.master]:
            if node is not None:
                node.stop()

    def _spark_class(self, name: str, *arguments: str) -> NodeProcess:
        self._starts += 1
        return NodeProcess([str(self.home / "bin" / "spark-class"), *arguments],
                           self.root / f"{name}-{self._starts}.log", self.env)


class RayCluster:
    """A Ray head and a second Ray node, one CPU each, started with ``ray start --block`` by this
    interpreter (so that their workers run it too).

    Ray gives its nodes the machine's address even when asked for 127.0.0.1. Token
    authentication is off: a token file left in ~/.ray by another Ray must not matter.
    """

    ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def __init__(self, root: Path) -> None:
        self.root = root
        # Ray's socket paths live under its temp dir and must stay short (AF_UNIX limit).
        self.temp_dir = tempfile.mkdtemp(prefix="any2ds-ray-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **self.ENV}
        self.nodes: list[NodeProcess] = []

    def start(self) -> None:
        common = ["--block", "--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        self.nodes.append(self._ray_start("head", "--head", "--port", str(self.port), "--include-dashboard",
                                          "false", "--temp-dir", self.temp_dir, *common))
        self.nodes[0].wait_for("Ray runtime started", "the Ray head")
        self.nodes.append(self._ray_start("node", "--address", self.address, *common))
        self.nodes[1].wait_for("Ray runtime started", "the second Ray node")

    def wait_for_cpus(self, ray: Any, cpus: int) -> None:
        """Wait until a connected driver sees ``cpus`` CPUs (both nodes registered)."""
        if not wait_until(lambda: ray.cluster_resources().get("CPU", 0) >= cpus, STARTUP_SECONDS, 0.5):
            raise RuntimeError(f"the Ray cluster has {ray.cluster_resources()} after {STARTUP_SECONDS} s")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _ray_start(self, name: str, *arguments: str) -> NodeProcess:
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", *arguments]
        return NodeProcess(command, self.root / f"ray-{name}.log", self.env)
