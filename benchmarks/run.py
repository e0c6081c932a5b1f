"""any2ds side by side with img2dataset 1.47.0, in one command.

Makes (once, then cached) a corpus of web-like JPEGs cut from scikit-image's
photographs, serves it with nginx on 127.0.0.1, and runs both tools over the
same URL list with the same settings, alternating, at each thread count; then
measures the machine's compute ceiling (any2ds's image processor in a tight
loop) and the PSNR of any2ds's outputs against a full-resolution decode.
Prints a markdown report; --json writes every figure.

    python -m benchmarks.run                 # 10,000 rows, 3 repeats, threads 16/32/64
    python -m benchmarks.run --quick         # 1,000 rows, 1 repeat, 16 threads
    python -m benchmarks.run --scaling 1,2,4 --memory-rows 1000000 --json out.json

img2dataset is installed in its own virtualenv under benchmarks/.venvs/ on first use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script, python benchmarks/run.py: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs  # noqa: E402
import psutil  # noqa: E402

from benchmarks import corpus, report  # noqa: E402
from benchmarks.ceiling import measure_ceiling  # noqa: E402
from benchmarks.quality import psnr_report  # noqa: E402
from benchmarks.serving import serve  # noqa: E402
from benchmarks.tools import (  # noqa: E402
    DEFAULT_VENV, SAMPLE_SECONDS, TOOL_NAMES, RunFigures, Settings, Tool, resolve_tools, run_tool,
)

FULL = {"rows": 10_000, "repeats": 3, "threads": [16, 32, 64]}
QUICK = {"rows": 1_000, "repeats": 1, "threads": [16]}
MEMORY_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help=f"URL rows per run (default {FULL['rows']:,})")
    parser.add_argument("--repeats", type=int, help=f"runs of each tool at each setting (default {FULL['repeats']})")
    parser.add_argument("--threads", type=_numbers, metavar="N,N,...",
                        help="thread counts to try, the best per tool is reported (default 16,32,64)")
    parser.add_argument("--tools", type=_names, default=list(TOOL_NAMES), metavar="any2ds,img2dataset")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['rows']:,} rows, {QUICK['repeats']} repeat, {QUICK['threads'][0]} threads "
                             "(explicit flags win)")
    parser.add_argument("--processes", type=int, default=2, help="processes_count of the main runs (default 2)")
    parser.add_argument("--scaling", type=_numbers, default=[], metavar="1,2,4",
                        help="also run each tool at its best thread count with these processes_count values")
    parser.add_argument("--memory-rows", type=int, default=0, metavar="1000000",
                        help="also run each tool once over this many rows cycling over the main run's images and "
                             "record its memory over time (long: about an hour per tool for 1,000,000 rows)")
    parser.add_argument("--memory-files", type=int, metavar="N",
                        help="cycle the memory run over the first N images instead (a handful of small files "
                             "changes what a sample weighs, so its peak is no longer comparable)")
    parser.add_argument("--memory-missing-share", type=float, default=0.0,
                        help="share of the memory run's rows pointing at missing files, answered 404 (default 0)")
    parser.add_argument("--duplicates", type=int, default=1,
                        help="list each image this many times in a seeded shuffle, as MS-COCO lists each image "
                             "once per caption (5); the row count stays --rows")
    parser.add_argument("--seed", type=int, default=0, help="corpus and shuffle seed (default 0)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the compute-ceiling measurement")
    parser.add_argument("--no-psnr", action="store_true", help="skip the PSNR check of any2ds's outputs")
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx",
                        help="nginx (falls back to python with a message when not installed) or python's server")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--markdown", type=Path, help="also write the markdown report to this file")
    parser.add_argument("--corpus-dir", type=Path, help="where the corpus is kept (default benchmarks/.cache/...)")
    parser.add_argument("--work-dir", type=Path,
                        help="URL lists, outputs and logs (default: a temporary folder removed at the end)")
    parser.add_argument("--img2dataset-venv", type=Path, default=DEFAULT_VENV,
                        help=f"img2dataset's virtualenv, made on first use (default {DEFAULT_VENV})")
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else FULL
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rows < 1 or args.repeats < 1 or not args.threads:
        parser.error("--rows and --repeats must be at least 1 and --threads must name a thread count")
    for written in (args.json, args.markdown):  # found out now, not after an hour of runs
        if written is not None and not written.resolve().parent.is_dir():
            parser.error(f"no folder for {written}")
    return args


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; print the markdown report; return (and with --json write) every figure."""
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    tools = resolve_tools(args.tools, args.img2dataset_venv)
    settings = Settings(processes_count=args.processes, thread_count=args.threads[0])
    corpus_dir = args.corpus_dir or corpus.default_cache_dir(args.seed)
    distinct = -(-args.rows // args.duplicates)
    _say(f"corpus: {distinct} images in {corpus_dir} (made once, then reused)")
    memory_files = args.memory_files or distinct
    names = corpus.ensure_corpus(corpus_dir, max(distinct, memory_files if args.memory_rows else 0), args.seed)
    results: dict = {
        "command": command, "machine": report.machine_description(), "rows": args.rows,
        "duplicates": args.duplicates, "repeats": args.repeats, "thread_counts": args.threads,
        "settings": attrs.asdict(settings, filter=lambda attribute, _v: attribute.name != "thread_count"),
        "corpus": corpus.describe(corpus_dir, names[:distinct]),
        "versions": {tool.name: tool.version for tool in tools},
    }
    with _work_dir(args.work_dir) as work, serve(corpus_dir, work / "server", args.server == "nginx") as server:
        results["server"] = server.kind
        bench = _Bench(work, psutil.Process(server.process.pid), server.requests_served)
        url_list = corpus.write_url_list(work / "urls.txt", server.base_url,
                                         corpus.url_rows(names[:distinct], args.rows, args.duplicates, args.seed))
        ceilings: list[dict] = []

        def ceiling() -> None:
            _say("compute ceiling")
            ceilings.append(measure_ceiling(corpus_dir, names[:distinct], settings, os.cpu_count() or 1))

        psnr_source = _main_runs(bench, tools, url_list, args, settings, keep_any2ds_output=not args.no_psnr,
                                 after_each_repeat=None if args.no_ceiling else ceiling)
        best = report.best_by_tool(report.summarize(bench.runs))
        if ceilings:
            results["ceiling"] = _ceiling_summary(ceilings)
        if psnr_source is not None:
            _say("PSNR against full-resolution decodes")
            results["psnr"] = psnr_report(psnr_source, corpus_dir, settings, os.cpu_count() or 1)
            shutil.rmtree(psnr_source, ignore_errors=True)
        for repeat in range(args.repeats if args.scaling else 0):
            for processes in args.scaling:
                for tool in _alternated(tools, repeat):
                    bench.run(tool, url_list, attrs.evolve(settings, processes_count=processes,
                                                           thread_count=_best_threads(best, tool, settings)),
                              args.rows, "scaling")
        if args.memory_rows:
            results["memory"] = _memory_runs(bench, tools, best, names[:memory_files], server.base_url, args,
                                             settings)
    results["load_average_at_end"] = list(os.getloadavg())  # other work on the machine skews the figures
    results["runs"] = [_run_record(run) for run in bench.runs]
    results["summaries"] = report.summarize(bench.runs)
    results["best"] = report.best_by_tool(results["summaries"])
    results["ratios"] = report.ratios(results["best"])
    if "ceiling" in results and "any2ds" in results["best"] and results["ceiling"]["images_per_second"]:
        results["ceiling"]["any2ds_share"] = (results["best"]["any2ds"]["images_per_second"]["median"]
                                              / results["ceiling"]["images_per_second"])
    text = report.markdown(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(_json(results))
    return results


def _main_runs(bench: _Bench, tools: Sequence[Tool], url_list: Path, args: argparse.Namespace,
               settings: Settings, keep_any2ds_output: bool,
               after_each_repeat: Callable[[], None] | None = None) -> Path | None:
    """Every tool at every thread count, ``repeats`` times, alternating (order reversed every other
    repeat), then ``after_each_repeat`` (the ceiling, measured between the tools' runs, so that it
    meets the same load); returns the output folder of any2ds's first complete run, kept for the
    PSNR check."""
    kept = None
    for repeat in range(args.repeats):
        for threads in args.threads:
            for tool in _alternated(tools, repeat):
                keep = keep_any2ds_output and kept is None and tool.name == "any2ds"
                figures, output = bench.run(tool, url_list, attrs.evolve(settings, thread_count=threads), args.rows,
                                            "main", keep_output=keep)
                if keep and figures.exit_code == 0:
                    kept = output
                elif keep:
                    shutil.rmtree(output, ignore_errors=True)
        if after_each_repeat is not None:
            after_each_repeat()
    return kept


def _ceiling_summary(measures: list[dict]) -> dict:
    """The ceiling measured once per repeat: the median images/s and CPU per image, and every measure."""
    rates = sorted(measure["images_per_second"] for measure in measures)
    cpu = sorted(measure["cpu_ms_per_image"] for measure in measures if measure["cpu_ms_per_image"] is not None)
    return {"processes": measures[0]["processes"], "images": measures[0]["images"],
            "failures": max(measure["failures"] for measure in measures),
            "images_per_second": statistics.median(rates), "images_per_second_range": [rates[0], rates[-1]],
            "cpu_ms_per_image": statistics.median(cpu) if cpu else None, "measures": measures}


def _memory_runs(bench: _Bench, tools: Sequence[Tool], best: dict, files: Sequence[str], base_url: str,
                 args: argparse.Namespace, settings: Settings) -> dict:
    """One long run per tool at its best thread count, its memory sampled over time."""
    url_list = corpus.write_url_list(bench.work / "urls-memory.txt", base_url,
                                     corpus.cycled_rows(files, args.memory_rows, args.memory_missing_share))
    runs = []
    for tool in tools:
        threads = _best_threads(best, tool, settings)
        figures, _ = bench.run(tool, url_list, attrs.evolve(settings, thread_count=threads), args.memory_rows,
                               "memory", keep_timeline=True)
        runs.append({"tool": tool.name, "thread_count": threads, "images_per_second": figures.images_per_second,
                     "successes": figures.successes, "peak_rss_bytes": figures.peak_rss_bytes,
                     "rss_at_fractions": _rss_at(figures, MEMORY_FRACTIONS)})
    return {"rows": args.memory_rows, "files": len(files), "missing_share": args.memory_missing_share,
            "fractions": MEMORY_FRACTIONS, "runs": runs}


def _rss_at(figures: RunFigures, fractions: Sequence[float]) -> list[int]:
    """The tree's peak RSS up to each fraction of the run's duration: flat if memory stays bounded,
    rising if it grows with the rows done (the peak, not the last sample, which may fall in the shutdown)."""
    return [max((rss for seconds, rss in figures.rss_timeline if seconds <= figures.seconds * fraction), default=0)
            for fraction in fractions]


class _Bench:
    """Runs tools one after another in ``work``, numbering their outputs and logs, keeping their figures."""

    def __init__(self, work: Path, server: psutil.Process, requests_served: Callable[[], int | None]) -> None:
        self.work = work
        self.server = server
        self.requests_served = requests_served
        self.runs: list[RunFigures] = []

    def run(self, tool: Tool, url_list: Path, settings: Settings, rows: int, label: str,
            keep_output: bool = False, keep_timeline: bool = False) -> tuple[RunFigures, Path]:
        number = len(self.runs)
        output = self.work / f"out-{number:03d}-{tool.name}"
        figures = run_tool(tool, url_list, output, settings, rows, self.work / f"log-{number:03d}-{tool.name}.txt",
                           self.server, label, keep_timeline, requests_served=self.requests_served)
        self.runs.append(figures)
        cpu = figures.cpu_ms_per_image
        _say(f"{label} {tool.name:11s} processes {settings.processes_count} threads {settings.thread_count:3d}: "
             f"{figures.images_per_second:6.0f} images/s, {cpu if cpu is not None else float('nan'):5.2f} CPU "
             f"ms/image, peak RSS {figures.peak_rss_bytes / 1e6:6.0f} MB, {figures.successes}/{rows} ok"
             + (f", exit code {figures.exit_code}" if figures.exit_code else ""))
        if not keep_output:
            shutil.rmtree(output, ignore_errors=True)
        return figures, output


def _best_threads(best: dict, tool: Tool, settings: Settings) -> int:
    return best[tool.name]["thread_count"] if tool.name in best else settings.thread_count


def _alternated(tools: Sequence[Tool], repeat: int) -> Sequence[Tool]:
    return tools if repeat % 2 == 0 else list(reversed(tools))


def _run_record(run: RunFigures) -> dict:
    record = attrs.asdict(run, filter=lambda attribute, _v: attribute.name != "rss_timeline")
    record["images_per_second"] = run.images_per_second
    record["cpu_ms_per_image"] = run.cpu_ms_per_image
    if run.rss_timeline:  # thinned to about one sample a second: enough to see memory grow or stay flat
        step = max(1, round(1 / SAMPLE_SECONDS))
        record["rss_timeline"] = run.rss_timeline[::step]
    return record


def _json(results: dict) -> str:
    def clean(value):  # JSON has no infinity: an all-identical PSNR is written as null
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(results), indent=1)


@contextmanager
def _work_dir(chosen: Path | None) -> Iterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix="any2ds-bench-", ignore_cleanup_errors=True) as temporary:
        yield Path(temporary)


def _say(message: str) -> None:
    print(f"benchmark: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
