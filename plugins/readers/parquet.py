"""``input_format: parquet``: only the requested columns, one row group at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from any2ds import ConfigError, InputSource, Reader
from any2ds_plugins.readers.common import (
    DATA_ERRORS, GZIP_ERRORS, data_error, guarded, input_error, one_line, present_columns, rebatch,
)

PARQUET_BUFFER_BYTES = 1024 * 1024
"""Read buffer of a parquet column chunk, so that pages stream from the file."""


class ParquetReader(Reader):
    """Apache Parquet (``parquet``): only the requested columns, one row group at a time."""

    name = "parquet"

    def available_columns(self, source: InputSource) -> list[str]:
        """The schema's top-level column names, from the footer."""
        with source.open() as f:
            return self._file(source, f).schema_arrow.names

    def count_rows(self, source: InputSource) -> int | None:
        """The rows the footer declares (None for a compressed file: its footer is at the end of
        everything decompressed)."""
        if source.compression:
            return None
        with source.open() as f:
            return self._file(source, f).metadata.num_rows

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        def batches() -> Iterator[pa.RecordBatch]:
            with source.open() as f:
                parquet = self._file(source, f)
                present = present_columns(columns, parquet.schema_arrow.names)
                if not present:
                    return
                for batch in parquet.iter_batches(batch_size=batch_size, columns=present):
                    yield batch.select(present)

        yield from rebatch(guarded(batches(), lambda exc: self._error(source, exc, "corrupt parquet data"),
                                     (*DATA_ERRORS, OSError)), batch_size)

    def _file(self, source: InputSource, f: BinaryIO) -> pq.ParquetFile:
        try:
            # No pre-buffering: it would read every requested column chunk of
            # the file, i.e. the whole file, before the first batch.
            return pq.ParquetFile(f, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
        except (*DATA_ERRORS, OSError) as exc:
            error = self._error(source, exc, "not a parquet file")
            if error is None:
                raise
            raise error from exc

    @staticmethod
    def _error(source: InputSource, exc: BaseException, what: str) -> ConfigError | None:
        """A ConfigError for bad data, None for an I/O failure.

        pyarrow reports corrupt pages as a plain OSError; failures of the file
        object itself keep their more specific types (ConnectionError, ...).
        """
        if isinstance(exc, GZIP_ERRORS):
            return data_error(source, exc)
        if isinstance(exc, DATA_ERRORS) or type(exc) is OSError:
            return input_error(source, f"{what}: {one_line(exc)}")
        return None
