"""A shard's samples, as its worker reads them: from the rows the main process cut, or
streamed by the run's SampleReader, each with a key that is safe as a file name."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

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
class ShardIntake:
    """Turns a shard into samples: ``rows`` through the URL and caption columns, ``work``
    through ``reader.samples``. ``caption_col`` is None when the run saves no caption."""

    reader: Reader
    keys: KeyFormat
    url_col: str
    caption_col: str | None
    columns: Sequence[str]

    def samples(self, shard: Shard) -> Iterator[Sample]:
        source = self._from_rows(shard) if shard.rows is not None else self.reader.samples(shard, self.keys,
                                                                                              self.columns)
        for sample in source:
            yield sample if is_safe_key(sample.key) else self._unsafe(sample)

    def _from_rows(self, shard: Shard) -> Iterator[Sample]:
        for index, row in enumerate(shard.rows.to_pylist()):
            url = row.pop(self.url_col)
            caption = row.pop(self.caption_col) if self.caption_col else None
            yield Sample(key=self.keys.key(shard.shard_id, index), shard_id=shard.shard_id, index=index, url=url,
                         caption=None if caption is None else str(caption), columns=row)

    def _unsafe(self, sample: Sample) -> Sample:
        """The sample under its generated key, failed: its own key cannot name files."""
        error = SampleError(f"unsafe sample key (keys are letters, digits, _ and -; at most {MAX_KEY_LENGTH} "
                            "characters)", error_type="UnsafeKey")
        return attrs.evolve(sample, key=self.keys.key(sample.shard_id, sample.index), data=None, error=error)
