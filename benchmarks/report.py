"""Figures out of runs: grouping, medians, ratios, the machine's description, and the markdown report."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence

import cv2
import numpy
import PIL
import psutil

from benchmarks.serving import find_nginx
from benchmarks.tools import RunFigures

MB = 1_000_000


def summarize(runs: Sequence[RunFigures]) -> list[dict]:
    """One entry per (part, tool, processes, threads): medians and spreads over its repeats."""
    groups: dict[tuple, list[RunFigures]] = {}
    for run in runs:
        groups.setdefault((run.label, run.tool, run.processes_count, run.thread_count), []).append(run)
    summaries = []
    for (label, tool, processes, threads), members in groups.items():
        speeds = [run.images_per_second for run in members]
        cpu = [run.cpu_ms_per_image for run in members if run.cpu_ms_per_image is not None]
        server_cpu = [1000 * run.server_cpu_seconds / run.successes for run in members if run.successes]
        requests = [run.requests / run.rows for run in members if run.requests is not None]
        summaries.append({
            "label": label, "tool": tool, "processes_count": processes, "thread_count": threads,
            "rows": members[0].rows, "runs": len(members),
            "failed_runs": sum(run.exit_code != 0 for run in members),
            "images_per_second": {"median": statistics.median(speeds), "min": min(speeds), "max": max(speeds)},
            "cpu_ms_per_image": statistics.median(cpu) if cpu else None,
            "peak_rss_bytes": {"median": statistics.median(run.peak_rss_bytes for run in members),
                               "max": max(run.peak_rss_bytes for run in members)},
            "output_bytes": statistics.median(run.output_bytes for run in members),
            "successes": min(run.successes for run in members),
            "server_cpu_ms_per_image": statistics.median(server_cpu) if server_cpu else None,
            "requests_per_row": statistics.median(requests) if requests else None,
        })
    return summaries


def best_by_tool(summaries: Sequence[dict], label: str = "main") -> dict[str, dict]:
    """Each tool's fastest thread count (highest median images/s) in part ``label``."""
    best: dict[str, dict] = {}
    for summary in summaries:
        if summary["label"] != label:
            continue
        current = best.get(summary["tool"])
        if current is None or summary["images_per_second"]["median"] > current["images_per_second"]["median"]:
            best[summary["tool"]] = summary
    return best


def ratios(best: dict[str, dict]) -> dict | None:
    """any2ds / img2dataset at each tool's best thread count."""
    if not {"any2ds", "img2dataset"} <= best.keys():
        return None
    ours, theirs = best["any2ds"], best["img2dataset"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "images_per_second": ratio(ours["images_per_second"]["median"], theirs["images_per_second"]["median"]),
        "cpu_per_image": ratio(ours["cpu_ms_per_image"], theirs["cpu_ms_per_image"]),
        "peak_rss": ratio(ours["peak_rss_bytes"]["median"], theirs["peak_rss_bytes"]["median"]),
        "output_bytes": ratio(ours["output_bytes"], theirs["output_bytes"]),
    }


def machine_description() -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                      if line.startswith("model name")), platform.processor() or "unknown")
    nginx = find_nginx()
    nginx_version = (subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
                     if nginx else "not installed")
    return {"cpu": cpu_model, "cores": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "system": platform.platform(), "python": platform.python_version(), "pillow": PIL.__version__,
            "opencv": cv2.__version__, "numpy": numpy.__version__, "nginx": nginx_version,
            "date": datetime.date.today().isoformat(), "load_average_at_start": list(os.getloadavg())}


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""


def markdown(results: dict) -> str:
    """The report as markdown: ready to paste into docs/performance.md, readable in a terminal."""
    machine, settings, corpus = results["machine"], results["settings"], results["corpus"]
    lines = [
        f"Measured {machine['date']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB, {machine['system']}; Python {machine['python']}, "
        f"Pillow {machine['pillow']}, OpenCV {machine['opencv']}; served by {results['server']}; load average "
        f"{machine['load_average_at_start'][0]:.2f} at the start, {results['load_average_at_end'][0]:.2f} at the end.",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Corpus: {corpus['images']} JPEGs in {results['rows']} rows ({results['duplicates']} per image), "
        f"{corpus['bytes'] / MB:.0f} MB; longest side median {corpus['longest_side_median']} px, "
        f"{100 * corpus['longest_side_over_1024']:.0f}% over 1024 px, max {corpus['longest_side_max']} px, "
        f"{corpus['longest_side_under_100']} under 100 px; {corpus['progressive']} progressive, "
        f"{corpus['grayscale']} grayscale, {corpus['with_exif']} with EXIF.",
        "",
        f"Settings (both tools): image_size {settings['image_size']}, resize_mode {settings['resize_mode']}, "
        f"encode_format {settings['encode_format']}, encode_quality {settings['encode_quality']}, output_format "
        f"{settings['output_format']}, number_sample_per_shard {settings['number_sample_per_shard']}, "
        f"processes_count {settings['processes_count']}, timeout {settings['timeout']}, retries "
        f"{settings['retries']}, compute_hash {settings['compute_hash']}, extract_exif {settings['extract_exif']}.",
        "",
        "| tool | threads | images/s median (min-max) | CPU ms / image | peak RSS, tree (MB) | output (MB) "
        "| successes | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best = results["best"]
    versions = results["versions"]
    for summary in results["summaries"]:
        if summary["label"] == "main":
            lines.append(_row(summary, versions, best))
    if results.get("ratios"):
        r = results["ratios"]
        lines += ["", "any2ds / img2dataset, each at its best thread count: "
                  f"images/s **{_times(r['images_per_second'])}**, CPU per image {_times(r['cpu_per_image'])}, "
                  f"peak RSS {_times(r['peak_rss'])}, output bytes {_times(r['output_bytes'])}."]
    if results["duplicates"] > 1:
        served = ", ".join(f"{tool} {_number(summary['requests_per_row'], '.2f')}" for tool, summary in best.items())
        lines += ["", f"Duplicates: each image listed {results['duplicates']} times (shuffled over the list); "
                  f"requests served per row (nginx's log), at each tool's best thread count: {served}."]
    ceiling = results.get("ceiling")
    if ceiling:
        share = f"; any2ds reaches **{ceiling['any2ds_share']:.0%}** of it" if ceiling.get("any2ds_share") else ""
        low, high = ceiling["images_per_second_range"]
        lines += ["", f"Compute ceiling (any2ds's image processor in a tight loop over the same files, "
                  f"{ceiling['processes']} processes, measured after each repeat of the runs above, median of "
                  f"{len(ceiling['measures'])}): {ceiling['images_per_second']:.0f} ({low:.0f}-{high:.0f}) images/s, "
                  f"{ceiling['cpu_ms_per_image']:.2f} CPU ms / image{share}."]
    quality = results.get("psnr")
    if quality:
        verdict = "pass" if quality["passed"] else "FAIL"
        lowest = ", ".join(f"{worst['image']} {worst['db']:.1f} dB" for worst in quality["worst"])
        lines += ["", f"Quality: any2ds's outputs vs a full-resolution decode, {quality['compared']} images, "
                  f"{quality['identical']} identical; PSNR mean over the others "
                  f"{quality['mean_db_over_differing']:.1f} dB, min {quality['min_db']:.1f} dB "
                  f"(targets: mean >= {quality['targets']['mean_db']:.0f}, min >= {quality['targets']['min_db']:.0f}):"
                  f" **{verdict}**." + (f" Lowest: {lowest}." if lowest else "")]
    scaling = [s for s in results["summaries"] if s["label"] == "scaling"]
    if scaling:
        lines += ["", "Scaling with processes_count (each tool at its best thread count):", "",
                  "| tool | processes | threads | images/s median (min-max) | CPU ms / image | peak RSS, tree (MB) |",
                  "|---|---|---|---|---|---|"]
        for s in sorted(scaling, key=lambda s: (s["tool"], s["processes_count"])):
            lines.append(f"| {s['tool']} | {s['processes_count']} | {s['thread_count']} | {_speed(s)} | "
                         f"{_number(s['cpu_ms_per_image'], '.2f')} | {s['peak_rss_bytes']['median'] / MB:,.0f} |")
    memory = results.get("memory")
    if memory:
        lines += ["", f"Memory over a long run ({memory['rows']:,} rows cycling over {memory['files']} files, "
                  f"{memory['missing_share']:.0%} missing):", "",
                  "| tool | threads | images/s | peak RSS, tree (MB) | peak of the main run (MB) "
                  f"| peak RSS by {' / '.join(f'{share:.0%}' for share in memory['fractions'])} of the run (MB) |",
                  "|---|---|---|---|---|---|"]
        for run in memory["runs"]:
            main_peak = best[run["tool"]]["peak_rss_bytes"]["median"] if run["tool"] in best else None
            lines.append(f"| {run['tool']} | {run['thread_count']} | {run['images_per_second']:.0f} | "
                         f"{run['peak_rss_bytes'] / MB:,.0f} | {_number(main_peak and main_peak / MB, ',.0f')} | "
                         f"{' / '.join(f'{v / MB:,.0f}' for v in run['rss_at_fractions'])} |")
    return "\n".join(lines) + "\n"


def _row(summary: dict, versions: dict, best: dict) -> str:
    tool = summary["tool"]
    mark = " (best)" if best.get(tool, {}).get("thread_count") == summary["thread_count"] else ""
    failed = f" ({summary['failed_runs']} failed)" if summary["failed_runs"] else ""
    return (f"| {tool} {versions.get(tool, '')} | {summary['thread_count']}{mark} | {_speed(summary)} | "
            f"{_number(summary['cpu_ms_per_image'], '.2f')} | {summary['peak_rss_bytes']['median'] / MB:,.0f} | "
            f"{summary['output_bytes'] / MB:,.1f} | {summary['successes']} / {summary['rows']} | "
            f"{summary['runs']}{failed} |")


def _speed(summary: dict) -> str:
    speed = summary["images_per_second"]
    return f"{speed['median']:.0f} ({speed['min']:.0f}-{speed['max']:.0f})"


def _times(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def _number(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a"
