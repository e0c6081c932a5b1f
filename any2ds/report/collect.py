"""What ``any2ds report`` knows about an output folder, as one JSON-ready dict (docs/report.md).

Counts come from the shards' ``<shard>_stats.json``; hosts and size distributions from a few
columns of each ``<shard>.parquet``, fetched by byte range (the ``parquet`` output keeps media in
the same file: those columns are never read). Each shard is reduced to small tallies as it is
read, so memory depends on the number of distinct hosts and values, not on the number of rows.
A folder still being written is read as it is: its committed shards (those with a stats file).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import fsspec
import fsspec.parquet
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from any2ds.errors import ConfigError
from any2ds.metadata import read_parquet
from any2ds.output import RUN_DIR, STATS_NAME, STATS_SUFFIX, SUMMARY_FILE, TMP_DIR
from any2ds.storage import Storage

REPORT_VERSION = 1
# Numeric metadata columns whose distribution is reported (the image and audio processors' own).
DISTRIBUTION_COLUMNS = ("width", "height", "original_width", "original_height", "duration", "original_duration")
METADATA_COLUMNS = ("url", "status", "error_type", *DISTRIBUTION_COLUMNS)
PERCENTILES = (5, 25, 50, 75, 95)
HISTOGRAM_BINS = 30
MAX_TIME_BINS = 60
MIN_BIN_SECONDS = 0.1
# Shards read at once: remote filesystems answer each in a few round trips.
READ_THREADS = 16
# Floats are tallied at 3 significant digits (0.5% at worst), which bounds the distinct values kept.
SIGNIFICANT_DIGITS = 3
# Per-shard host tallies are merged into one table once they hold this many rows.
HOST_COMPACTION_ROWS = 1_000_000
# The scheme, optional credentials, then the host (a bracketed IPv6 address or a name).
HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"
# A parquet footer is at most a few KB for a shard; 64 KB fetches it in one request.
FOOTER_BYTES = 64 * 1024
_TMP_SHARD = re.compile(r"^(\d+)-")
# Keys of a stats file that are not a status count (img2dataset's and any2ds's).
_STATS_FIELDS = {"count", "successes", "duration", "start_time", "end_time", "status_dict", "error_types"}


@attrs.frozen
class ShardStatsFile:
    """One ``<shard>_stats.json`` as read back (any2ds's or img2dataset's)."""

    stem: str
    count: int
    successes: int
    statuses: Mapping[str, int]
    messages: Mapping[str, int]
    error_types: Mapping[str, int]
    start_time: float
    end_time: float

    @classmethod
    def parse(cls, stem: str, data: Mapping[str, Any]) -> ShardStatsFile:
        statuses = {key: value for key, value in data.items()
                    if key not in _STATS_FIELDS and isinstance(value, int) and value}
        if data.get("successes"):
            statuses["success"] = data["successes"]
        messages = {message: n for message, n in (data.get("status_dict") or {}).items() if message != "success"}
        start = float(data.get("start_time") or 0.0)
        return cls(stem, int(data.get("count", 0)), int(data.get("successes", 0)), statuses, messages,
                   dict(data.get("error_types") or {}), start, float(data.get("end_time") or start))


@attrs.frozen
class ShardRows:
    """What one shard's metadata parquet adds to the report: host tallies (``host``,
    ``error_class`` (null for a success), ``rows``) and, per distribution column, the successes'
    (values, counts)."""

    hosts: pa.Table | None
    values: dict[str, tuple[np.ndarray, np.ndarray]]


def collect_report(url: str, top: int = 10, storage: Storage = Storage()) -> dict[str, Any]:
    """The report of the output folder at ``url`` (a path or any fsspec URL, reached with
    ``storage``'s options): see docs/report.md. ``top`` bounds the hosts and error messages listed."""
    fs, root = storage.url_to_fs(url)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise ConfigError(f"{url}: no such folder")
    fs.invalidate_cache(root)  # a running folder changes between two reports of one process
    entries = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in fs.ls(root, detail=True)}
    summary = _read_json(fs, f"{root}/{SUMMARY_FILE}")
    stems = sorted(match.group(1) for match in map(STATS_NAME.match, entries) if match)
    if not stems and summary is None:
        raise ConfigError(f"{url}: not an any2ds or img2dataset output folder "
                          f"(no <shard>{STATS_SUFFIX} and no {SUMMARY_FILE})")
    warnings: list[str] = []
    shards = _read_stats(fs, root, stems, warnings)
    with_metadata = [shard.stem for shard in shards if f"{shard.stem}.parquet" in entries]
    hosts, values = _read_metadata(fs, root, with_metadata, warnings)

    count = sum(shard.count for shard in shards)
    successes = sum(shard.successes for shard in shards)
    done_ids = {int(shard.stem) for shard in shards}
    summary = summary or {}
    return {
        "report_version": REPORT_VERSION,
        "output_folder": url,
        "generated_at": time.time(),
        "state": summary.get("state", "unknown"),
        "stop_reason": summary.get("stop_reason"),
        "run_start_time": summary.get("start_time"),
        "shards": {
            "done": len(shards),
            "in_progress": len(_shards_in_progress(fs, root, entries, done_ids)),
            "failed": list(summary.get("shards_failed", [])),
            "with_metadata": len(with_metadata),
        },
        "samples": {"count": count, "successes": successes, "failures": count - successes,
                    "success_rate": successes / count if count else None},
        "statuses": _most_common(_sum_counts(shard.statuses for shard in shards)),
        "error_types": _most_common(_sum_counts(shard.error_types for shard in shards)),
        "error_messages": _top_messages(shards, top),
        "hosts": hosts.report(top),
        "throughput": _throughput(shards),
        "output_bytes": _output_bytes(fs, root, entries, successes),
        "distributions": {name: distribution(*_tallied(counter)) for name, counter in values.items() if counter},
        "warnings": warnings,
    }


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _read_stats(fs: fsspec.AbstractFileSystem, root: str, stems: list[str], warnings: list[str]) \
        -> list[ShardStatsFile]:
    paths = {f"{root}/{stem}{STATS_SUFFIX}": stem for stem in stems}
    # One call: remote filesystems fetch the files concurrently. A file gone meanwhile (an
    # overwrite run starting) is left out.
    contents = fs.cat(list(paths), on_error="omit") if paths else {}
    shards = []
    for path, stem in paths.items():
        raw = contents.get(path)
        if raw is None:
            continue
        try:
            shards.append(ShardStatsFile.parse(stem, json.loads(raw)))
        except (ValueError, TypeError, AttributeError) as exc:
            warnings.append(f"{stem}{STATS_SUFFIX}: unreadable ({exc})")
    return shards


def _shards_in_progress(fs: fsspec.AbstractFileSystem, root: str, entries: Mapping[str, Any],
                        done: set[int]) -> set[int]:
    """Shards with a temporary folder ``_tmp/<shard>-<id>`` and no stats file yet."""
    if TMP_DIR not in entries:
        return set()
    names = (path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(f"{root}/{TMP_DIR}", detail=False))
    return {int(match.group(1)) for match in map(_TMP_SHARD.match, names) if match} - done


def _read_metadata(fs: fsspec.AbstractFileSystem, root: str, stems: list[str], warnings: list[str]) \
        -> tuple[HostTally, dict[str, Counter]]:
    hosts = HostTally()
    values: dict[str, Counter] = {name: Counter() for name in DISTRIBUTION_COLUMNS}
    with ThreadPoolExecutor(READ_THREADS) as pool:
        # In chunks, so that finished shards' tallies are merged and dropped as reading goes on.
        for chunk in _chunks(stems, 4 * READ_THREADS):
            for stem, rows in zip(chunk, pool.map(lambda s: _read_shard_rows(fs, f"{root}/{s}.parquet"), chunk)):
                if isinstance(rows, Exception):
                    warnings.append(f"{stem}.parquet: unreadable ({rows})")
                    continue
                hosts.add(rows.hosts)
                for name, (column_values, counts) in rows.values.items():
                    values[name].update(dict(zip(column_values.tolist(), counts.tolist())))
    return hosts, values


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _read_shard_rows(fs: fsspec.AbstractFileSystem, path: str) -> ShardRows | Exception:
    """The tallies of one metadata parquet, or the error that made it unreadable (contained: one
    broken shard does not stop the report)."""
    try:
        # Fetches the footer, then only the byte ranges of these columns' chunks.
        with fsspec.parquet.open_parquet_file(path, fs=fs, columns=list(METADATA_COLUMNS), engine="pyarrow",
                                              footer_sample_size=FOOTER_BYTES) as f:
            table = read_parquet(f, METADATA_COLUMNS)  # on this thread, no pyarrow pool: see read_parquet
    except Exception as exc:  # noqa: BLE001 - any reader error is reported, not raised
        return exc
    return shard_rows(table)


def shard_rows(table: pa.Table) -> ShardRows:
    """Reduce a shard's metadata columns to :class:`ShardRows`."""
    names = table.column_names
    if "status" not in names:
        return ShardRows(None, {})
    status = table["status"]
    succeeded = pc.fill_null(pc.equal(status, "success"), False)
    hosts = None
    if "url" in names:
        # A failure's class is its error type, or its status where no type was recorded (img2dataset).
        failure = pc.coalesce(table["error_type"], status) if "error_type" in names else status
        error_class = pc.if_else(succeeded, pa.scalar(None, pa.string()), failure)
        host = pc.utf8_lower(pc.struct_field(pc.extract_regex(table["url"], HOST_PATTERN), "host"))
        tally = pa.table({"host": host, "error_class": error_class, "rows": pa.repeat(1, table.num_rows)})
        hosts = HostTally.grouped(tally.filter(pc.is_valid(tally["host"])))
    values = {}
    successes = table.filter(succeeded)
    for name in DISTRIBUTION_COLUMNS:
        if name in names:
            column = successes[name]
            if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                values[name] = _value_counts(column)
    return ShardRows(hosts, values)


def _value_counts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    data = pc.drop_null(column).to_numpy()
    if np.issubdtype(data.dtype, np.floating):
        data = significant(data[np.isfinite(data)], SIGNIFICANT_DIGITS)
    return np.unique(data, return_counts=True)


def significant(values: np.ndarray, digits: int) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (zeros stay zeros)."""
    magnitude = np.floor(np.log10(np.abs(values), where=values != 0, out=np.zeros_like(values)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


class HostTally:
    """Rows per (host, error class) over every shard, kept as an Arrow table: compact for the
    millions of hosts a web-scale run meets."""

    def __init__(self) -> None:
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._compact_at = HOST_COMPACTION_ROWS

    @staticmethod
    def grouped(table: pa.Table) -> pa.Table:
        """``table`` (host, error_class, rows) with one row per (host, error_class)."""
        summed = table.group_by(["host", "error_class"]).aggregate([("rows", "sum")])
        return summed.select(["host", "error_class", "rows_sum"]).rename_columns(["host", "error_class", "rows"])

    def add(self, table: pa.Table | None) -> None:
        if table is None or not table.num_rows:
            return
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows >= self._compact_at:
            merged = self._merged()
            # Compact again only once the tally has doubled: linear work however many hosts there are.
            self._compact_at = max(HOST_COMPACTION_ROWS, 2 * merged.num_rows)

    def _merged(self) -> pa.Table | None:
        if not self._tables:
            return None
        merged = self.grouped(pa.concat_tables(self._tables)) if len(self._tables) > 1 else self._tables[0]
        self._tables, self._rows = [merged], merged.num_rows
        return merged

    def report(self, top: int) -> dict[str, Any]:
        """Distinct hosts, failing hosts and the ``top`` hosts with most failures, each with its
        samples, failures, failure rate and failures by error class."""
        table = self._merged()
        if table is None:
            return {"distinct": 0, "failing": 0, "top_failing": []}
        per_host = table.group_by("host").aggregate([("rows", "sum")])
        failed = table.filter(pc.is_valid(table["error_class"]))
        failing = failed.group_by("host").aggregate([("rows", "sum")]).rename_columns(["host", "failures"])
        ranked = failing.sort_by([("failures", "descending"), ("host", "ascending")]).slice(0, top)
        totals = dict(zip(*per_host.select(["host", "rows_sum"]).to_pydict().values()))
        classes: dict[str, Counter] = {host: Counter() for host in ranked["host"].to_pylist()}
        for row in failed.filter(pc.is_in(failed["host"], ranked["host"])).to_pylist():
            classes[row["host"]][row["error_class"]] += row["rows"]
        top_failing = [{"host": host, "count": totals[host], "failures": failures,
                        "failure_rate": failures / totals[host], "error_types": _most_common(classes[host])}
                       for host, failures in zip(ranked["host"].to_pylist(), ranked["failures"].to_pylist())]
        return {"distinct": per_host.num_rows, "failing": failing.num_rows, "top_failing": top_failing}


def _sum_counts(counts: Iterable[Mapping[str, int]]) -> Counter:
    total: Counter = Counter()
    for one in counts:
        total.update(one)
    return total


def _most_common(counter: Counter, limit: int | None = None) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:limit])


def _top_messages(shards: list[ShardStatsFile], top: int) -> dict[str, Any]:
    messages = _sum_counts(shard.messages for shard in shards)
    return {"distinct": len(messages), "top": _most_common(messages, top)}


def _tallied(counter: Counter) -> tuple[np.ndarray, np.ndarray]:
    values = np.array(sorted(counter))
    return values, np.array([counter[value] for value in values.tolist()])


def distribution(values: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    """Count, min, max, mean, percentiles (nearest rank) and an equal-width histogram of the
    sorted distinct ``values`` seen ``counts`` times each."""
    total = int(counts.sum())
    cumulative = np.cumsum(counts)
    percentiles = {f"p{q}": values[np.searchsorted(cumulative, max(1, math.ceil(q / 100 * total)))].item()
                   for q in PERCENTILES}
    histogram, edges = np.histogram(values, bins=min(HISTOGRAM_BINS, len(values)), weights=counts)
    return {"count": total, "min": values[0].item(), "max": values[-1].item(),
            "mean": float(np.dot(values.astype(float), counts) / total), "percentiles": percentiles,
            "histogram": {"edges": edges.tolist(), "counts": histogram.astype(int).tolist()}}


def _throughput(shards: list[ShardStatsFile]) -> dict[str, Any] | None:
    """Rates over the time the shards ran, each shard's samples spread evenly over its
    start-to-end interval (the metadata has no per-sample time)."""
    if not shards:
        return None
    starts = np.array([shard.start_time for shard in shards])
    ends = np.maximum(np.array([shard.end_time for shard in shards]), starts + 1e-6)
    counts = np.array([shard.count for shard in shards], dtype=float)
    successes = np.array([shard.successes for shard in shards], dtype=float)
    first, last = starts.min(), ends.max()
    bins = int(min(MAX_TIME_BINS, max(1, (last - first) // MIN_BIN_SECONDS)))  # each at least MIN_BIN_SECONDS
    edges = np.linspace(first, last, bins + 1)
    bin_seconds = (last - first) / bins
    series_samples, series_successes = np.zeros(bins), np.zeros(bins)
    # In blocks of shards, so that the (shards x bins) overlap matrix stays small.
    for block in range(0, len(shards), 4096):
        s, e = starts[block:block + 4096, None], ends[block:block + 4096, None]
        share = np.clip(np.minimum(e, edges[None, 1:]) - np.maximum(s, edges[None, :-1]), 0, None) / (e - s)
        series_samples += counts[block:block + 4096] @ share
        series_successes += successes[block:block + 4096] @ share
    active = _covered_seconds(starts, ends)
    durations = ends - starts
    return {
        "start_time": float(first), "end_time": float(last), "active_seconds": active,
        "samples_per_sec": float(counts.sum() / active), "successes_per_sec": float(successes.sum() / active),
        "bin_seconds": bin_seconds,
        "series": {"start_time": edges[:-1].tolist(), "samples_per_sec": (series_samples / bin_seconds).tolist(),
                   "successes_per_sec": (series_successes / bin_seconds).tolist()},
        "shard_seconds": distribution(*np.unique(significant(durations, SIGNIFICANT_DIGITS), return_counts=True)),
    }


def _covered_seconds(starts: np.ndarray, ends: np.ndarray) -> float:
    """The length of the union of the intervals: a resumed run's pause is not counted."""
    covered, reach = 0.0, -math.inf
    for start, end in sorted(zip(starts.tolist(), ends.tolist())):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def _output_bytes(fs: fsspec.AbstractFileSystem, root: str, entries: Mapping[str, Mapping[str, Any]],
                  successes: int) -> dict[str, Any]:
    """Bytes of everything in the folder but its run files, by kind: ``<shard>`` and what follows
    the shard's number (``<shard>.tar``, ``<shard>_stats.json``, ``<shard>/`` for a shard folder),
    or the entry's own name (``dataset.lance/``)."""
    by_kind: Counter = Counter()
    folders = []
    for name, entry in entries.items():
        if name in (TMP_DIR, RUN_DIR):
            continue
        kind = re.sub(r"^\d+", "<shard>", name)
        if entry.get("type") == "directory":
            folders.append((f"{kind}/", entry["name"]))
        else:
            by_kind[kind] += int(entry.get("size") or 0)
    with ThreadPoolExecutor(READ_THREADS) as pool:  # a listing per folder (the files output: one per shard)
        for (kind, _path), size in zip(folders, pool.map(lambda folder: fs.du(folder[1]), folders)):
            by_kind[kind] += size
    total = sum(by_kind.values())
    return {"total": total, "by_kind": _most_common(by_kind), "per_success": total / successes if successes else None}
