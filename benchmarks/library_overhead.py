"""What a Pipeline costs per row next to a download() of the same rows, in one process.

Serves a corpus of small JPEGs on 127.0.0.1 from a separate process (its CPU is not counted),
then runs, in turn and ``--repeats`` times, over the same ``--rows`` URLs with the same options
(image_size 64, thread_count 16):

- ``download``: download() of a parquet of the rows, shards run in this process (inprocess), parquet output;
- ``download-dummy``: the same with the dummy writer (no output written);
- ``process``: Pipeline.process(rows), in input order;
- ``as-completed``: Pipeline.process(rows, in_order=False);
- ``process_batch``: Pipeline.process_batch(table) (Arrow in, Arrow out).

Reports the median wall and CPU milliseconds per row of each (CPU: this process, every thread),
and process's difference to download. The Pipeline is built once, outside the timing (its cost
is printed apart), as a library user builds it once. Not a test: figures are noisy on shared
machines.

    python benchmarks/library_overhead.py --rows 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import any2ds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import make_image_corpus  # noqa: E402  (the repository's test corpus)

OPTIONS = {"image_size": 64, "thread_count": 16, "allow_private_networks": True}
SERVER = """
import sys, time
from any2ds.testing import serve_directory
with serve_directory(sys.argv[1]) as server:
    print(server.port, flush=True)
    time.sleep(3600)
"""


def timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="any2ds-library-bench-"))
    corpus = make_image_corpus(work / "images")
    names = [name for name in corpus if name.endswith(".jpg") and name != "not_an_image.jpg"]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(work / "images")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        urls = [f"http://127.0.0.1:{port}/allowed/{names[i % len(names)]}?{i}" for i in range(args.rows)]
        rows = [{"url": url} for url in urls]
        table = pa.table({"url": urls})
        pq.write_table(table, work / "rows.parquet")

        def download(output_format: str):
            return lambda: any2ds.download(url_list=str(work / "rows.parquet"), input_format="parquet",
                                           output_folder=str(work / "out"), output_format=output_format,
                                           distributor="inprocess", observers=[], incremental_mode="overwrite",
                                           **OPTIONS)

        built = time.perf_counter()
        pipeline = any2ds.Pipeline(**OPTIONS)
        built = time.perf_counter() - built
        variants = {
            "download": download("parquet"),
            "download-dummy": download("dummy"),
            "process": lambda: sum(r.ok for r in pipeline.process(rows)),
            "as-completed": lambda: sum(r.ok for r in pipeline.process(rows, in_order=False)),
            "process_batch": lambda: pipeline.process_batch(table),
        }
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for name, run in variants.items():  # warm-up: imports, connections, first thread pools
            run()
        for _ in range(args.repeats):
            for name, run in variants.items():
                figures[name].append(timed(run))
        pipeline.close()
    finally:
        server.kill()
    print(f"{args.rows} rows, {args.repeats} runs each, medians; Pipeline built in {built * 1000:.0f} ms")
    print(f"{'variant':16} {'wall ms/row':>12} {'cpu ms/row':>12}")
    medians = {}
    for name, runs in figures.items():
        wall = statistics.median(w for w, _c in runs) * 1000 / args.rows
        cpu = statistics.median(c for _w, c in runs) * 1000 / args.rows
        medians[name] = (wall, cpu)
        print(f"{name:16} {wall:12.3f} {cpu:12.3f}")
    wall, cpu = (p - d for p, d in zip(medians["process"], medians["download"]))
    print(f"process - download: {wall:+.3f} ms wall, {cpu:+.3f} ms CPU per row")


if __name__ == "__main__":
    main()
