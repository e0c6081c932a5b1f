"""Memory over a long run: 100k URLs, half of them failing (404), sampled every second.

Prints the process tree's resident memory at each tenth of the run; flat
means the worker holds only what its limits allow, whatever the run's length.

    python tests/benchmarks/memory_flat.py --count 100000
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_img2dataset import local_server, tree_rss_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="any2ds-mem-") as tmp:
        work = Path(tmp)
        www = work / "www"
        www.mkdir()
        rng = np.random.default_rng(0)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(www / f"{i}.jpg", quality=80)
        with local_server(www, work) as (port, kind):
            measure(args, work, port, kind)


def measure(args: argparse.Namespace, work: Path, port: int, kind: str) -> None:
    """Run any2ds over the URL list, sampling the process tree's memory every second."""
    urls = work / "urls.txt"
    # Odd rows point at files that do not exist: half the run fails with 404.
    urls.write_text("".join(f"http://127.0.0.1:{port}/{i % 20 if i % 2 == 0 else 'missing'}.jpg?n={i}\n"
                            for i in range(args.count)))
    out = work / "out"
    cmd = [sys.executable, "-m", "any2ds", "download", "--url_list", str(urls), "--output_folder", str(out),
           "--output_format", "webdataset", "--processes_count", str(args.processes), "--thread_count",
           str(args.threads), "--image_size", "128", "--allow_private_networks", "true"]
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    shards_total = -(-args.count // 10_000)
    samples: list[tuple[float, int, int]] = []
    while proc.poll() is None:
        done = len(glob.glob(f"{out}/*_stats.json"))
        samples.append((time.monotonic() - start, done, tree_rss_bytes(proc.pid)))
        time.sleep(1)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    elapsed = time.monotonic() - start
    print(f"{args.count} URLs (half 404, {kind}), {args.processes} processes x {args.threads} threads: "
          f"{elapsed:.0f} s, {args.count / elapsed:.0f} URLs/s")
    for tenth in range(1, 11):
        at = [rss for t, _d, rss in samples if t <= elapsed * tenth / 10]
        if at:
            print(f"  {tenth * 10:3d}% of the run: RSS {at[-1] / 2**20:6.0f} MiB (max so far {max(at) / 2**20:6.0f} MiB)")
    print(f"  shards committed: {len(glob.glob(f'{out}/*_stats.json'))} of {shards_total}")


if __name__ == "__main__":
    main()
