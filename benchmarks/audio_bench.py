"""Throughput of the audio processor against its ceiling, in one run.

Generates a deterministic corpus of clips in several codecs (mp3, ogg Vorbis,
opus, flac, wav; 44.1 and 48 kHz, mono and stereo, 5 to 30 s of tones, sweeps
and noise), serves it on 127.0.0.1, and runs ``any2ds download`` with the LAION
preset (48 kHz, mono, flac) and webdataset output. Then, over the same files,
the ceiling: a plain single-process loop of soundfile decode, channel mean,
soxr resample and soundfile flac encode, with no fetching, hashing or writing.

    python benchmarks/audio_bench.py --count 400 --processes 2

Reports files/s and CPU seconds per second of audio for both, and any2ds /
ceiling. Not a test: wall-clock figures are noisy on shared machines.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from any2ds.output import SUMMARY_FILE
from any2ds.testing import serve_directory

# (extension, soundfile format, subtype, sample rate, channels): what audio sites serve.
KINDS = [
    ("mp3", "MP3", "MPEG_LAYER_III", 44100, 2),
    ("ogg", "OGG", "VORBIS", 44100, 2),
    ("opus", "OGG", "OPUS", 48000, 2),
    ("flac", "FLAC", "PCM_16", 44100, 1),
    ("wav", "WAV", "PCM_16", 48000, 2),
    ("mp3", "MP3", "MPEG_LAYER_III", 22050, 1),
]


def clip(rate: int, channels: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    tones = sum(0.1 * np.sin(2 * np.pi * rng.uniform(80, 4000) * t + rng.uniform(0, 6)) for _ in range(4))
    sweep = 0.1 * np.sin(2 * np.pi * (50 + rng.uniform(1000, 8000) * t / seconds) * t)
    noise = 0.03 * rng.standard_normal((len(t), channels))
    return ((tones + sweep)[:, None] + noise).astype(np.float32)


def make_corpus(folder: Path, count: int, distinct: int, seed: int = 0) -> tuple[list[str], dict[str, float]]:
    """``distinct`` clips, named ``count`` times round-robin; returns (URL paths, seconds per file)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for i in range(distinct):
        ext, fmt, subtype, rate, channels = KINDS[i % len(KINDS)]
        duration = float(rng.uniform(5, 30))
        name = f"{i}.{ext}"
        sf.write(folder / name, clip(rate, channels, duration, rng), rate, format=fmt, subtype=subtype)
        seconds[name] = duration
    names = sorted(seconds, key=lambda n: int(n.split(".")[0]))
    return [f"{names[i % distinct]}?n={i}" for i in range(count)], seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_any2ds(args: argparse.Namespace, work: Path, paths: list[str], folder: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of any2ds's process tree, CPU seconds of the local server)."""
    with serve_directory(folder) as server:
        urls = work / "urls.txt"
        urls.write_text("".join(server.url(f"/allowed/{p}") + "\n" for p in paths))
        command = [sys.executable, "-m", "any2ds", "download", "--url_list", str(urls), "--output_folder",
                   str(work / "out"), "--processors", "[audio]", "--audio_preset", "laion", "--output_format",
                   "webdataset", "--processes_count", str(args.processes), "--thread_count", str(args.threads),
                   "--number_sample_per_shard", "100", "--allow_private_networks", "true", "--observers", "[]"]
        cpu_before, server_before, start = children_cpu(), self_cpu(), time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "NO_PROXY": "127.0.0.1"})
        wall = time.perf_counter() - start
        summary = json.loads((work / "out" / SUMMARY_FILE).read_text())
        if summary["successes"] != len(paths):
            sys.exit(f"any2ds stored {summary['successes']} of {len(paths)} files: {summary['error_types']}")
        return wall, children_cpu() - cpu_before, self_cpu() - server_before


def ceiling_one(body: bytes) -> bytes:
    """What the processor must do for one clip with the LAION preset, and nothing else."""
    samples, rate = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != 48000:
        mono = soxr.resample(mono, rate, 48000)
    out = io.BytesIO()
    sf.write(out, np.clip(mono, -1, 1), 48000, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def run_ceiling(paths: list[str], folder: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the plain loop over the same files, in this process, one thread."""
    bodies = {name: (folder / name).read_bytes() for name in {p.split("?")[0] for p in paths}}
    cpu_before, start = time.process_time(), time.perf_counter()
    for path in paths:
        ceiling_one(bodies[path.split("?")[0]])
    return time.perf_counter() - start, time.process_time() - cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400, help="URLs to download")
    parser.add_argument("--distinct", type=int, default=60, help="distinct files behind them")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="any2ds-audio-bench-") as tmp:
        work = Path(tmp)
        folder = work / "www"
        paths, seconds = make_corpus(folder, args.count, min(args.distinct, args.count))
        audio_seconds = sum(seconds[p.split("?")[0]] for p in paths)
        megabytes = sum((folder / p.split("?")[0]).stat().st_size for p in paths) / 1e6
        print(f"corpus: {args.count} files ({len(seconds)} distinct: mp3, ogg, opus, flac, wav), "
              f"{audio_seconds / 60:.1f} min of audio, {megabytes:.0f} MB; {os.cpu_count()} cores")

        wall, cpu, server_cpu = run_any2ds(args, work, paths, folder)
        print(f"any2ds  ({args.processes} processes, {args.threads} threads): {args.count / wall:7.1f} files/s, "
              f"{cpu / audio_seconds * 1000:6.2f} ms CPU per s of audio "
              f"(wall {wall:.1f} s, CPU {cpu:.1f} s; the local server used {server_cpu:.1f} s)")

        ceiling_wall, ceiling_cpu = run_ceiling(paths, folder)
        print(f"ceiling (1 process, 1 thread):      {args.count / ceiling_wall:7.1f} files/s, "
              f"{ceiling_cpu / audio_seconds * 1000:6.2f} ms CPU per s of audio (wall {ceiling_wall:.1f} s)")

        print(f"any2ds/ceiling: CPU per s of audio {cpu / ceiling_cpu:.2f}x; "
              f"files/s {args.count / wall / (args.count / ceiling_wall):.2f}x "
              f"(any2ds on {args.processes} processes vs the ceiling on one core)")


if __name__ == "__main__":
    main()
