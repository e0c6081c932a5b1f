"""The default observer: a live progress bar on a terminal, periodic log lines otherwise.

The core option ``progress`` chooses: ``bar``, ``log``, ``none``, or ``auto``
(a bar when stderr is a terminal, else log lines). Both show the same
numbers, from the :class:`any2ds.RunProgress` the core hands over every
second: samples done of the input's rows, samples per second, success rate,
ETA, shards done and running, and the three most frequent error types.

The bar is drawn with rich (a Live display: warnings and shard failures
printed meanwhile appear above it, the bar stays at the bottom).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from any2ds import Observer, RunConfig, RunProgress, ShardFailure, ShardStats, greater_than, hookimpl, option

if TYPE_CHECKING:
    from rich.console import Group


@attrs.frozen
class ProgressOptions:
    log_interval: float = option(10.0, "progress log: seconds between two progress lines.", greater_than(0),
                                 flat="progress_log_interval")


class ProgressObserver(Observer):
    """Shows the run's progress on stderr: a live bar, or a line every ``log_interval`` seconds."""

    name = "progress"
    Options = ProgressOptions

    def run_started(self, config: RunConfig) -> None:
        mode = config.core.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self._mode = mode
        self._last_line = time.monotonic()
        self._bar = LiveBar() if mode == "bar" else None

    def progress(self, progress: RunProgress) -> None:
        if self._bar is not None:
            self._bar.update(progress)
        elif self._mode == "log" and time.monotonic() - self._last_line >= self.options.log_interval:
            self._last_line = time.monotonic()
            _print(f"progress: {progress_line(progress)}")

    def shard_completed(self, stats: ShardStats) -> None:
        if self._mode == "log":
            _print(f"shard {stats.shard_id} done in {stats.duration:.1f}s: {stats.successes}/{stats.count} ok")

    def shard_failed(self, failure: ShardFailure) -> None:
        _print(f"shard {failure.shard_id} failed: {failure.error}")  # an error, not progress: in every mode

    def run_completed(self, summary: Mapping[str, Any]) -> None:
        self.close()
        if self._mode != "none":
            count = summary["count"]
            rate = f"{summary['successes'] / count:.1%}" if count else "-"
            skipped = summary["shards_skipped"]  # done by an earlier run (incremental_mode incremental)
            plural = "s" if skipped != 1 else ""
            earlier = f"; {skipped} shard{plural} done by an earlier run, skipped" if skipped else ""
            _print(f"done: {count} samples in {summary['shards_done']} shards, {summary['successes']} successes "
                   f"({rate}), {summary['duration']:.1f}s, {summary['samples_per_sec']:.0f} samples/s{earlier}")


    def close(self) -> None:
        """Also called when the run stops on an error or Ctrl-C: the terminal gets its cursor back."""
        bar, self._bar = getattr(self, "_bar", None), None
        if bar is not None:
            bar.stop()


def _print(line: str) -> None:
    # One write, the newline with the text: print() writes them apart, and a Ctrl-C between the two
    # left the CLI's "interrupted" message glued to the end of a shard's line.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class LiveBar:
    """The bar: row counts, rate and ETA on the first line; success, shards and errors below."""

    def __init__(self) -> None:
        # rich (2.2 MB) is imported by the bar alone: every process loads this plugin, few draw it.
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn

        self._group = Group
        console = Console(stderr=True)
        self._progress = Progress(TextColumn("any2ds"), BarColumn(), TextColumn("{task.fields[line]}"),
                                  console=console, auto_refresh=False)
        self._task = self._progress.add_task("", total=None, line="starting")
        # Drawn when the numbers change (every second), not redrawn between.
        self._live = Live(self._renderable(""), console=console, auto_refresh=False, transient=False)
        self._live.start()

    def update(self, progress: RunProgress) -> None:
        parts = describe(progress)
        if progress.rows_total:
            total, completed = progress.rows_total, progress.samples
        elif progress.shards_total:  # archives: samples are counted as they come, shards are known
            total, completed = progress.shards_total, progress.shards_done
        else:
            total, completed = None, 0
        line = f"{parts['count']} · {parts['rate']} · ETA {parts['eta']}"
        self._progress.update(self._task, total=total, completed=completed, line=line)
        self._live.update(self._renderable(f"  {parts['success']} · {parts['shards']} · {parts['errors']}"),
                          refresh=True)

    def stop(self) -> None:
        self._live.stop()

    def _renderable(self, details: str) -> Group:
        return self._group(self._progress, details)


def describe(progress: RunProgress) -> dict[str, str]:
    """The pieces of a progress display, as text."""
    if progress.rows_total:
        of = f"{progress.rows_total:,}" if progress.rows_total_final else f"≥{progress.rows_total:,}"
        count = f"{progress.samples:,}/{of} samples"
        if progress.rows_total_final:
            count += f" ({progress.samples / progress.rows_total:.1%})"
    else:
        count = f"{progress.samples:,} samples"
    shards = f"shards {progress.shards_done}"
    if progress.shards_total is not None:
        shards += f"/{progress.shards_total}"
    shards += " done"
    if progress.shards_running is not None:
        shards += f", {progress.shards_running} running"
    if progress.shards_failed:
        shards += f", {progress.shards_failed} failed"
    success = "success -" if progress.success_rate is None else f"success {progress.success_rate:.1%}"
    top = progress.top_errors(3)
    errors = "errors: " + (", ".join(f"{kind} {n / progress.samples:.1%}" for kind, n in top) if top else "none")
    return {"count": count, "rate": f"{progress.samples_per_sec:,.1f} samples/s", "eta": duration(progress.eta),
            "success": success, "shards": shards, "errors": errors}


def progress_line(progress: RunProgress) -> str:
    """One log line with every piece."""
    parts = describe(progress)
    return " · ".join([parts["count"], parts["rate"], f"ETA {parts['eta']}", parts["success"], parts["shards"],
                       parts["errors"]])


def duration(seconds: float | None) -> str:
    """``1:02:03``, ``2:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@hookimpl
def any2ds_register_observers(register):
    register(ProgressObserver)
