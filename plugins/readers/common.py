"""What the built-in row readers share: reading and checking text, batching, error messages.

Every reader streams its file: memory stays bounded by a few blocks (or
one row group) plus one output batch, whatever the file's size.

A file that is not what its format says raises :class:`ConfigError` with one
line naming the file and, where known, the line; no raw pyarrow traceback
gets out.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import pyarrow as pa

from any2ds import ConfigError, InputSource

SNIFF_BYTES = 64 * 1024
"""Bytes looked at to tell text from binary before parsing a text format."""

CHUNK_BYTES = 1024 * 1024
"""Read size of the Python-read formats (txt, json, jsonl)."""

# Errors that mean "the data is not what the format says" (as opposed to
# I/O failures, which keep their own type so the core can retry them).
DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError,
               gzip.BadGzipFile, EOFError, zlib.error)
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def input_error(source: InputSource, message: str) -> ConfigError:
    """The ConfigError for a bad input file: its path, then ``message``."""
    return ConfigError(f"input file {source.path}: {message}")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: error messages stay one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def data_error(source: InputSource, exc: BaseException) -> ConfigError:
    """A ConfigError for a data error that no reader could pin down further."""
    if isinstance(exc, GZIP_ERRORS):
        return input_error(source, f"not valid gzip data: {one_line(exc)}")
    if isinstance(exc, UnicodeDecodeError):
        return input_error(source, f"not UTF-8 text: {one_line(exc)}")
    return input_error(source, one_line(exc))


def _check_text(source: InputSource, head: bytes, fmt: str) -> None:
    """Refuse a file whose first bytes show it is not text (gzip, parquet, binary)."""
    if head.startswith(b"\x1f\x8b"):
        hint = f"; use input_format {fmt}.gz" if source.compression is None else ""
        raise input_error(source, f"is gzip-compressed, not a plain {fmt} file{hint}")
    if head.startswith(b"PAR1"):
        raise input_error(source, f"is a parquet file, not a {fmt} file; use input_format parquet")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # At the very start it is a binary signature (JPEG, PNG, ...); later, the
        # per-line decoding names the line.
        if exc.start < 16:
            raise input_error(source, f"is binary data, not a {fmt} file (not UTF-8 at byte {exc.start})") from None
    # A stray NUL inside a caption is data; text with many is UTF-16 or binary.
    nuls = head.count(b"\x00")
    if nuls > len(head) // 100:
        raise input_error(source, f"is binary data, not a {fmt} file ({nuls} NUL bytes in its first {len(head)} bytes)")


@contextlib.contextmanager
def open_text(source: InputSource, fmt: str) -> Iterator[BinaryIO]:
    """Open a text-format file after checking that it starts like text."""
    with source.open() as f:
        head = read_input(source, f, SNIFF_BYTES)
        _check_text(source, head, fmt)
        f.seek(0)
        yield f


def read_input(source: InputSource, f: BinaryIO, size: int) -> bytes:
    """``f.read(size)``, with broken gzip data reported as a ConfigError."""
    try:
        return f.read(size)
    except GZIP_ERRORS as exc:
        raise data_error(source, exc) from exc


def line_chunks(source: InputSource, f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The file's complete lines, about CHUNK_BYTES at a time: (number of the chunk's first line, bytes).

    A UTF-8 byte-order mark at the start is dropped.
    """
    line = 1
    pending: list[bytes] = []  # the start of a line that continues in the next read
    first = True
    while data := read_input(source, f, CHUNK_BYTES):
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


def present_columns(columns: Sequence[str], names: Iterable[str]) -> list[str]:
    """The requested columns the file has, in requested order, without duplicates."""
    available = set(names)
    return [name for name in dict.fromkeys(columns) if name in available]


def guarded(batches: Iterator[pa.RecordBatch], on_error: Callable[[BaseException], ConfigError | None],
             errors: tuple[type[BaseException], ...] = DATA_ERRORS) -> Iterator[pa.RecordBatch]:
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


def rebatch(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
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


def as_text_type(arrow_type: pa.DataType) -> pa.DataType:
    """Text and all-null columns become strings: a later value cannot break them. So do binary
    ones: pyarrow infers binary for text that is not UTF-8, which the conversion then refuses."""
    if (pa.types.is_null(arrow_type) or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type)):
        return pa.string()
    return arrow_type


def not_utf8(source: InputSource, first_line: int, chunk: bytes, exc: UnicodeDecodeError) -> ConfigError:
    """The error for a chunk of ``line_chunks`` (its first line ``first_line``) that is not UTF-8, naming the line."""
    line = first_line + chunk.count(b"\n", 0, exc.start)
    return input_error(source, f"not UTF-8 text at line {line}: {one_line(exc)}")
