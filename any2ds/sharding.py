"""Cutting the input into shards, streaming: memory does not grow with the input.

As in img2dataset, each input file is cut into ``ceil(rows / number_sample_per_shard)``
shards (the last one short, files never merged) and shard ids continue
across the files in sorted order, so keys are the same from run to run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa

from any2ds.components import Reader, SampleReader
from any2ds.errors import ConfigError
from any2ds.types import InputSource, Shard

READ_BATCH_ROWS = 8192


class ShardCutter:
    """Reads every input file through ``reader`` and yields shards of ``rows_per_shard`` rows.

    ``columns`` are the input columns to read, the URL column first. Shards whose
    id is in ``skip`` are read past but not yielded; ``first_id`` offsets every id
    (extend mode).
    """

    def __init__(self, reader: Reader, sources: Sequence[InputSource], columns: Sequence[str],
                 rows_per_shard: int, skip: set[int] = frozenset(), first_id: int = 0) -> None:
        self.reader = reader
        self.sources = sources
        self.columns = list(dict.fromkeys(columns))
        self.rows_per_shard = rows_per_shard
        self.skip = skip
        self.first_id = first_id

    def __iter__(self) -> Iterator[Shard]:
        shard_id = self.first_id
        for source in self.sources:
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            for batch in self._batches(source):
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= self.rows_per_shard:
                    table = pa.Table.from_batches(pending)
                    rows, rest = table.slice(0, self.rows_per_shard), table.slice(self.rows_per_shard)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
                    if shard_id not in self.skip:
                        yield Shard(shard_id, rows=_compact(rows))
                    shard_id += 1
            if pending_rows:
                if shard_id not in self.skip:
                    yield Shard(shard_id, rows=_compact(pa.Table.from_batches(pending)))
                shard_id += 1

    def _batches(self, source: InputSource) -> Iterator[pa.RecordBatch]:
        """The file's batches, every requested column present and in order."""
        _check_source_columns(self.reader, source, self.columns)
        for batch in self.reader.read(source, self.columns, READ_BATCH_ROWS):
            if batch.num_rows:
                batch = _with_columns(batch, self.columns)
                _check_url_type(source, batch.schema.field(0))  # the URL column is first
                yield batch


def check_input_columns(reader: Reader, sources: Sequence[InputSource], columns: Sequence[str]) -> None:
    """Refuse an input whose first file lacks a column the run reads, before anything is written.
    Each file is checked again as it is read (a later one may lack it)."""
    for source in sources[:1]:
        _check_source_columns(reader, source, columns)


def _check_source_columns(reader: Reader, source: InputSource, columns: Sequence[str]) -> None:
    available = reader.available_columns(source)
    if available:  # None: no column names (txt); []: an empty file, zero rows
        check_columns(f"input file {source.path}", columns, available)


def check_columns(where: str, columns: Sequence[str], available: Sequence[str]) -> None:
    """A ConfigError naming the ``columns`` missing from ``available``, the columns ``where`` has."""
    missing = [c for c in columns if c not in available]
    if missing:
        raise ConfigError(
            f"{where}: column(s) {', '.join(map(repr, missing))} not found; its columns are: "
            f"{', '.join(map(repr, available))} (check url_col, caption_col, save_additional_columns "
            "and the options naming input columns)"
        )


def _check_url_type(source: InputSource, field: pa.Field) -> None:
    """Refuse a URL column that does not hold text (ints, lists), as the jsonl reader does: its
    type is the file's, so every row would fail. Binary holds text in many parquet files."""
    url_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    if not (pa.types.is_null(url_type) or pa.types.is_string(url_type) or pa.types.is_large_string(url_type)
            or pa.types.is_binary(url_type) or pa.types.is_large_binary(url_type)):
        raise ConfigError(f"input file {source.path}: column {field.name!r} is {field.type}, not text "
                          "(URLs must be strings)")


def counted_shards(reader: Reader, sources: Sequence[InputSource], rows_per_shard: int,
                   skip: set[int] = frozenset(), first_id: int = 0) -> tuple[int | None, list[int]] | None:
    """The rows and the shard ids a run will read, found without reading the rows, or None when
    the reader cannot count them (see :meth:`Reader.count_rows`). A SampleReader's rows are
    unknown (None); its shards are its plan's."""
    if isinstance(reader, SampleReader):
        return None, [shard_id + first_id for shard_id, _ in reader.plan(sources) if shard_id + first_id not in skip]
    rows, ids = 0, []
    shard_id = first_id
    for source in sources:
        count = reader.count_rows(source)
        if count is None:
            return None
        in_file = -(-count // rows_per_shard)  # as ShardCutter cuts: per file, the last shard short
        rows += count
        for index in range(in_file):
            if shard_id + index in skip:
                rows -= min(rows_per_shard, count - index * rows_per_shard)
            else:
                ids.append(shard_id + index)
        shard_id += in_file
    return rows, ids


def planned_shards(reader: SampleReader, sources: Sequence[InputSource], columns: Sequence[str],
                   skip: set[int] = frozenset(), first_id: int = 0) -> Iterator[Shard]:
    """The shards a SampleReader plans: ids offset by ``first_id``, those in ``skip`` left out."""
    schema = reader.column_schema(sources, columns)
    for shard_id, work in reader.plan(sources):
        if shard_id + first_id not in skip:
            yield Shard(shard_id + first_id, work=work, schema=schema)


def _with_columns(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows, pa.string()) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _compact(table: pa.Table) -> pa.Table:
    """A copy holding only the shard's rows: a slice would pickle its parent's buffers.

    Concatenated, not taken: ``take`` imports pyarrow.compute (9 MB) into the main process.
    """
    return pa.Table.from_arrays([pa.concat_arrays(column.chunks) for column in table.columns], schema=table.schema)
