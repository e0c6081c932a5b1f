"""``output_format: parquet``: one parquet per shard holding metadata and media together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from any2ds import MetadataLayout, OutputFolder, SampleResult, ShardTarget, ShardWriter, Writer, read_parquet

# A row group is written once either limit is reached, so a shard's media is
# never all in memory (img2dataset used 100-row groups).
ROW_GROUP_ROWS = 256
ROW_GROUP_BYTES = 64 * 1024 * 1024


class RowGroups:
    """A shard's rows (:meth:`MetadataLayout.table_row`: metadata columns, then one binary column
    per media stream, null for failures), buffered until a row group is full: ``ROW_GROUP_ROWS``
    rows or ``ROW_GROUP_BYTES`` of media. Shared by the writers that store media in columns."""

    def __init__(self, layout: MetadataLayout) -> None:
        self.layout = layout
        self.schema = layout.table_schema()
        self._rows: list[dict[str, Any]] = []
        self._media_bytes = 0

    def add(self, result: SampleResult) -> bool:
        """Buffer one row; True when the row group is full and should be taken."""
        row = self.layout.table_row(result)
        self._media_bytes += sum(len(row[stream] or b"") for stream in self.layout.media_streams)
        self._rows.append(row)
        return len(self._rows) >= ROW_GROUP_ROWS or self._media_bytes >= ROW_GROUP_BYTES

    def take(self) -> pa.Table | None:
        """The buffered rows as a table (None when there are none); the buffer starts afresh."""
        table = pa.Table.from_pylist(self._rows, schema=self.schema) if self._rows else None
        self.clear()
        return table

    def clear(self) -> None:
        self._rows = []
        self._media_bytes = 0


class ParquetWriter(Writer):
    """img2dataset's ``parquet`` layout: ``<shard>.parquet`` with every row (completion
    order) and a binary column per media stream (e.g. ``jpg``), null for failures."""

    name = "parquet"

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> ParquetShardWriter:
        return ParquetShardWriter(target, layout)

    def read_output(self, output: OutputFolder) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        for shard_name in output.done_shard_names():
            with output.fs.open(output.join(f"{shard_name}.parquet"), "rb") as f:
                table = read_parquet(f)  # not pq.read_table: see read_parquet
            yield from rows_and_media(table)


def rows_and_media(table: pa.Table) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
    """Split rows of metadata + binary media columns into (metadata row, {stream: bytes})."""
    streams = [field.name for field in table.schema if pa.types.is_binary(field.type)]
    for row in table.to_pylist():
        media = {stream: row.pop(stream) for stream in streams}
        yield row, {stream: data for stream, data in media.items() if data is not None}


class ParquetShardWriter(ShardWriter):
    """Writes the rows as row groups as it goes."""

    def __init__(self, target: ShardTarget, layout: MetadataLayout) -> None:
        self._rows = RowGroups(layout)
        self._file = target.open(".parquet")
        # Dictionary encoding and statistics only pay off for metadata, never for unique media blobs,
        # and compressing already compressed media gains nothing: each of those held copies of a body
        # (a 64 MiB body cost 11-13 copies in memory, 4 without them).
        metadata = list(layout.schema.names)
        compression = {name: "snappy" if name in metadata else "none" for name in self._rows.schema.names}
        self._writer = pq.ParquetWriter(self._file, self._rows.schema, use_dictionary=metadata,
                                        write_statistics=metadata, compression=compression)

    def write(self, result: SampleResult) -> None:
        if self._rows.add(result):
            self._flush()

    def _flush(self) -> None:
        table = self._rows.take()
        if table is not None:
            self._writer.write_table(table)

    def close(self) -> None:
        try:
            self._flush()
            self._writer.close()
        finally:
            self._file.close()

    def abort(self) -> None:
        """Drop the buffered rows and close the file, best effort (as MetadataShardWriter.abort)."""
        self._rows.clear()
        with contextlib.suppress(Exception):
            self.close()
