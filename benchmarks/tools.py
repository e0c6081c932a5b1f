"""The two downloaders under test, how to call them with the same settings, and one measured run.

img2dataset 1.47.0 lives in its own virtualenv (its pins clash with any2ds's), made on
first use under ``benchmarks/.venvs/`` (ignored by git); its code is never copied here.
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import psutil

IMG2DATASET_VERSION = "1.47.0"
DEFAULT_VENV = Path(__file__).resolve().parent / ".venvs" / f"img2dataset-{IMG2DATASET_VERSION}"
SAMPLE_SECONDS = 0.1  # how often a run's process tree is sampled for memory
TOOL_NAMES = ("any2ds", "img2dataset")


@attrs.frozen
class Settings:
    """The flags both tools get, with img2dataset's names (issue 14's comparison settings)."""

    thread_count: int = 32
    processes_count: int = 2
    image_size: int = 256
    resize_mode: str = "border"
    encode_format: str = "jpg"
    encode_quality: int = 95
    output_format: str = "webdataset"
    number_sample_per_shard: int = 1000
    timeout: int = 10
    retries: int = 0
    compute_hash: str = "sha256"
    extract_exif: bool = True


@attrs.frozen
class Tool:
    """A downloader: its name, version, the command line that runs it, and its extra environment."""

    name: str
    version: str
    program: tuple[str, ...]
    booleans: tuple[str, str]  # how its command line spells False and True
    environment: dict[str, str] = attrs.field(factory=dict)

    def command(self, url_list: Path, output_folder: Path, settings: Settings) -> list[str]:
        flags = {"url_list": url_list, "output_folder": output_folder, **attrs.asdict(settings)}
        rendered = [f"--{name}={self._value(value)}" for name, value in flags.items()]
        return [*self.program, *rendered]

    def _value(self, value: object) -> str:
        return self.booleans[value] if isinstance(value, bool) else str(value)


@attrs.frozen
class RunFigures:
    """What one run of a tool took and made."""

    tool: str
    rows: int
    thread_count: int
    processes_count: int
    seconds: float
    cpu_seconds: float  # user + system over the whole process tree
    peak_rss_bytes: int  # summed over the process tree, sampled every SAMPLE_SECONDS
    server_cpu_seconds: float
    output_bytes: int
    successes: int
    exit_code: int
    label: str = "main"  # which part of the benchmark: main, scaling, memory
    requests: int | None = None  # requests the server answered during the run (nginx only)
    rss_timeline: list[tuple[float, int]] = attrs.field(factory=list)  # (seconds, bytes); kept for long runs only

    @property
    def images_per_second(self) -> float:
        return self.successes / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_image(self) -> float | None:
        return 1000 * self.cpu_seconds / self.successes if self.successes else None


def any2ds_tool() -> Tool:
    """any2ds from the interpreter running the benchmark; loopback is refused unless allowed.

    Its modules are byte-compiled first, as pip does when it installs a package (img2dataset's
    virtualenv has them): run from a checkout with PYTHONDONTWRITEBYTECODE set, every process of
    every run would otherwise compile about 80 modules again (0.13 s a process).
    """
    import any2ds
    import any2ds_plugins

    for folder in (Path(any2ds.__file__).parent, *map(Path, any2ds_plugins.__path__)):
        compileall.compile_dir(folder, quiet=2)  # quiet: an installed copy may be read-only, and compiled
    return Tool("any2ds", f"{any2ds.__version__} ({_source_revision(Path(any2ds.__file__).parent)})",
                (sys.executable, "-m", "any2ds", "download", "--allow_private_networks=true"), ("false", "true"))


def img2dataset_tool(venv: Path = DEFAULT_VENV) -> Tool:
    """img2dataset 1.47.0 from ``venv``, made and installed there on first use."""
    script = venv / "bin" / "img2dataset"
    if _installed_version(venv) != IMG2DATASET_VERSION:
        print(f"benchmark: installing img2dataset {IMG2DATASET_VERSION} into {venv} (first use only)",
              file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"img2dataset=={IMG2DATASET_VERSION}"], check=True)
    # albumentations (an img2dataset dependency) checks for updates online at import unless told not to.
    return Tool("img2dataset", IMG2DATASET_VERSION, (str(script),), ("False", "True"),
                {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"})


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "img2dataset").exists() or not python.exists():
        return None
    found = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def _source_revision(package_dir: Path) -> str:
    """The last commit that changed the library's code (any2ds/ and plugins/) in the checkout it runs from,
    with ``+changes`` if that code has uncommitted changes; 'installed' outside a checkout."""
    code = [str(package_dir), str(package_dir.parent / "plugins")]
    last = subprocess.run(["git", "-C", str(package_dir), "log", "-1", "--format=%h", "--", *code],
                          capture_output=True, text=True)
    if last.returncode != 0 or not last.stdout.strip():
        return "installed"
    dirty = subprocess.run(["git", "-C", str(package_dir), "status", "--porcelain", "--", *code],
                           capture_output=True, text=True).stdout.strip()
    return last.stdout.strip() + ("+changes" if dirty else "")


def run_tool(tool: Tool, url_list: Path, output_folder: Path, settings: Settings, rows: int, log: Path,
             server: psutil.Process, label: str = "main", keep_timeline: bool = False,
             time_limit: float | None = None, requests_served: Callable[[], int | None] | None = None) -> RunFigures:
    """Run ``tool`` once over ``url_list`` into a fresh ``output_folder`` and measure it.

    CPU time is the RUSAGE_CHILDREN delta across the run: every process of the
    tree is waited for by its parent, so its time is added up to ours when the
    tool exits. Memory is the RSS of the whole tree, sampled every 100 ms.
    """
    shutil.rmtree(output_folder, ignore_errors=True)
    environment = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                   **tool.environment}
    command = tool.command(url_list, output_folder, settings)
    limit = time_limit if time_limit is not None else 300 + rows / 10  # a hang must not stall the benchmark
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = _cpu_seconds(server)
    requests_before = requests_served() if requests_served else None
    with log.open("wb") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            peak, timeline = _watch(process, start, limit, keep_timeline)
        except BaseException:  # Ctrl-C: the tool runs in its own session, so it must be stopped here
            _stop(process)
            raise
        seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        print(f"benchmark: {tool.name} exited with {process.returncode}; end of {log}:\n{tail}", file=sys.stderr)
    requests = None
    if requests_before is not None:
        time.sleep(0.2)  # nginx writes a request's log line after answering it
        requests = requests_served() - requests_before
    return RunFigures(tool.name, rows, settings.thread_count, settings.processes_count, seconds, cpu, peak,
                      _cpu_seconds(server) - server_before, _folder_bytes(output_folder),
                      count_successes(output_folder), process.returncode, label, requests, timeline)


def _watch(process: subprocess.Popen, start: float, limit: float,
           keep_timeline: bool) -> tuple[int, list[tuple[float, int]]]:
    """Sample the tree's memory until ``process`` exits (killing its session after ``limit`` seconds)."""
    root = psutil.Process(process.pid)
    peak, timeline = 0, []
    while process.poll() is None:
        now = time.perf_counter() - start
        if now > limit:
            print(f"benchmark: run over {limit:.0f} s, stopping it", file=sys.stderr)
            _stop(process)
            break
        rss = tree_rss_bytes(root)
        peak = max(peak, rss)
        if keep_timeline:
            timeline.append((round(now, 2), rss))
        time.sleep(SAMPLE_SECONDS)
    return peak, timeline


def _stop(process: subprocess.Popen) -> None:
    """Kill the tool's whole session (its workers included) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def tree_rss_bytes(root: psutil.Process) -> int:
    """Resident memory of ``root`` and all its descendants (processes that vanish while read count 0)."""
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def count_successes(output_folder: Path) -> int:
    """Successful samples, from the per-shard ``*_stats.json`` files both tools write."""
    return sum(json.loads(path.read_text()).get("successes", 0) for path in output_folder.glob("*_stats.json"))


def resolve_tools(names: Sequence[str], venv: Path) -> list[Tool]:
    unknown = sorted(set(names) - set(TOOL_NAMES))
    if unknown:
        raise SystemExit(f"benchmark: unknown tool(s) {', '.join(unknown)}; choose among {', '.join(TOOL_NAMES)}")
    return [any2ds_tool() if name == "any2ds" else img2dataset_tool(venv) for name in names]
