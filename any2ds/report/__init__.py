"""``any2ds report OUTPUT``: what a finished or running output folder holds, on the terminal,
as JSON (``--json``) or as a self-contained HTML page with plots (``--html``). See docs/report.md."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from any2ds.storage import STORAGE_ARGUMENT_HELP, storage_argument

REPORT_HELP = "Summarize an output folder, finished or running: counts, errors, hosts, throughput, sizes."

__all__ = ["REPORT_HELP", "run_report"]


def run_report(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="any2ds report", description=REPORT_HELP)
    parser.add_argument("output_folder", help="The output folder: a local path or any fsspec URL (s3://bucket/out).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON (schema: docs/report.md).")
    parser.add_argument("--html", metavar="PATH", help="Also write a self-contained HTML page with plots to PATH.")
    parser.add_argument("--top", type=int, default=10, help="How many hosts and error messages to list (default 10).")
    parser.add_argument("--storage_options", default="{}", help=STORAGE_ARGUMENT_HELP)
    args = parser.parse_args(list(argv))
    if args.top < 1:
        parser.error("--top must be at least 1")
    # Imported here, not by the CLI's module: pyarrow.compute (9 MB) stays out of a download's process.
    from rich.console import Console

    from any2ds.report.collect import collect_report
    from any2ds.report.page import write_html
    from any2ds.report.terminal import print_report

    storage = storage_argument(args.storage_options)
    report = collect_report(args.output_folder, top=args.top, storage=storage)
    if args.html:
        write_html(report, args.html, storage)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, Console(file=sys.stdout, highlight=False))
    return 0
