"""``any2ds report`` on a large output folder: time, peak memory and bytes read.

Builds a folder of SHARDS shards in the ``parquet`` output layout (metadata and a binary media
column in each ``<shard>.parquet``), ROWS rows each, from a few distinct shard files hard-linked
over and over (so that 10,000 shards of 20 MB cost no disk), each with its own stats file, then
runs the report in a subprocess and prints its wall time, peak RSS and the bytes it read
(``rchar`` of /proc/<pid>/io: every byte read through a system call, page cache included).

    python benchmarks/report_bench.py --shards 10000 --rows 1000 --media-bytes 20000

Not a test: wall-clock figures are noisy on shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VARIANTS = 8  # distinct shard files, so that hosts and sizes differ between shards


def shard_table(rows: int, media_bytes: int, rng: np.random.Generator) -> pa.Table:
    hosts = rng.integers(0, 200_000, rows)
    ok = rng.random(rows) < 0.8
    return pa.table({
        "url": [f"https://cdn{h}.example.com/images/{i}.jpg" for i, h in enumerate(hosts)],
        "key": [f"{i:09d}" for i in range(rows)],
        "status": np.where(ok, "success", "failed_to_download").tolist(),
        "error_message": [None if s else "HTTP Error 404: Not Found" for s in ok],
        "error_type": [None if s else "http_4xx" for s in ok],
        "width": pa.array(rng.integers(64, 4000, rows), pa.int32(), mask=~ok),
        "height": pa.array(rng.integers(64, 4000, rows), pa.int32(), mask=~ok),
        "jpg": pa.array([rng.bytes(media_bytes) if s else None for s in ok], pa.binary()),
    })


def build(folder: Path, shards: int, rows: int, media_bytes: int) -> int:
    rng = np.random.default_rng(0)
    variants = []
    for index in range(VARIANTS):
        path = folder / f"variant{index}.parquet"
        pq.write_table(shard_table(rows, media_bytes, rng), path, row_group_size=256,
                       compression={"jpg": "none"}, use_dictionary=["url", "status", "error_message", "error_type"])
        variants.append(path)
    out = folder / "out"
    out.mkdir()
    start = 1_700_000_000.0
    for shard in range(shards):
        name = f"{shard:05d}"
        os.link(variants[shard % VARIANTS], out / f"{name}.parquet")
        begin = start + shard * 0.5
        stats = {"count": rows, "successes": int(rows * 0.8), "failed_to_download": rows - int(rows * 0.8),
                 "duration": 4.0, "start_time": begin, "end_time": begin + 4.0,
                 "status_dict": {"success": int(rows * 0.8), "HTTP Error 404: Not Found": rows - int(rows * 0.8)},
                 "error_types": {"http_4xx": rows - int(rows * 0.8)}}
        (out / f"{name}_stats.json").write_text(json.dumps(stats))
    return sum(p.stat().st_size for p in variants) // VARIANTS * shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--media-bytes", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        logical = build(folder, args.shards, args.rows, args.media_bytes)
        probe = ("import json, resource, sys, time\n"
                 "from any2ds.report.collect import collect_report\n"
                 "start = time.perf_counter(); report = collect_report(sys.argv[1])\n"
                 "seconds = time.perf_counter() - start\n"
                 "rchar = int(dict(l.split(': ') for l in open('/proc/self/io').read().splitlines())['rchar'])\n"
                 "print(json.dumps({'seconds': seconds, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF)"
                 ".ru_maxrss / 1024, 'rchar': rchar, 'samples': report['samples']['count'],"
                 " 'hosts': report['hosts']['distinct']}))")
        result = json.loads(subprocess.run([sys.executable, "-c", probe, str(folder / "out")], check=True,
                                           capture_output=True, text=True).stdout)
    print(f"{args.shards} shards x {args.rows} rows ({result['samples']:,} samples, {result['hosts']:,} hosts), "
          f"{logical / 1e9:.1f} GB of shard files")
    print(f"report: {result['seconds']:.1f} s, peak RSS {result['rss_mb']:.0f} MB, read {result['rchar'] / 1e6:.0f} MB "
          f"({result['rchar'] / logical:.2%} of the shard files, interpreter start included)")


if __name__ == "__main__":
    main()
