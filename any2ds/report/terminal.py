"""The report on a terminal, with rich (tables that fit the width, colour only on a terminal)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.filesize import decimal
from rich.table import Table
from rich.text import Text

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


def print_report(report: Mapping[str, Any], console: Console) -> None:
    """Print ``report`` (from :func:`any2ds.report.collect.collect_report`) on ``console``."""
    console.print(_overview(report))
    samples = report["samples"]
    failures = samples["failures"]
    sections = [
        _counts_table("Statuses", report["statuses"], samples["count"], "of samples"),
        _counts_table("Errors by class", report["error_types"], failures, "of failures"),
        _messages_table(report["error_messages"], failures),
        _hosts_table(report["hosts"]),
        _throughput(report["throughput"]),
        _output_table(report["output_bytes"]),
        _distributions_table(report["distributions"]),
    ]
    for section in sections:
        if section is not None:
            console.print()
            console.print(section)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _overview(report: Mapping[str, Any]) -> Text:
    shards, samples = report["shards"], report["samples"]
    text = Text.assemble(("any2ds report ", "bold"), report["output_folder"], "\n")
    text.append(f"state: {report['state']}", style="bold green" if report["state"] == "done" else "bold yellow")
    if report["state"] == "stopped" and report["stop_reason"]:
        text.append(f" ({report['stop_reason']})")
    text.append(f" · shards: {shards['done']} done, {shards['in_progress']} in progress, "
                f"{len(shards['failed'])} failed")
    if report["state"] == "running" and report["run_start_time"]:
        running = report["generated_at"] - report["run_start_time"]
        text.append(f" · running for {_duration(running)}")
    text.append(f"\nsamples: {samples['count']:,} · successes: {samples['successes']:,}")
    if samples["success_rate"] is not None:
        text.append(f" ({samples['success_rate']:.1%})", style="bold")
    text.append(f" · failures: {samples['failures']:,}")
    if shards["with_metadata"] < shards["done"]:
        text.append(f"\n{shards['done'] - shards['with_metadata']:,} shards have no <shard>.parquet (the lance and "
                    "dummy outputs): hosts and distributions cover the others", style="yellow")
    return text


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", overflow="fold")
    return table


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _counts_table(title: str, counts: Mapping[str, int], whole: int, share_of: str) -> Table | None:
    if not counts:
        return None
    table = _table(title, "", "samples", share_of, "")
    largest = max(counts.values())
    for name, n in counts.items():
        table.add_row(name, f"{n:,}", _share(n, whole), Text("█" * max(1, round(20 * n / largest)), style="cyan"))
    return table


def _messages_table(messages: Mapping[str, Any], failures: int) -> Table | None:
    if not messages["top"]:
        return None
    shown = len(messages["top"])
    title = f"Errors by message (top {shown} of {messages['distinct']})" if messages["distinct"] > shown \
        else "Errors by message"
    table = _table(title, "message", "samples", "of failures")
    for message, n in messages["top"].items():
        table.add_row(Text(message), f"{n:,}", _share(n, failures))
    return table


def _hosts_table(hosts: Mapping[str, Any]) -> Table | None:
    if not hosts["top_failing"]:
        return None
    table = _table(f"Top failing hosts ({hosts['failing']:,} of {hosts['distinct']:,} hosts have failures)",
                   "host", "samples", "failures", "failure rate", "error classes")
    for host in hosts["top_failing"]:
        classes = ", ".join(f"{name} {n:,}" for name, n in list(host["error_types"].items())[:3])
        table.add_row(host["host"], f"{host['count']:,}", f"{host['failures']:,}", f"{host['failure_rate']:.1%}",
                      Text(classes, justify="right"))
    return table


def _throughput(throughput: Mapping[str, Any] | None) -> Group | None:
    if throughput is None:
        return None
    durations = throughput["shard_seconds"]["percentiles"]
    summary = Text.assemble(
        ("Throughput", "bold"),
        f"\n{throughput['samples_per_sec']:,.1f} samples/s, {throughput['successes_per_sec']:,.1f} successes/s "
        f"over {_duration(throughput['active_seconds'])} of work, "
        f"from {_clock(throughput['start_time'])} to {_clock(throughput['end_time'])}",
        f"\nshard duration: median {_duration(durations['p50'])}, p95 {_duration(durations['p95'])}, "
        f"max {_duration(throughput['shard_seconds']['max'])}",
    )
    series = throughput["series"]["samples_per_sec"]
    peak = max(series)
    line = Text.assemble("samples/s ", (sparkline(series), "cyan"), f" peak {peak:,.1f}",
                         f" ({_duration(throughput['bin_seconds'])} per mark)")
    return Group(summary, line)


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, its height proportional to the value (the largest is full)."""
    peak = max(values, default=0)
    if peak <= 0:
        return SPARK_BLOCKS[0] * len(values)
    return "".join(SPARK_BLOCKS[min(len(SPARK_BLOCKS) - 1, int(v / peak * len(SPARK_BLOCKS)))] for v in values)


def _output_table(output: Mapping[str, Any]) -> Table:
    per_success = f", {decimal(round(output['per_success']))} per success" if output["per_success"] else ""
    table = _table(f"Output: {decimal(output['total'])}{per_success}", "files", "bytes", "share")
    for kind, size in output["by_kind"].items():
        table.add_row(kind, decimal(size), _share(size, output["total"]))
    return table


def _distributions_table(distributions: Mapping[str, Mapping[str, Any]]) -> Table | None:
    if not distributions:
        return None
    table = _table("Distributions (successes)", "column", "count", "min", "p5", "p25", "median", "p75", "p95",
                   "max", "mean")
    for name, dist in distributions.items():
        p = dist["percentiles"]
        table.add_row(name, f"{dist['count']:,}", *(_number(v) for v in (
            dist["min"], p["p5"], p["p25"], p["p50"], p["p75"], p["p95"], dist["max"], dist["mean"])))
    return table


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3g}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2g}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _clock(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
