"""Figures for the capacity plan of docs/distributed.md, measured on this machine.

- **Distributors**: the same job (``--rows`` rows of the benchmark corpus, image_size 256, webdataset,
  2 processes or cores of 16 threads) on ``multiprocessing``, ``pyspark`` (a local Spark the run
  starts) and ``ray`` (a local Ray the run starts): wall time from the call to its return (engine
  start-up included), the run's own samples/s, and output bytes per sample.
- **DNS**: name lookups per sample, counted in the process (``inprocess`` distributor) with a
  resolver answering 127.0.0.1 for every name under ``.any2ds.test``: a list on one host name, and
  a list whose every row has a host name of its own (a crawl of many sites).
- **Object store**: requests per shard to a loopback S3 (moto), by method, from two runs writing
  2 and 8 shards of ``--shard-rows`` rows (the difference over 6 is the cost of one shard).

    python -m benchmarks.distributed_figures --corpus-dir benchmarks/.cache/corpus-v1-seed0 --rows 2000

Prints a JSON object. Not a test: wall-clock figures are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import any2ds
from benchmarks.corpus import ensure_corpus, write_url_list
from benchmarks.serving import serve

SETTINGS = dict(image_size=256, resize_mode="border", encode_format="jpg", encode_quality=95,
                output_format="webdataset", thread_count=16, processes_count=2, allow_private_networks=True,
                observers=[])
TEST_DOMAIN = ".any2ds.test"
_REQUEST_LINE = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) ')


def distributors(url_list: Path, rows: int, work: Path) -> dict:
    figures = {}
    for name in ("multiprocessing", "pyspark", "ray"):
        out = work / f"out-{name}"
        start = time.perf_counter()
        summary = any2ds.download(url_list=str(url_list), output_folder=str(out), distributor=name,
                                  number_sample_per_shard=max(1, rows // 8), **SETTINGS)
        wall = time.perf_counter() - start
        stored = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and "_any2ds" not in p.parts)
        figures[name] = {"successes": summary["successes"], "wall_seconds": round(wall, 1),
                         "samples_per_second_wall": round(summary["successes"] / wall, 1),
                         "samples_per_second_run": round(summary["samples_per_sec"], 1),
                         "output_bytes_per_sample": round(stored / max(1, summary["successes"]))}
    return figures


@contextlib.contextmanager
def counting_resolver() -> Iterator[Counter]:
    """socket.getaddrinfo answering 127.0.0.1 for names under TEST_DOMAIN, counting every name looked up."""
    real = socket.getaddrinfo
    lookups: Counter = Counter()

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(TEST_DOMAIN):
            lookups[name] += 1
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield lookups
    finally:
        socket.getaddrinfo = real


def dns(names: list[str], port: int, work: Path) -> dict:
    figures = {}
    for label, host_of in (("one_host", lambda i: f"images{TEST_DOMAIN}"),
                           ("host_per_row", lambda i: f"site{i}{TEST_DOMAIN}")):
        url_list = work / f"dns-{label}.txt"
        url_list.write_text("".join(f"http://{host_of(i)}:{port}/{name}\n" for i, name in enumerate(names)))
        with counting_resolver() as lookups:
            summary = any2ds.download(url_list=str(url_list), output_folder=str(work / f"dns-{label}"),
                                      distributor="inprocess", output_format="dummy", image_size=64,
                                      thread_count=16, allow_private_networks=True, observers=[])
        figures[label] = {"samples": summary["count"], "successes": summary["successes"],
                          "lookups": sum(lookups.values()),
                          "lookups_per_sample": round(sum(lookups.values()) / summary["count"], 3)}
    return figures


def object_store(url_list_of, shard_rows: int) -> dict:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    requests: Counter = Counter()

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _REQUEST_LINE.search(record.getMessage())
            if match:
                requests[match.group(1)] += 1

    logger = logging.getLogger("werkzeug")
    handler = Count()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        host, port = server.get_host_and_port()
        options = {"s3": {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench"}}
        import fsspec

        fsspec.filesystem("s3", **options["s3"]).mkdir("bench")
        runs = {}
        for shards in (2, 8):
            requests.clear()
            any2ds.download(url_list=str(url_list_of(shards * shard_rows)), output_folder=f"s3://bench/out-{shards}",
                            number_sample_per_shard=shard_rows, storage_options=options, **SETTINGS)
            runs[shards] = dict(requests)
        per_shard = {method: round((runs[8].get(method, 0) - runs[2].get(method, 0)) / 6, 1)
                     for method in sorted(set(runs[2]) | set(runs[8]))}
        return {"shard_rows": shard_rows, "requests_2_shards": runs[2], "requests_8_shards": runs[8],
                "requests_per_shard": per_shard, "requests_per_shard_total": round(sum(per_shard.values()), 1)}
    finally:
        logger.removeHandler(handler)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, required=True, help="The benchmark corpus (made where missing).")
    parser.add_argument("--rows", type=int, default=2000, help="Rows of the distributor runs.")
    parser.add_argument("--dns-rows", type=int, default=500, help="Rows of each DNS run.")
    parser.add_argument("--shard-rows", type=int, default=100, help="Rows per shard of the object-store runs.")
    args = parser.parse_args()
    names = ensure_corpus(args.corpus_dir, max(args.rows, args.dns_rows, 8 * args.shard_rows))
    with tempfile.TemporaryDirectory(prefix="any2ds-distributed-") as tmp:
        work = Path(tmp)
        with serve(args.corpus_dir, work / "server") as server:
            port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
            figures = {"load_average_start": os.getloadavg()[0],
                       "distributors": distributors(write_url_list(work / "urls.txt", server.base_url,
                                                                   names[:args.rows]), args.rows, work),
                       "dns": dns(names[:args.dns_rows], port, work),
                       "object_store": object_store(
                           lambda rows: write_url_list(work / f"s3-{rows}.txt", server.base_url, names[:rows]),
                           args.shard_rows),
                       "load_average_end": os.getloadavg()[0]}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
