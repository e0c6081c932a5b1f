"""Built-in input readers: txt, csv, tsv, json, jsonl and parquet.

Every reader streams its file: memory stays bounded by a few blocks (or
one row group) plus one output batch, whatever the file's size. img2dataset
loaded each input file whole, with every column, which crashed large runs at
start-up (#338).

A file that is not what its format says raises :class:`ConfigError` with one
line naming the file and, where known, the line; no raw pyarrow traceback
gets out.

Every reader also has ``available_columns(source)``: the file's column names,
found cheaply (header, schema, first records), so that the core can report a
requested column that is missing together with the columns that exist.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from any2ds import ConfigError, InputSource, Reader, hookimpl

SNIFF_BYTES = 64 * 1024
"""Bytes looked at to tell text from binary before parsing a text format."""

CHUNK_BYTES = 1024 * 1024
"""Read size of the Python-read formats (txt, json, jsonl)."""

CSV_INFER_BYTES = 1024 * 1024
"""pyarrow infers CSV column types from its first block; img2dataset's block size."""

CSV_BLOCK_BYTES = (256 * 1024, 64 * 1024 * 1024)
"""pyarrow CSV block size when reading: first and largest. pyarrow reads up to
32 blocks ahead, so blocks stay small; a row must fit in one, and the reader
starts over with larger blocks when one does not."""

PARQUET_BUFFER_BYTES = 1024 * 1024
"""Read buffer of a parquet column chunk, so that pages stream from the file."""

SAMPLE_ROWS = 1000
"""JSON objects whose keys and values define a json/jsonl file's columns and types."""

# Errors that mean "the data is not what the format says" (as opposed to
# I/O failures, which keep their own type so the core can retry them).
_DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError,
                gzip.BadGzipFile, EOFError, zlib.error)
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def _fail(source: InputSource, message: str) -> ConfigError:
    return ConfigError(f"input file {source.path}: {message}")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: error messages stay one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(source: InputSource, exc: BaseException) -> ConfigError:
    """A ConfigError for a data error that no reader could pin down further."""
    if isinstance(exc, _GZIP_ERRORS):
        return _fail(source, f"not valid gzip data: {_one_line(exc)}")
    if isinstance(exc, UnicodeDecodeError):
        return _fail(source, f"not UTF-8 text: {_one_line(exc)}")
    return _fail(source, _one_line(exc))


def _check_text(source: InputSource, head: bytes, fmt: str) -> None:
    """Refuse a file whose first bytes show it is not text (gzip, parquet, binary)."""
    if head.startswith(b"\x1f\x8b"):
        hint = f"; use input_format {fmt}.gz" if source.compression is None else ""
        raise _fail(source, f"is gzip-compressed, not a plain {fmt} file{hint}")
    if head.startswith(b"PAR1"):
        raise _fail(source, f"is a parquet file, not a {fmt} file; use input_format parquet")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # At the very start it is a binary signature (JPEG, PNG, ...); later, the
        # per-line decoding names the line.
        if exc.start < 16:
            raise _fail(source, f"is binary data, not a {fmt} file (not UTF-8 at byte {exc.start})") from None
    # A stray NUL inside a caption is data; text with many is UTF-16 or binary.
    nuls = head.count(b"\x00")
    if nuls > len(head) // 100:
        raise _fail(source, f"is binary data, not a {fmt} file ({nuls} NUL bytes in its first {len(head)} bytes)")


@contextlib.contextmanager
def _open_text(source: InputSource, fmt: str) -> Iterator[BinaryIO]:
    """Open a text-format file after checking that it starts like text."""
    with source.open() as f:
        head = _read(source, f, SNIFF_BYTES)
        _check_text(source, head, fmt)
        f.seek(0)
        yield f


def _read(source: InputSource, f: BinaryIO, size: int) -> bytes:
    """``f.read(size)``, with broken gzip data reported as a ConfigError."""
    try:
        return f.read(size)
    except _GZIP_ERRORS as exc:
        raise _describe(source, exc) from exc


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
            while data := _read(source, f, CHUNK_BYTES):
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


def _line_chunks(source: InputSource, f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The file's complete lines, about CHUNK_BYTES at a time: (number of the chunk's first line, bytes).

    A UTF-8 byte-order mark at the start is dropped.
    """
    line = 1
    pending: list[bytes] = []  # the start of a line that continues in the next read
    first = True
    while data := _read(source, f, CHUNK_BYTES):
        if first:
            data = data.removeprefix(codecs.BOM_UTF8)
            first = False
        cut = data.rfind(b"\n") + 1
        if not cut:
            pending.append(data)
            continue
        chunk = b"".join([*pending, data[:cut]])
        pending = [data[cut:]]
        yield line, chunk
        line += chunk.count(b"\n")
    tail = b"".join(pending)
    if tail:
        yield line, tail


def _present(columns: Sequence[str], names: Iterable[str]) -> list[str]:
    """The requested columns the file has, in requested order, without duplicates."""
    available = set(names)
    return [name for name in dict.fromkeys(columns) if name in available]


def _guarded(batches: Iterator[pa.RecordBatch], on_error: Callable[[BaseException], ConfigError | None],
             errors: tuple[type[BaseException], ...] = _DATA_ERRORS) -> Iterator[pa.RecordBatch]:
    """Pass ``batches`` through, turning an error of ``errors`` into ``on_error``'s ConfigError.

    ``on_error`` returns None for an error that is not about the data; it is
    re-raised as it is.
    """
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except errors as exc:
                error = on_error(exc)
                if error is None:
                    raise
                raise error from exc
            yield batch
    finally:
        batches.close()


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


def _rebatch(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a stream of batches of any size into batches of ``batch_size`` rows (the last shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows < batch_size:
            continue
        merged = pending[0] if len(pending) == 1 else pa.concat_batches(pending)
        start = 0
        while rows - start >= batch_size:
            yield merged.slice(start, batch_size)
            start += batch_size
        pending = [merged.slice(start)] if start < rows else []
        rows -= start
    if pending:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _as_text_type(arrow_type: pa.DataType) -> pa.DataType:
    """Text and all-null columns become strings: a later value cannot break them."""
    if pa.types.is_null(arrow_type) or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pa.string()
    return arrow_type


# --------------------------------------------------------------------------
# txt
# --------------------------------------------------------------------------


class TxtReader(Reader):
    """One URL per line (``txt``); the single column is named ``columns[0]``.

    Lines are split on ``\\n`` only and lose trailing ``\\r``; nothing else
    is interpreted, so a URL may hold commas, quotes or tabs (img2dataset read
    txt as a one-column CSV and failed on a comma). Empty lines are skipped,
    as img2dataset's reader did, so sample keys match.
    """

    name = "txt"
    named_columns = False

    def available_columns(self, source: InputSource) -> None:
        """None: a txt file has no column names; its one column is named after ``columns[0]``."""
        return None

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        schema = pa.schema([(columns[0], pa.string())])
        batches = (pa.record_batch([lines], schema=schema) for lines in self._lines(source))
        yield from _rebatch(batches, batch_size)

    def _lines(self, source: InputSource) -> Iterator[pa.StringArray]:
        """The file's non-empty lines, one array per chunk read, split by Arrow kernels (no Python strings)."""
        with _open_text(source, self.name) as f:
            for line, chunk in _line_chunks(source, f):
                try:
                    text = pa.array([chunk], pa.binary()).cast(pa.string())  # checks UTF-8
                except pa.ArrowInvalid as exc:
                    raise self._utf8_error(source, line, chunk) from exc
                lines = pc.utf8_rtrim(pc.split_pattern(text, "\n").flatten(), "\r")
                yield lines.filter(pc.greater(pc.binary_length(lines), 0))

    @staticmethod
    def _utf8_error(source: InputSource, line: int, chunk: bytes) -> ConfigError:
        """Name the line of the chunk that is not UTF-8."""
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = line + chunk.count(b"\n", 0, exc.start)
            return _fail(source, f"not UTF-8 text at line {bad_line}: {_one_line(exc)}")
        return _fail(source, "not UTF-8 text")


# --------------------------------------------------------------------------
# csv, tsv
# --------------------------------------------------------------------------


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
        present = _present(columns, schema.names)
        if not present:
            return
        types = {name: pa.string() if name == columns[0] else _as_text_type(schema.field(name).type)
                 for name in present}
        convert = pacsv.ConvertOptions(include_columns=present, column_types=types)

        with _local_file(source) as (path, compression):

            def open_reader(block_size: int) -> Iterator[pa.RecordBatch]:
                with pa.input_stream(path, compression=compression) as stream:
                    yield from pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block_size),
                                              parse_options=self._parse_options(), convert_options=convert)

            batches = _growing_blocks(open_reader, CSV_BLOCK_BYTES)
            yield from _rebatch(_guarded(batches, lambda exc: self._error(source, exc, schema.names),
                                         (*_DATA_ERRORS, OSError)), batch_size)

    def _parse_options(self) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True)

    def _first_block_schema(self, source: InputSource) -> pa.Schema:
        """Column names and types as pyarrow infers them from the first block.

        Parsed from the head of the file held in memory: a reader on the file
        itself would read 32 blocks ahead just to return the schema.
        """
        block, largest = CSV_INFER_BYTES, CSV_BLOCK_BYTES[1]
        while True:
            with _open_text(source, self.name) as f:
                # pyarrow completes the first block's cut-off last row from the
                # second block; one byte more and that row is never taken for
                # the end of the file.
                head = _read(source, f, 2 * block + 1)
            if not head:
                raise _fail(source, f"empty file; {self.name} input needs a header line")
            try:
                read_options = pacsv.ReadOptions(block_size=block, use_threads=False)
                return pacsv.open_csv(pa.BufferReader(head), read_options=read_options,
                                      parse_options=self._parse_options()).schema
            except _DATA_ERRORS as exc:
                if _is_straddling(exc) and block < largest:
                    block = min(block * 4, largest)
                    continue
                raise self._error(source, exc, None) from exc

    def _error(self, source: InputSource, exc: BaseException, names: Sequence[str] | None) -> ConfigError | None:
        """Name the column of a conversion error, or the line of a malformed row; None for an I/O failure."""
        message = _one_line(exc)
        if isinstance(exc, OSError) and not isinstance(exc, _DATA_ERRORS):
            # pyarrow reports bad compressed data as a plain OSError.
            if type(exc) is OSError and source.compression:
                return _fail(source, f"not valid {source.compression} data: {message}")
            return None
        conversion = re.match(r"In CSV column #(\d+): (.*)", message)
        if conversion and names is not None and int(conversion[1]) < len(names):
            column = names[int(conversion[1])]
            return _fail(source, f"column {column!r}: {conversion[2]} (its type was inferred from the first rows)")
        if _is_straddling(exc):
            return _fail(source, f"a row is longer than {CSV_BLOCK_BYTES[1] >> 20} MiB")
        if "columns, got" in message:
            where = self._find_bad_row(source)
            if where:
                return _fail(source, where)
        return _describe(source, exc)

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
        except (csv.Error, UnicodeDecodeError, *_GZIP_ERRORS):
            return None
        return None


class TsvReader(CsvReader):
    """Tab-separated values with a header line (``tsv``); otherwise exactly like ``csv``."""

    name = "tsv"
    delimiter = "\t"


# --------------------------------------------------------------------------
# json, jsonl
# --------------------------------------------------------------------------


def _keys(records: Iterable[dict]) -> list[str]:
    """Every key of ``records``, in order of first appearance."""
    return list(dict.fromkeys(key for record in records for key in record))


def _infer_schema(source: InputSource, sample: Sequence[tuple[int | None, dict]], present: Sequence[str],
                  url: str, where: Callable[[int, int | None], str]) -> pa.Schema:
    """Arrow types of the ``present`` columns, from the sample's (line, record) pairs.

    A missing key is null. The URL column is a string; text and all-null
    columns are strings; other columns keep the type pyarrow infers from the
    values (int64, double, struct, list...). A column whose sample values do
    not fit one type raises ConfigError at the first value that breaks it,
    located by ``where(row index, line)``.
    """
    fields = []
    for name in present:
        if name == url:
            fields.append(pa.field(name, pa.string()))
            continue
        values = [record.get(name) for _, record in sample]
        try:
            arrow_type = pa.array(values).type
        except _CONVERSION_ERRORS as exc:
            # Find the shortest failing prefix: its last value is the culprit.
            good, bad = 0, len(values)
            while bad - good > 1:
                middle = (good + bad) // 2
                try:
                    pa.array(values[:middle])
                    good = middle
                except _CONVERSION_ERRORS:
                    bad = middle
            culprit = bad - 1
            earlier = pa.array(values[:culprit]).type
            raise _fail(source, f"{where(culprit, sample[culprit][0])}: column {name!r} holds "
                                f"{_short(values[culprit])}, which does not fit the type {earlier} "
                                "of the rows before it") from exc
        fields.append(pa.field(name, _as_text_type(arrow_type)))
    return pa.schema(fields)


def _jsonl_where(index: int, line: int | None) -> str:
    return f"line {line}"


def _json_where(index: int, line: int | None) -> str:
    return f"element {index}" + (f" (line {line})" if line else "")


def _misfit(schema: pa.Schema, record: dict) -> str | None:
    """Why ``record`` does not fit ``schema``, or None if it does."""
    for field in schema:
        value = record.get(field.name)
        try:
            pa.array([value], type=field.type)
        except _CONVERSION_ERRORS:
            return (f"column {field.name!r} holds {_short(value)}, which does not fit its type {field.type} "
                    "(inferred from the first rows)")
    return None


def _jsonl_records(source: InputSource, chunks: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of ``chunks`` (from _line_chunks).

    Raises ConfigError on a line that is not a JSON object.
    """
    for first, chunk in chunks:
        for line, raw in enumerate(chunk.split(b"\n"), first):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _fail(source, f"invalid JSON at line {line}: {exc.msg} (column {exc.colno})") from exc
            except UnicodeDecodeError as exc:
                raise _fail(source, f"not UTF-8 text at line {line}: {_one_line(exc)}") from exc
            if not isinstance(record, dict):
                raise _fail(source, f"line {line} is not a JSON object")
            yield line, record


class JsonlReader(Reader):
    """One JSON object per line (``jsonl``).

    The columns are the keys of the first 1000 objects (SAMPLE_ROWS); a key
    missing from an object is null, and keys that appear only later are not
    read. Column types come from those objects' values (see _infer_schema).
    The file is cut into chunks of whole lines and pyarrow parses each chunk
    in memory (its streaming reader peaks at ~35 times its block size, and
    can abort the process at exit when fed a Python file, apache/arrow#34314).
    A line that is not a JSON object, or a value that does not fit its
    column's type, raises ConfigError naming the line. Blank lines are skipped.
    """

    name = "jsonl"

    def available_columns(self, source: InputSource) -> list[str]:
        """Keys of the first SAMPLE_ROWS objects."""
        return _keys(record for _, record in self._sample(source))

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        sample = self._sample(source)
        present = _present(columns, _keys(record for _, record in sample))
        if not present:
            return
        schema = _infer_schema(source, sample, present, columns[0], _jsonl_where)
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

        def batches() -> Iterator[pa.RecordBatch]:
            with source.open() as f:
                for line, chunk in _line_chunks(source, f):
                    # One block per chunk: a chunk holds whole lines, however long.
                    read_options = pajson.ReadOptions(block_size=len(chunk), use_threads=False)
                    try:
                        table = pajson.read_json(pa.BufferReader(chunk), read_options=read_options,
                                                 parse_options=parse)
                    except _DATA_ERRORS as exc:
                        raise self._error(source, schema, line, chunk, exc) from exc
                    yield from table.to_batches()

        yield from _rebatch(batches(), batch_size)

    def _sample(self, source: InputSource) -> list[tuple[int, dict]]:
        with _open_text(source, self.name) as f:
            return list(islice(_jsonl_records(source, _line_chunks(source, f)), SAMPLE_ROWS))

    def _error(self, source: InputSource, schema: pa.Schema, line: int, chunk: bytes,
               exc: BaseException) -> ConfigError:
        """Find the line of the chunk pyarrow refused (its message does not say which)."""
        for number, record in _jsonl_records(source, [(line, chunk)]):
            misfit = _misfit(schema, record)
            if misfit:
                return _fail(source, f"{_jsonl_where(0, number)}: {misfit}")
        return _describe(source, exc)


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _JsonText:
    """The decoded text of a JSON file, read chunk by chunk, tracking line numbers for messages."""

    def __init__(self, source: InputSource, f: BinaryIO):
        self.source = source
        self.f = f
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0  # parse position in buf
        self.line = 1  # line number at buf[line_pos]
        self.line_pos = 0
        self.eof = False

    def more(self) -> bool:
        """Append the next chunk to the buffer, dropping what was parsed; False at end of file.

        A chunk is at least as long as the unparsed text, so that a value far
        longer than CHUNK_BYTES costs a few re-parses, not one per chunk.
        """
        if self.eof:
            return False
        data = _read(self.source, self.f, max(CHUNK_BYTES, len(self.buf) - self.pos))
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            line = self.line_of(len(self.buf)) + data.count(b"\n", 0, exc.start)
            raise _fail(self.source, f"not UTF-8 text at line {line}: {_one_line(exc)}") from exc
        self.line_of(self.pos)
        self.buf = self.buf[self.pos:] + text
        self.pos = self.line_pos = 0
        self.eof = not data
        return True

    def line_of(self, pos: int) -> int:
        """Line number of ``buf[pos]``; positions must be asked in increasing order."""
        self.line += self.buf.count("\n", self.line_pos, pos)
        self.line_pos = pos
        return self.line

    def peek(self) -> str:
        """Skip whitespace; the next character, or "" at end of file."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self) -> tuple[Any, int]:
        """Decode the JSON value at the parse position; (value, its line number)."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Ran into the end of the buffer: read on and retry. Any other
                # error is the file's.
                truncated = exc.msg.startswith("Unterminated string") or len(self.buf) - exc.pos <= 16
                if truncated and self.more():
                    continue
                raise self.error(exc.pos, exc.msg) from exc
            line = self.line_of(self.pos)
            self.pos = end
            return value, line

    def rest(self) -> str:
        """Everything not parsed yet, read whole."""
        parts = []
        while True:
            parts.append(self.buf[self.pos:])
            self.pos = len(self.buf)
            if not self.more():
                return "".join(parts)

    def error(self, pos: int, message: str) -> ConfigError:
        return _fail(self.source, f"invalid JSON at line {self.line_of(pos)}: {message}")


class JsonReader(Reader):
    """A JSON document (``json``) in the forms pandas.read_json reads (img2dataset used pandas).

    The usual form, an array of objects (``[{"url": ...}, ...]``), streams:
    objects are decoded one at a time with ``json.JSONDecoder.raw_decode``
    over 1 MiB chunks. pandas' default "columns" orientation (``{"url": {"0":
    ..., "1": ...}, ...}``, or lists as the values) cannot be streamed and is
    loaded whole. Columns and types follow the first 1000 rows, as for jsonl;
    a missing key is null; a later value that does not fit raises ConfigError
    naming its element.
    """

    name = "json"

    def available_columns(self, source: InputSource) -> list[str]:
        """Keys of the first SAMPLE_ROWS rows."""
        with contextlib.closing(self._records(source)) as records:
            return _keys(record for _, record in islice(records, SAMPLE_ROWS))

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        with contextlib.closing(self._records(source)) as records:
            sample = list(islice(records, SAMPLE_ROWS))
            present = _present(columns, _keys(record for _, record in sample))
            if not present:
                return
            schema = _infer_schema(source, sample, present, columns[0], _json_where)
            rows = chain(sample, records)
            index = 0
            while chunk := list(islice(rows, batch_size)):
                yield self._batch(source, schema, chunk, index)
                index += len(chunk)

    def _batch(self, source: InputSource, schema: pa.Schema, chunk: list[tuple[int | None, dict]],
               index: int) -> pa.RecordBatch:
        """One batch of rows; ``index`` is the first row's element number, for messages."""
        try:
            arrays = [pa.array([record.get(field.name) for _, record in chunk], type=field.type)
                      for field in schema]
        except _CONVERSION_ERRORS as exc:
            for offset, (line, record) in enumerate(chunk):
                misfit = _misfit(schema, record)
                if misfit:
                    raise _fail(source, f"{_json_where(index + offset, line)}: {misfit}") from exc
            raise _fail(source, _one_line(exc)) from exc
        return pa.record_batch(arrays, schema=schema)

    def _records(self, source: InputSource) -> Iterator[tuple[int | None, dict]]:
        """(line number or None, row) for each row of the file."""
        with _open_text(source, self.name) as f:
            text = _JsonText(source, f)
            first = text.peek()
            if first == "[":
                text.pos += 1
                yield from self._array(source, text)
            elif first == "{":
                yield from self._columns_orientation(source, text)
            elif first == "":
                raise _fail(source, "empty file, not JSON")
            else:
                raise text.error(text.pos, "expected an array of objects ('[') or an object of columns ('{')")

    def _array(self, source: InputSource, text: _JsonText) -> Iterator[tuple[int, dict]]:
        """The objects of an array whose '[' was just consumed."""
        index = 0
        while True:
            char = text.peek()
            if char == "]":
                text.pos += 1
                break
            if char == "":
                raise text.error(text.pos, "the file ends inside the array")
            if index:
                if char != ",":
                    raise text.error(text.pos, "expected ',' or ']' after an element")
                text.pos += 1
                text.peek()
            record, line = text.value()
            if not isinstance(record, dict):
                raise _fail(source, f"element {index} (line {line}) is not a JSON object")
            yield line, record
            index += 1
        if text.peek() != "":
            raise text.error(text.pos, "extra data after the array")

    def _columns_orientation(self, source: InputSource, text: _JsonText) -> Iterator[tuple[None, dict]]:
        """Rows of a ``{column: {index: value}}`` or ``{column: [values]}`` document, loaded whole."""
        base_line = text.line_of(text.pos)
        try:
            document = json.loads(text.rest())
        except json.JSONDecodeError as exc:
            raise _fail(source, f"invalid JSON at line {base_line + exc.lineno - 1}: {exc.msg}") from exc
        if not all(isinstance(values, (dict, list)) for values in document.values()):
            raise _fail(source, "a JSON object must map each column to an {index: value} object or a list "
                                "(pandas 'columns' orientation)")
        index: dict[Any, None] = {}
        for values in document.values():
            index.update(dict.fromkeys(values) if isinstance(values, dict) else dict.fromkeys(range(len(values))))
        for position, key in enumerate(index):
            row = {}
            for name, values in document.items():
                if isinstance(values, dict):
                    row[name] = values.get(key)
                else:
                    row[name] = values[position] if position < len(values) else None
            yield None, row


# --------------------------------------------------------------------------
# parquet
# --------------------------------------------------------------------------


class ParquetReader(Reader):
    """Apache Parquet (``parquet``): only the requested columns, one row group at a time."""

    name = "parquet"

    def available_columns(self, source: InputSource) -> list[str]:
        """The schema's top-level column names, from the footer."""
        with source.open() as f:
            return self._file(source, f).schema_arrow.names

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        def batches() -> Iterator[pa.RecordBatch]:
            with source.open() as f:
                parquet = self._file(source, f)
                present = _present(columns, parquet.schema_arrow.names)
                if not present:
                    return
                for batch in parquet.iter_batches(batch_size=batch_size, columns=present):
                    yield batch.select(present)

        yield from _rebatch(_guarded(batches(), lambda exc: self._error(source, exc, "corrupt parquet data"),
                                     (*_DATA_ERRORS, OSError)), batch_size)

    def _file(self, source: InputSource, f: BinaryIO) -> pq.ParquetFile:
        try:
            # No pre-buffering: it would read every requested column chunk of
            # the file, i.e. the whole file, before the first batch.
            return pq.ParquetFile(f, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
        except (*_DATA_ERRORS, OSError) as exc:
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
        if isinstance(exc, _GZIP_ERRORS):
            return _describe(source, exc)
        if isinstance(exc, _DATA_ERRORS) or type(exc) is OSError:
            return _fail(source, f"{what}: {_one_line(exc)}")
        return None


READERS: tuple[type[Reader], ...] = (TxtReader, CsvReader, TsvReader, JsonReader, JsonlReader, ParquetReader)


@hookimpl
def any2ds_register_readers(register: Callable[[type[Reader]], None]) -> None:
    """Register the built-in readers."""
    for reader in READERS:
        register(reader)
