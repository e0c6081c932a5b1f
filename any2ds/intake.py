"""A shard's samples, as its worker reads them: from the rows the main process cut, or
streamed by the run's SampleReader, each with a key that is safe as a file name."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from any2ds.components import Reader
from any2ds.errors import SampleError
from any2ds.types import KeyFormat, Sample, Shard

# A key names files (<key>.jpg) and tar members in every format: no dot (webdataset cuts a member
# name at its first dot), no folder (the files writer stores a shard's files in one folder).
_SAFE_KEY = re.compile(r"[A-Za-z0-9_\-]+")
MAX_KEY_LENGTH = 200


def is_safe_key(key: str) -> bool:
    """Whether ``key`` can name a sample's files and tar members in every output format."""
    return len(key) <= MAX_KEY_LENGTH and _SAFE_KEY.fullmatch(key) is not None


@attrs.frozen
class RowIntake:
    """Turns an input row into a sample: the URL and caption from their columns (``caption_col`` is
    None when the run saves no caption), ``columns`` into ``Sample.columns``, the key from ``keys``."""

    keys: KeyFormat
    url_col: str
    caption_col: str | None
    columns: Sequence[str]

    def sample(self, row: Mapping[str, Any], shard_id: int, index: int) -> Sample:
        """Row ``index`` of shard ``shard_id``; a column missing from ``row`` is None."""
        caption = row.get(self.caption_col) if self.caption_col else None
        columns = {name: row.get(name) for name in self.columns if name not in (self.url_col, self.caption_col)}
        url, error = _url_of(row.get(self.url_col))
        if isinstance(caption, bytes):  # a parquet binary column
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError:
                caption, error = None, error or SampleError("caption is not UTF-8 text", error_type="invalid_caption")
        return Sample(key=self.keys.key(shard_id, index), shard_id=shard_id, index=index, url=url,
                      caption=None if caption is None else str(caption), columns=columns, error=error)


def _url_of(value: Any) -> tuple[str | None, SampleError | None]:
    """A row's URL as text, and the error failing the row if it is not text: bytes (a parquet
    binary column) are decoded as UTF-8; any other value is kept, as text, for the record."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return value.decode("utf-8", "backslashreplace"), SampleError("URL is not UTF-8 text",
                                                                          error_type="invalid_url")
    return str(value), SampleError(f"URL is {type(value).__name__}, not text", error_type="invalid_url")


@attrs.frozen
class ShardIntake:
    """Turns a shard into samples: ``rows`` through ``row_intake``, ``work`` through ``reader.samples``."""

    reader: Reader
    rows: RowIntake

    def samples(self, shard: Shard) -> Iterator[Sample]:
        source = self._from_rows(shard) if shard.rows is not None else self.reader.samples(shard, self.rows.keys,
                                                                                              self.rows.columns)
        for sample in source:
            yield sample if is_safe_key(sample.key) else self._unsafe(sample)

    def repeated_urls(self, shard: Shard) -> dict[str, int]:
        """The URLs ``shard``'s rows list more than once, with their counts (MS-COCO lists each
        image once per caption), read as samples read them (a binary column's as UTF-8 text)."""
        url_col = self.rows.url_col
        if shard.rows is None or url_col not in shard.rows.column_names:
            return {}
        urls = (_url_of(value) for value in shard.rows.column(url_col).to_pylist())
        counts = Counter(url.strip() for url, error in urls if url is not None and error is None)
        return {url: count for url, count in counts.items() if count > 1}

    def _from_rows(self, shard: Shard) -> Iterator[Sample]:
        for index, row in enumerate(shard.rows.to_pylist()):
            yield self.rows.sample(row, shard.shard_id, index)

    def _unsafe(self, sample: Sample) -> Sample:
        """The sample under its generated key, failed: its own key cannot name files."""
        error = SampleError(f"unsafe sample key (keys are letters, digits, _ and -; at most {MAX_KEY_LENGTH} "
                            "characters)", error_type="unsafe_key")
        return attrs.evolve(sample, key=self.rows.keys.key(sample.shard_id, sample.index), data=None, error=error)
