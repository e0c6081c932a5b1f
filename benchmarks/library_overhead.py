"""What a Pipeline costs per row next to a download() of the same rows, in one process.

Serves the benchmark's corpus of web-like JPEGs (benchmarks.corpus) with nginx on 127.0.0.1
(benchmarks.serving: a separate process, its CPU not counted), then runs, in turn and
``--repeats`` times, over the same ``--rows`` URLs with the same options (image_size 256,
thread_count 16, the defaults otherwise):

- ``download``: download() of a parquet of the rows, shards run in this process (inprocess), parquet output;
- ``download-dummy``: the same with the dummy writer (nothing written);
- ``process``: Pipeline.process(rows), in input order;
- ``as-completed``: Pipeline.process(rows, in_order=False);
- ``process_batch``: Pipeline.process_batch(table): Arrow in, Arrow out.

Prints the median wall and CPU milliseconds per row of each (CPU: this process, every thread) and
process's difference to download. The Pipeline is built once, outside the timing (its cost is
printed apart), as a library user builds it once. Not a test: figures are noisy on shared machines.

    python -m benchmarks.library_overhead --rows 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import any2ds  # noqa: E402
from benchmarks import corpus  # noqa: E402
from benchmarks.serving import serve  # noqa: E402

OPTIONS = {"image_size": 256, "thread_count": 16, "allow_private_networks": True}


def timed(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--images", type=int, default=500, help="distinct images, cycled over the rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="any2ds-library-bench-"))
    images = corpus.default_cache_dir(0)
    names = corpus.ensure_corpus(images, args.images)
    with serve(images, work / "server") as server:
        urls = [f"{server.base_url}/{path}" for path in corpus.cycled_rows(names, args.rows)]
        rows = [{"url": url} for url in urls]
        table = pa.table({"url": urls})
        pq.write_table(table, work / "rows.parquet")

        def download(output_format: str) -> Callable[[], object]:
            return lambda: any2ds.download(url_list=str(work / "rows.parquet"), input_format="parquet",
                                           output_folder=str(work / "out"), output_format=output_format,
                                           distributor="inprocess", observers=[], incremental_mode="overwrite",
                                           **OPTIONS)

        built = time.perf_counter()
        pipeline = any2ds.Pipeline(**OPTIONS)
        built = time.perf_counter() - built
        variants: dict[str, Callable[[], object]] = {
            "download": download("parquet"),
            "download-dummy": download("dummy"),
            "process": lambda: sum(r.ok for r in pipeline.process(rows)),
            "as-completed": lambda: sum(r.ok for r in pipeline.process(rows, in_order=False)),
            "process_batch": lambda: pipeline.process_batch(table),
        }
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up: imports, connections, thread pools
            run()
        for _ in range(args.repeats):
            for name, run in variants.items():
                figures[name].append(timed(run))
        pipeline.close()
    print(f"{args.rows} rows over {args.images} images ({server.kind}), {args.repeats} runs each, medians; "
          f"Pipeline built in {built * 1000:.0f} ms")
    print("| variant | wall ms/row | CPU ms/row |\n|---|---|---|")
    medians = {}
    for name, runs in figures.items():
        medians[name] = [statistics.median(figure[i] for figure in runs) * 1000 / args.rows for i in (0, 1)]
        print(f"| {name} | {medians[name][0]:.3f} | {medians[name][1]:.3f} |")
    wall, cpu = (p - d for p, d in zip(medians["process"], medians["download"]))
    print(f"process - download: {wall:+.3f} ms wall, {cpu:+.3f} ms CPU per row")


if __name__ == "__main__":
    main()
