"""The per-sample metadata record and the per-shard metadata parquet.

Column order follows img2dataset: saved input columns, caption, url, key,
status, error_message, then any2ds's error_type, then what the processors
declare (width, height, ...), then what the verifiers declare (sha256).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

from any2ds.errors import ConfigError

if TYPE_CHECKING:
    from any2ds.output import ShardTarget
    from any2ds.types import SampleResult

CORE_FIELDS = (
    pa.field("key", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("error_type", pa.string()),
)
# Row groups of img2dataset are 100 rows; bigger ones read much faster.
ROW_GROUP_SIZE = 10_000
# What ends a metadata value cut to its cap (counted in the cap).
TRUNCATION_MARK = "...[truncated]"
# A value cut to share the per-sample cap keeps at least this many bytes.
MIN_KEPT_BYTES = 64


@attrs.frozen
class MetadataLayout:
    """What a shard's metadata looks like; writers use it to build each record.

    ``saved_columns`` are input column names copied as they are; ``has_caption``
    adds ``caption``; ``media_streams`` are the stream names processors fill;
    ``plugin_fields`` the metadata fields components fill, the
    ``leading_fields`` among them standing before ``url`` (where img2dataset
    puts a verified hash), the others after the core fields.
    """

    schema: pa.Schema
    saved_columns: tuple[str, ...]
    has_caption: bool
    media_streams: tuple[str, ...]
    plugin_fields: tuple[str, ...]
    max_field_bytes: int = 64 * 1024
    max_record_bytes: int = 1024 * 1024

    @classmethod
    def build(cls, input_schema: pa.Schema, saved_columns: Sequence[str], has_caption: bool,
              plugin_fields: Sequence[pa.Field], media_streams: Sequence[str],
              leading_fields: Sequence[pa.Field] = (), max_field_bytes: int = 64 * 1024,
              max_record_bytes: int = 1024 * 1024) -> MetadataLayout:
        """The layout of a run's shards; ``input_schema`` types the saved input columns."""
        fields = [input_schema.field(name) for name in saved_columns]
        if has_caption:
            fields.append(pa.field("caption", pa.string()))
        fields.extend(leading_fields)
        fields.append(pa.field("url", pa.string()))
        fields.extend(CORE_FIELDS)
        fields.extend(plugin_fields)
        return cls(pa.schema(fields), tuple(saved_columns), has_caption, tuple(media_streams),
                   tuple(f.name for f in (*leading_fields, *plugin_fields)), max_field_bytes, max_record_bytes)

    def record(self, result: SampleResult) -> dict[str, Any]:
        """The sample's metadata row as a dict in column order: what the parquet, the json sidecar,
        the txt caption and tfrecord features hold. Text and bytes values are bounded: each to
        ``max_field_bytes``, all together to ``max_record_bytes`` (the longest cut first); a cut
        value ends with ``...[truncated]``."""
        sample = result.sample
        values = {name: sample.columns.get(name) for name in self.saved_columns}
        if self.has_caption:
            values["caption"] = sample.caption
        values.update(url=sample.url, key=sample.key, status=result.status, error_message=result.error_message,
                      error_type=result.error_type)
        values.update((name, result.metadata.get(name)) for name in self.plugin_fields)
        return bound_values({name: values[name] for name in self.schema.names}, self.max_field_bytes,
                            self.max_record_bytes)


    def table_schema(self) -> pa.Schema:
        """The metadata columns followed by one binary column per media stream: a parquet shard's
        columns, and what :meth:`any2ds.Pipeline.process_batch` returns."""
        clash = [stream for stream in self.media_streams if stream in self.schema.names]
        if clash:
            raise ConfigError(f"media stream(s) {clash} have the name of a metadata column "
                              "(a table has one column per name)")
        schema = self.schema
        for stream in self.media_streams:
            schema = schema.append(pa.field(stream, pa.binary()))
        return schema

    def table_row(self, result: SampleResult) -> dict[str, Any]:
        """The sample's :meth:`record` plus its bytes under each media stream (None for a
        stream it lacks, and for every stream of a failure): a row of :meth:`table_schema`."""
        row = self.record(result)
        for stream in self.media_streams:
            media = result.media.get(stream) if result.ok else None
            row[stream] = None if media is None else media.data
        return row


def bound_values(values: dict[str, Any], max_field_bytes: int, max_total_bytes: int) -> dict[str, Any]:
    """``values`` with every text or bytes value cut to ``max_field_bytes`` (UTF-8 bytes), then
    the longest cut further until they sum to at most ``max_total_bytes``; in place."""
    sized = {name: value for name, value in values.items() if isinstance(value, (str, bytes)) and name != "key"}
    # A str of n characters has at most 4n UTF-8 bytes: most records need no encoding at all.
    if all(len(v) * 4 <= max_field_bytes for v in sized.values()) and \
            sum(len(v) * 4 for v in sized.values()) <= max_total_bytes:
        return values
    sizes = {name: len(v.encode("utf-8")) if isinstance(v, str) else len(v) for name, v in sized.items()}
    limits = {name: min(size, max_field_bytes) for name, size in sizes.items()}
    excess = sum(limits.values()) - max_total_bytes
    for name in sorted(limits, key=limits.__getitem__, reverse=True):
        if excess <= 0:
            break
        cut = min(excess, max(0, limits[name] - MIN_KEPT_BYTES))
        limits[name] -= cut
        excess -= cut
    for name, limit in limits.items():
        if sizes[name] > limit:
            values[name] = _truncated(sized[name], limit)
    return values


def _truncated(value: str | bytes, limit: int) -> str | bytes:
    """``value`` cut so that it and the truncation mark fit in ``limit`` bytes."""
    mark = TRUNCATION_MARK.encode()
    data = value.encode("utf-8") if isinstance(value, str) else value
    kept = data[: max(0, limit - len(mark))]
    if isinstance(value, str):
        return kept.decode("utf-8", errors="ignore") + TRUNCATION_MARK  # drops a character cut in half
    return kept + mark


# Values a record holds that JSON writes as they are (anything else goes through ``default=str``).
_PLAIN_JSON_TYPES = frozenset({str, int, float, bool, type(None)})
# json's C encoder does not indent: for a flat record, items joined by a newline and four spaces
# are the text indent=4 gives, at about half the CPU.
_FLAT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",\n    ", ": "))


def to_json(record: dict[str, Any]) -> str:
    """A record as JSON indented by 4, as img2dataset writes its sidecars; values JSON cannot hold
    (bytes, dates) become strings."""
    if record and all(type(value) in _PLAIN_JSON_TYPES for value in record.values()):
        return "{\n    " + _FLAT_ENCODER.encode(record)[1:-1] + "\n}"
    return json.dumps(record, indent=4, default=str, ensure_ascii=False)


class MetadataParquetWriter:
    """Collects a shard's records and writes them, sorted by key, as ``<shard>.parquet``.

    Records are small, so a shard's worth is kept in memory; sorting makes the
    file independent of completion order.
    """

    def __init__(self, target: ShardTarget, layout: MetadataLayout) -> None:
        self._target = target
        self._schema = layout.schema
        self._records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        """Keep one metadata row (a :meth:`MetadataLayout.record`)."""
        self._records.append(record)

    def close(self) -> None:
        """Write ``<shard>.parquet`` (to the shard's temporary path). There is nothing to abort:
        until this is called, nothing is written."""
        self._records.sort(key=lambda r: r["key"])
        table = pa.Table.from_pylist(self._records, schema=self._schema)
        with self._target.open(".parquet") as f:
            pq.write_table(table, f, row_group_size=ROW_GROUP_SIZE)
        self._records = []


def read_parquet(f: BinaryIO, columns: Sequence[str] | None = None) -> pa.Table:
    """A parquet file read whole from a Python file object (an fsspec file) on this thread:
    the ``columns`` it has among those given, or all of them.

    Not ``pq.read_table(f)``: pyarrow's thread pools read a Python file through the GIL, and a
    pool thread may drop the last reference to the Python-owned buffers a read made (its read
    cache, its column readers) after the read returned. Should the interpreter be exiting
    then, that thread's PyGILState_Ensure ends it (pthread_exit) inside a C++ destructor:
    std::terminate, "terminate called without an active exception", SIGABRT at exit. Without
    pre-buffering (no I/O pool) and with use_threads=False (no CPU pool), no pool thread
    touches the file or its buffers.
    """
    parquet = pq.ParquetFile(f, pre_buffer=False)
    present = None if columns is None else [name for name in columns if name in parquet.schema_arrow.names]
    return parquet.read(columns=present, use_threads=False)


class _RefusePandas:
    """A module finder that refuses to import pandas (see :func:`settle_pandas_probe`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("not imported for pyarrow's probe", name=name)
        return None


def settle_pandas_probe() -> None:
    """In a process any2ds runs for itself alone (the CLI's, a multiprocessing worker), once its
    plugins are loaded: when none of them imported pandas, let pyarrow find pandas absent.

    pyarrow's first conversion of Python values (``pa.array``, ``Table.from_pylist``, a compute
    call given a Python number) imports pandas when it is installed, only to recognise pandas
    objects, of which such a process has none: 44 MB and 0.3 s of CPU in each process. pyarrow
    asks once per process and remembers the answer; its pandas functions (``to_pandas``,
    ``from_pandas``) import pandas when called, and recognise pandas objects from then on.
    """
    if "pandas" in sys.modules:
        return
    refuse = _RefusePandas()
    sys.meta_path.insert(0, refuse)
    try:
        pa.array([0])  # asks
    finally:
        sys.meta_path.remove(refuse)
