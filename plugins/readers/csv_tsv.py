"""``input_format: csv`` and ``tsv``: delimited text with a header line, parsed by pyarrow."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
from fsspec.implementations.local import LocalFileSystem

from any2ds import ConfigError, InputSource, Reader
from any2ds_plugins.readers.common import (
    CHUNK_BYTES, DATA_ERRORS, GZIP_ERRORS, as_text_type, data_error, guarded, input_error, line_chunks, not_utf8,
    one_line, open_text, present_columns, read_input, rebatch,
)

CSV_INFER_BYTES = 1024 * 1024
"""pyarrow infers CSV column types from its first block; img2dataset's block size."""

CSV_BLOCK_BYTES = (256 * 1024, 64 * 1024 * 1024)
"""pyarrow CSV block size when reading: first and largest. pyarrow reads up to
32 blocks ahead, so blocks stay small; a row must fit in one, and the reader
starts over with larger blocks when one does not."""


class CsvReader(Reader):
    """Comma-separated values with a header line (``csv``), parsed block by block by pyarrow.

    Column types are inferred from the first 1 MiB block, as img2dataset's
    pyarrow reader did (an int column stays int64), except that the URL column
    and every column inferred as text or all-null are read as strings, so a
    later block cannot break them. Quoted values may hold delimiters, quotes and
    newlines; empty lines are skipped. pyarrow reads the file natively (see
    _local_file): a file on a non-local filesystem is first copied to a local
    temporary directory.

    A row with the wrong number of fields raises ConfigError naming its line
    rather than being skipped: dropping rows silently would shift sample keys
    and lose URLs. So does a later value that does not fit a non-text column's
    inferred type (``abc`` in an int64 column), naming the column.
    """

    name = "csv"
    delimiter = ","

    def available_columns(self, source: InputSource) -> list[str]:
        """The header's column names."""
        return self._first_block_schema(source).names

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        schema = self._first_block_schema(source)
        present = present_columns(columns, schema.names)
        if not present:
            return
        types = {name: pa.string() if name == columns[0] else as_text_type(schema.field(name).type)
                 for name in present}
        convert = pacsv.ConvertOptions(include_columns=present, column_types=types)

        with _local_file(source) as (path, compression):

            def open_reader(block_size: int) -> Iterator[pa.RecordBatch]:
                with pa.input_stream(path, compression=compression) as stream:
                    yield from pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block_size),
                                              parse_options=self._parse_options(), convert_options=convert)

            batches = _growing_blocks(open_reader, CSV_BLOCK_BYTES)
            yield from rebatch(guarded(batches, lambda exc: self._error(source, exc, schema.names),
                                         (*DATA_ERRORS, OSError)), batch_size)

    def _parse_options(self) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True)

    def _first_block_schema(self, source: InputSource) -> pa.Schema:
        """Column names and types as pyarrow infers them from the first block.

        Parsed from the head of the file held in memory: a reader on the file
        itself would read 32 blocks ahead just to return the schema.
        """
        block, largest = CSV_INFER_BYTES, CSV_BLOCK_BYTES[1]
        while True:
            with open_text(source, self.name) as f:
                # pyarrow completes the first block's cut-off last row from the
                # second block; one byte more and that row is never taken for
                # the end of the file.
                head = read_input(source, f, 2 * block + 1)
            if not head:
                raise input_error(source, f"empty file; {self.name} input needs a header line")
            try:
                read_options = pacsv.ReadOptions(block_size=block, use_threads=False)
                return pacsv.open_csv(pa.BufferReader(head), read_options=read_options,
                                      parse_options=self._parse_options()).schema
            except DATA_ERRORS as exc:
                if _is_straddling(exc) and block < largest:
                    block = min(block * 4, largest)
                    continue
                raise self._error(source, exc, None) from exc

    def _error(self, source: InputSource, exc: BaseException, names: Sequence[str] | None) -> ConfigError | None:
        """Name the column of a conversion error, or the line of a malformed row; None for an I/O failure."""
        message = one_line(exc)
        if isinstance(exc, OSError) and not isinstance(exc, DATA_ERRORS):
            # pyarrow reports bad compressed data as a plain OSError.
            if type(exc) is OSError and source.compression:
                return input_error(source, f"not valid {source.compression} data: {message}")
            return None
        if "invalid UTF8" in message:
            return self._find_bad_utf8(source) or data_error(source, exc)
        conversion = re.match(r"In CSV column #(\d+): (.*)", message)
        if conversion and names is not None and int(conversion[1]) < len(names):
            column = names[int(conversion[1])]
            return input_error(source, f"column {column!r}: {conversion[2]} (its type was inferred from the first rows)")
        if _is_straddling(exc):
            return input_error(source, f"a row is longer than {CSV_BLOCK_BYTES[1] >> 20} MiB")
        if "columns, got" in message:
            where = self._find_bad_row(source)
            if where:
                return input_error(source, where)
        return data_error(source, exc)

    def _find_bad_utf8(self, source: InputSource) -> ConfigError | None:
        """The error naming the first line that is not UTF-8 (pyarrow's names the column only);
        None if this scan finds none."""
        with source.open() as f:
            for line, chunk in line_chunks(source, f):
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return not_utf8(source, line, chunk, exc)
        return None

    def _find_bad_row(self, source: InputSource) -> str | None:
        """Scan the file with the csv module for the first row with the wrong field count.

        Only called after pyarrow refused the file, whose error does not say
        where; None if this scan finds nothing either.
        """
        try:
            with source.open() as f:
                rows = csv.reader((line.decode("utf-8-sig") for line in f), delimiter=self.delimiter)
                header = next(rows, None)
                if header is None:
                    return None
                start = rows.line_num + 1
                for row in rows:
                    if row and len(row) != len(header):
                        return f"line {start}: expected {len(header)} fields, got {len(row)}"
                    start = rows.line_num + 1
        except (csv.Error, UnicodeDecodeError, *GZIP_ERRORS):
            return None
        return None


class TsvReader(CsvReader):
    """Tab-separated values with a header line (``tsv``); otherwise exactly like ``csv``."""

    name = "tsv"
    delimiter = "\t"


@contextlib.contextmanager
def _local_file(source: InputSource) -> Iterator[tuple[str, str | None]]:
    """A local path holding the file, and its compression, for pyarrow to open natively.

    pyarrow's CSV reader reads ahead on its own threads. Handed a Python file
    object, those threads call back into Python, and the process can hang or
    abort at exit (seen here with fsspec files; apache/arrow#34314). A local
    file is used in place (pyarrow decompresses gzip, bz2, zstd, lz4); any
    other is first copied, decompressed, into a temporary directory.
    """
    if isinstance(source.fs, LocalFileSystem) and _native_codec(source.compression):
        yield source.fs._strip_protocol(source.path), source.compression
        return
    with tempfile.TemporaryDirectory(prefix="any2ds-input-") as directory:
        local = os.path.join(directory, "input")
        with source.open() as f, open(local, "wb") as copy:
            while data := read_input(source, f, CHUNK_BYTES):
                copy.write(data)
        yield local, None


def _native_codec(compression: str | None) -> bool:
    """Whether pyarrow can decompress ``compression`` itself (None: nothing to decompress)."""
    if compression is None:
        return True
    try:
        return pa.Codec.is_available(compression)
    except ValueError:
        return False


def _growing_blocks(open_reader: Callable[[int], Iterator[pa.RecordBatch]],
                    block_bytes: tuple[int, int]) -> Iterator[pa.RecordBatch]:
    """Batches of ``open_reader(block_size)``, starting over with 4x larger blocks when a row does not fit.

    pyarrow cannot parse a row longer than its block ("straddling object");
    blocks start small to keep memory low, and the rows already yielded are
    skipped after a restart. Past the largest size the error goes out.
    """
    block, largest = block_bytes
    done = 0
    while True:
        skip = done
        try:
            for batch in open_reader(block):
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                if skip:
                    batch, skip = batch.slice(skip), 0
                done += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid as exc:
            if not _is_straddling(exc) or block >= largest:
                raise
            block = min(block * 4, largest)


def _is_straddling(exc: BaseException) -> bool:
    return "straddl" in str(exc)
