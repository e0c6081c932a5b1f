"""``input_format: txt``: one URL per line."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from any2ds import ConfigError, InputSource, Reader
from any2ds_plugins.readers.common import input_error, line_chunks, one_line, open_text, rebatch


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
        yield from rebatch(batches, batch_size)

    def _lines(self, source: InputSource) -> Iterator[pa.StringArray]:
        """The file's non-empty lines, one array per chunk read, split by Arrow kernels (no Python strings)."""
        with open_text(source, self.name) as f:
            for line, chunk in line_chunks(source, f):
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
            return input_error(source, f"not UTF-8 text at line {bad_line}: {one_line(exc)}")
        return input_error(source, "not UTF-8 text")
