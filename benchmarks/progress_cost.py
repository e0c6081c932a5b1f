"""What the live progress costs: any2ds with the bar drawn in a pseudo-terminal, against the same
run with ``--progress none``, alternating, on the benchmark's corpus served by nginx.

    python -m benchmarks.progress_cost                       # 5,000 rows, 3 runs of each
    python -m benchmarks.progress_cost --baseline /path/to/python   # also an any2ds without it

The bar runs under ``script`` (util-linux), so that stderr is a terminal and rich draws it as a
user sees it. ``--baseline`` adds a third variant: another interpreter whose any2ds has no live
progress (an older checkout installed in its own virtualenv), run the same way. Not a test:
figures on a shared machine are noisy; alternating the variants spreads the noise over all.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
import psutil

from benchmarks import corpus
from benchmarks.serving import serve
from benchmarks.tools import RunFigures, Settings, Tool, any2ds_tool, run_tool


@attrs.frozen
class TerminalTool(Tool):
    """A tool run under ``script``: its stderr is a pseudo-terminal."""

    def command(self, url_list: Path, output_folder: Path, settings: Settings) -> list[str]:
        return ["script", "-qec", shlex.join(super().command(url_list, output_folder, settings)), "/dev/null"]


def variants(baseline: str | None) -> list[Tool]:
    tool = any2ds_tool()
    found = [TerminalTool("bar", tool.version, (*tool.program, "--progress=bar"), tool.booleans),
             Tool("none", tool.version, (*tool.program, "--progress=none"), tool.booleans)]
    if baseline:
        found.append(TerminalTool("baseline", "baseline", (baseline, *tool.program[1:]), tool.booleans))
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.progress_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--distinct", type=int, default=1000, help="distinct images (rows cycle over them)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--baseline", help="a Python whose any2ds has no live progress, run as a third variant")
    args = parser.parse_args(argv)
    settings = Settings(thread_count=args.threads, number_sample_per_shard=1000)
    corpus_dir = corpus.default_cache_dir(0)
    names = corpus.ensure_corpus(corpus_dir, args.distinct)
    tools = variants(args.baseline)
    runs: dict[str, list[RunFigures]] = {tool.name: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="any2ds-progress-cost-") as folder, \
            serve(corpus_dir, Path(folder) / "server") as server:
        work = Path(folder)
        os.chdir(work)  # python -m any2ds must not import a checkout from the current folder
        paths = [f"{names[i % len(names)]}?row={i}" for i in range(args.rows)]
        url_list = corpus.write_url_list(work / "urls.txt", server.base_url, paths)
        for repeat in range(args.repeats):
            for tool in tools if repeat % 2 == 0 else tools[::-1]:
                figures = run_tool(tool, url_list, work / "out", settings, args.rows, work / f"{tool.name}.log",
                                   psutil.Process(server.process.pid))
                runs[tool.name].append(figures)
                print(f"{tool.name:>8}: {figures.images_per_second:7.1f} images/s, {figures.cpu_ms_per_image:.2f} "
                      f"CPU ms/image, {figures.successes} images, exit {figures.exit_code}", file=sys.stderr,
                      flush=True)
    print(report(runs))


def report(runs: dict[str, list[RunFigures]]) -> str:
    """Per variant: images/s of each run, the median of its ratios to the ``none`` run of the same
    round (rounds share the machine's load), and CPU time per image over the process tree."""
    lines = ["| variant | images/s, each round | images/s vs none (median of rounds) | CPU ms/image (median) |",
             "|---|---|---|---|"]
    for name, figures in runs.items():
        ratios = [f.images_per_second / none.images_per_second for f, none in zip(figures, runs["none"])]
        cpu = statistics.median(f.cpu_ms_per_image or 0.0 for f in figures)
        lines.append(f"| {name} | {', '.join(f'{f.images_per_second:.1f}' for f in figures)} | "
                     f"{statistics.median(ratios):.3f} | {cpu:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
