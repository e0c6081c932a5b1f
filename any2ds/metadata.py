"""The per-sample metadata record and the per-shard metadata parquet.

Column order follows img2dataset: saved input columns, caption, url, key,
status, error_message, then any2ds's error_type, then what the processors
declare (width, height, ...), then what the verifiers declare (sha256).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

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

    @classmethod
    def build(cls, input_schema: pa.Schema, saved_columns: Sequence[str], has_caption: bool,
              plugin_fields: Sequence[pa.Field], media_streams: Sequence[str],
              leading_fields: Sequence[pa.Field] = ()) -> MetadataLayout:
        fields = [input_schema.field(name) for name in saved_columns]
        if has_caption:
            fields.append(pa.field("caption", pa.string()))
        fields.extend(leading_fields)
        fields.append(pa.field("url", pa.string()))
        fields.extend(CORE_FIELDS)
        fields.extend(plugin_fields)
        return cls(pa.schema(fields), tuple(saved_columns), has_caption, tuple(media_streams),
                   tuple(f.name for f in (*leading_fields, *plugin_fields)))

    def record(self, result: SampleResult) -> dict[str, Any]:
        """The sample's metadata row as a dict in column order (the json sidecar's content)."""
        sample = result.sample
        values = {name: sample.columns.get(name) for name in self.saved_columns}
        if self.has_caption:
            values["caption"] = sample.caption
        values.update(url=sample.url, key=sample.key, status=result.status, error_message=result.error_message,
                      error_type=result.error_type)
        values.update((name, result.metadata.get(name)) for name in self.plugin_fields)
        return {name: values[name] for name in self.schema.names}


def to_json(record: dict[str, Any]) -> str:
    """A record as JSON; values JSON cannot hold (bytes, dates) become strings."""
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
        self._records.append(record)

    def close(self) -> None:
        self._records.sort(key=lambda r: r["key"])
        table = pa.Table.from_pylist(self._records, schema=self._schema)
        with self._target.fs.open(self._target.path(".parquet"), "wb") as f:
            pq.write_table(table, f, row_group_size=ROW_GROUP_SIZE)
        self._records = []
