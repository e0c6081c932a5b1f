"""Throughput and memory of any2ds against img2dataset, side by side, in one run.

Both tools download the same URL list from the same local server (nginx when
installed, else a Python server) with the same flags; the script reports
samples per second, peak memory of the whole process tree, and the ratios.

    python tests/benchmarks/bench_vs_img2dataset.py --img2dataset-python /path/to/venv/bin/python

img2dataset is best installed in its own virtual environment (its pins clash
with any2ds's): ``python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset``.
Not a test: wall-clock figures are noisy on shared machines, so nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def make_corpus(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` photo-like JPEGs of varied sizes (noise over gradients compresses like photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    distinct = min(count, 200)  # serve 200 distinct files under many names: corpus stays small
    for i in range(distinct):
        w, h = int(rng.integers(400, 1200)), int(rng.integers(300, 900))
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (w + h))], -1)
        noise = rng.integers(0, 60, (h, w, 3))
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=85)
    for i in range(count):
        names.append(f"{i % distinct}.jpg?n={i}")
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(folder: Path, work: Path) -> Iterator[tuple[int, str]]:
    """Serve ``folder`` on 127.0.0.1 for the block; yields (port, server kind)."""
    server, port, kind = _start_server(folder, work)
    try:
        yield port, kind
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()


def _start_server(folder: Path, work: Path) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    nginx = shutil.which("nginx") or (Path("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)
    if nginx:
        conf = work / "nginx.conf"
        conf.write_text(textwrap.dedent(f"""
            daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
            events {{ worker_connections 4096; }}
            http {{ access_log off; keepalive_requests 100000; client_body_temp_path {work};
                    proxy_temp_path {work}; fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
                    server {{ listen 127.0.0.1:{port}; root {folder}; }} }}
        """))
        proc = subprocess.Popen([str(nginx), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "nginx"
    else:
        proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                 "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "python http.server"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port, kind


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, peak tree RSS bytes, exit code) of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return elapsed, peak, proc.returncode


def count_successes(out: Path) -> int:
    total = 0
    for stats in out.glob("*_stats.json"):
        total += json.loads(stats.read_text())["successes"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--output-format", default="webdataset")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the tools this many times")
    parser.add_argument("--img2dataset-python", default=os.environ.get("IMG2DATASET_PYTHON"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="any2ds-bench-") as tmp:
        work = Path(tmp)
        names = make_corpus(work / "www", args.count)
        with local_server(work / "www", work) as (port, server_kind):
            compare(args, work, port, server_kind, names)


def compare(args: argparse.Namespace, work: Path, port: int, server_kind: str, names: list[str]) -> None:
    """Run every tool on the same URL list, alternating ``args.rounds`` times; print the figures."""
    urls = work / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:{port}/{n}\n" for n in names))
    flags = ["--url_list", str(urls), "--image_size", str(args.image_size), "--processes_count",
             str(args.processes), "--thread_count", str(args.threads), "--output_format", args.output_format,
             "--number_sample_per_shard", "1000"]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    # The server is on loopback, which any2ds blocks unless allowed (img2dataset has no such check).
    tools = {"any2ds": [sys.executable, "-m", "any2ds", "download", "--allow_private_networks", "true"]}
    if args.img2dataset_python:
        script = "import sys, fire; from img2dataset import download; sys.argv[0]='img2dataset'; fire.Fire(download)"
        tools["img2dataset"] = [args.img2dataset_python, "-c", script]
    results: dict[str, list[tuple[float, int, int]]] = {t: [] for t in tools}
    for _ in range(args.rounds):
        for tool, cmd in tools.items():
            out = work / f"out-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            elapsed, peak, code = timed_run([*cmd, *flags, "--output_folder", str(out)], env)
            results[tool].append((elapsed, peak, count_successes(out) if code == 0 else -1))
    print(f"{args.count} images ({server_kind}), {args.processes} processes x {args.threads} threads, "
          f"size {args.image_size}, {args.output_format}, {os.cpu_count()} cores")
    best = {}
    for tool, runs in results.items():
        elapsed = min(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        best[tool] = (elapsed, peak)
        print(f"  {tool:12s} {args.count / elapsed:8.1f} samples/s  {elapsed:7.2f} s  peak RSS {peak / 2**20:7.0f} MiB"
              f"  successes {runs[-1][2]}")
    if "img2dataset" in best:
        speed = best["img2dataset"][0] / best["any2ds"][0]
        memory = best["any2ds"][1] / best["img2dataset"][1]
        print(f"  ratio: any2ds is {speed:.2f}x img2dataset's throughput, with {memory:.2f}x its peak memory")


if __name__ == "__main__":
    main()
