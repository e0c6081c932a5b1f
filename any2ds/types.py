"""The small typed values that cross plugin and process boundaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs


def key_digits(number_sample_per_shard: int) -> int:
    """Digits given to the row index inside a key (img2dataset's rule)."""
    return math.ceil(math.log10(number_sample_per_shard)) if number_sample_per_shard > 1 else 0


def make_key(shard_id: int, index: int, number_sample_per_shard: int, oom_shard_count: int) -> str:
    """``shard_id * 10**k + index`` zero-padded to ``k + oom_shard_count`` digits."""
    k = key_digits(number_sample_per_shard)
    return str(shard_id * 10**k + index).zfill(k + oom_shard_count)


def shard_name(shard_id: int, oom_shard_count: int) -> str:
    """The shard's file stem: its id zero-padded to ``oom_shard_count``, never truncated."""
    return str(shard_id).zfill(oom_shard_count)


@attrs.frozen
class Sample:
    """One input row, as every fetcher, verifier and processor sees it.

    ``columns`` holds every input column read for this run under its input
    name (extra saved columns, the bbox or hash column, ...), url and caption
    excluded.
    """

    key: str
    shard_id: int
    index: int
    url: str | None
    caption: str | None = None
    columns: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class FetchResult:
    """What a fetcher got for a sample: the body and where it finally came from."""

    body: bytes
    url: str
    content_type: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    attempts: int = 1


@attrs.frozen
class Media:
    """One stored stream of a sample: bytes plus the file extension to store them under."""

    data: bytes
    extension: str


@attrs.define
class SampleResult:
    """A sample after the pipeline: what writers store, success or failure.

    ``media`` maps a stream name (a parquet column name, e.g. ``jpg``) to its
    bytes; it is empty for failed samples. ``metadata`` holds the fields the
    run's components declared (width, height, sha256, ...); missing ones are
    written as null.
    """

    sample: Sample
    status: str = "success"
    error_message: str | None = None
    error_type: str | None = None
    media: dict[str, Media] = attrs.field(factory=dict)
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"


@attrs.frozen
class Shard:
    """A unit of work: ``rows`` (a pyarrow Table of the input columns) and its id.

    ``input_file`` names where the rows came from, for messages.
    """

    shard_id: int
    rows: Any  # pyarrow.Table; typed loosely so this module stays import-light
    input_file: str = ""

    def __len__(self) -> int:
        return self.rows.num_rows


@attrs.frozen
class ShardStats:
    """A finished shard's counts, as written to ``<shard>_stats.json``."""

    shard_id: int
    count: int
    successes: int
    status_dict: Mapping[str, int]
    error_types: Mapping[str, int]
    statuses: Mapping[str, int]
    start_time: float
    end_time: float

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time

    def to_json(self) -> dict[str, Any]:
        """img2dataset's keys first, then any2ds's additions."""
        data: dict[str, Any] = {
            "count": self.count,
            "successes": self.successes,
            "failed_to_download": self.statuses.get("failed_to_download", 0),
            "failed_to_resize": self.statuses.get("failed_to_resize", 0),
            "duration": self.duration,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "status_dict": dict(self.status_dict),
        }
        for status, n in sorted(self.statuses.items()):
            data.setdefault(status, n)
        data["error_types"] = dict(self.error_types)
        return data


@attrs.frozen
class ShardFailure:
    """A shard that raised instead of finishing; it is retried later in the run."""

    shard_id: int
    error: str
