"""``input_format: json`` and ``jsonl``: JSON documents and JSON lines, streamed."""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.json as pajson

from any2ds import ConfigError, InputSource, Reader
from any2ds_plugins.readers.common import (
    CHUNK_BYTES, DATA_ERRORS, as_text_type, data_error, input_error, line_chunks, one_line, open_text,
    present_columns, read_input, rebatch, short_repr,
)

SAMPLE_ROWS = 1000
"""JSON objects whose keys and values define a json/jsonl file's columns and types."""

_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)


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
            raise input_error(source, f"{where(culprit, sample[culprit][0])}: column {name!r} holds "
                                f"{short_repr(values[culprit])}, which does not fit the type {earlier} "
                                "of the rows before it") from exc
        fields.append(pa.field(name, as_text_type(arrow_type)))
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
            return (f"column {field.name!r} holds {short_repr(value)}, which does not fit its type {field.type} "
                    "(inferred from the first rows)")
    return None


def _jsonl_records(source: InputSource, chunks: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of ``chunks`` (from line_chunks).

    Raises ConfigError on a line that is not a JSON object.
    """
    for first, chunk in chunks:
        for line, raw in enumerate(chunk.split(b"\n"), first):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise input_error(source, f"invalid JSON at line {line}: {exc.msg} (column {exc.colno})") from exc
            except UnicodeDecodeError as exc:
                raise input_error(source, f"not UTF-8 text at line {line}: {one_line(exc)}") from exc
            if not isinstance(record, dict):
                raise input_error(source, f"line {line} is not a JSON object")
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
        present = present_columns(columns, _keys(record for _, record in sample))
        if not present:
            return
        schema = _infer_schema(source, sample, present, columns[0], _jsonl_where)
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

        def batches() -> Iterator[pa.RecordBatch]:
            with source.open() as f:
                for line, chunk in line_chunks(source, f):
                    # One block per chunk: a chunk holds whole lines, however long.
                    read_options = pajson.ReadOptions(block_size=len(chunk), use_threads=False)
                    try:
                        table = pajson.read_json(pa.BufferReader(chunk), read_options=read_options,
                                                 parse_options=parse)
                    except DATA_ERRORS as exc:
                        raise self._error(source, schema, line, chunk, exc) from exc
                    yield from table.to_batches()

        yield from rebatch(batches(), batch_size)

    def _sample(self, source: InputSource) -> list[tuple[int, dict]]:
        with open_text(source, self.name) as f:
            return list(islice(_jsonl_records(source, line_chunks(source, f)), SAMPLE_ROWS))

    def _error(self, source: InputSource, schema: pa.Schema, line: int, chunk: bytes,
               exc: BaseException) -> ConfigError:
        """Find the line of the chunk pyarrow refused (its message does not say which)."""
        for number, record in _jsonl_records(source, [(line, chunk)]):
            misfit = _misfit(schema, record)
            if misfit:
                return input_error(source, f"{_jsonl_where(0, number)}: {misfit}")
        return data_error(source, exc)


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
        data = read_input(self.source, self.f, max(CHUNK_BYTES, len(self.buf) - self.pos))
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            line = self.line_of(len(self.buf)) + data.count(b"\n", 0, exc.start)
            raise input_error(self.source, f"not UTF-8 text at line {line}: {one_line(exc)}") from exc
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
        return input_error(self.source, f"invalid JSON at line {self.line_of(pos)}: {message}")


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
            present = present_columns(columns, _keys(record for _, record in sample))
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
                    raise input_error(source, f"{_json_where(index + offset, line)}: {misfit}") from exc
            raise input_error(source, one_line(exc)) from exc
        return pa.record_batch(arrays, schema=schema)

    def _records(self, source: InputSource) -> Iterator[tuple[int | None, dict]]:
        """(line number or None, row) for each row of the file."""
        with open_text(source, self.name) as f:
            text = _JsonText(source, f)
            first = text.peek()
            if first == "[":
                text.pos += 1
                yield from self._array(source, text)
            elif first == "{":
                yield from self._columns_orientation(source, text)
            elif first == "":
                raise input_error(source, "empty file, not JSON")
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
                raise input_error(source, f"element {index} (line {line}) is not a JSON object")
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
            raise input_error(source, f"invalid JSON at line {base_line + exc.lineno - 1}: {exc.msg}") from exc
        if not all(isinstance(values, (dict, list)) for values in document.values()):
            raise input_error(source, "a JSON object must map each column to an {index: value} object or a list "
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
