"""The small typed values that cross plugin and process boundaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

if TYPE_CHECKING:
    import fsspec
    import pyarrow as pa

    from any2ds.errors import SampleError


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
class KeyFormat:
    """How sample keys are made: img2dataset's ``shard_id * 10**k + index``, zero-padded."""

    number_sample_per_shard: int
    oom_shard_count: int

    def key(self, shard_id: int, index: int) -> str:
        """The key of row ``index`` of shard ``shard_id``."""
        return make_key(shard_id, index, self.number_sample_per_shard, self.oom_shard_count)


@attrs.frozen
class InputSource:
    """One input file: where it is and how it is compressed."""

    path: str
    fs: fsspec.AbstractFileSystem
    compression: str | None = None

    def open(self) -> BinaryIO:
        """The file's bytes, decompressed."""
        return self.fs.open(self.path, "rb", compression=self.compression)


@attrs.frozen
class Sample:
    """One sample, as every fetcher, verifier and processor sees it.

    A sample carries either a ``url`` to fetch or its bytes in ``data`` (a
    member of an input archive); with ``data``, nothing is fetched and
    ``url``, if any, is only recorded. ``filename`` is the name the bytes had
    at their source (``00001.jpg``), used to guess their type.

    ``columns`` holds every input column read for this run under its input
    name (extra saved columns, the bbox or hash column, ...), url and caption
    excluded.

    ``error`` is a reader's verdict that the source holds this sample but
    cannot supply it (an archive entry without its media member): the sample
    is recorded as failed with that error, and nothing is fetched.
    """

    key: str
    shard_id: int
    index: int
    url: str | None = None
    caption: str | None = None
    columns: Mapping[str, Any] = attrs.field(factory=dict)
    data: bytes | None = attrs.field(default=None, repr=False)
    filename: str | None = None
    error: SampleError | None = None


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
        """Whether the sample succeeded (status ``success``)."""
        return self.status == "success"


@attrs.frozen
class Shard:
    """A unit of work, small enough to send to any worker.

    Either ``rows``, the input rows read by the main process (URL lists), or
    ``work``: a small picklable description (an archive's path) that the
    worker hands back to the run's :class:`SampleReader`, which streams the
    samples there. ``schema`` gives the types of the input columns samples
    carry (``rows.schema`` for rows).
    """

    shard_id: int
    rows: pa.Table | None = attrs.field(default=None, repr=False)
    work: Any = None
    schema: pa.Schema | None = attrs.field(default=None, repr=False)

    @property
    def column_schema(self) -> pa.Schema:
        """The types of the input columns the shard's samples carry."""
        if self.rows is not None:
            return self.rows.schema
        if self.schema is None:
            raise ValueError(f"shard {self.shard_id} has neither rows nor a schema")
        return self.schema


@attrs.frozen
class ShardStats:
    """A finished shard's counts, as written to ``<shard>_stats.json``.

    ``status_dict`` counts failure messages (img2dataset's name for it; see
    :func:`any2ds.errors.status_key`), ``statuses`` counts statuses and
    ``error_types`` error classes; ``failed_hosts`` counts the failures of the
    hosts failing most, by error type (``{"example.com": {"http_4xx": 3}}``).
    ``reported_statuses`` are the statuses the run's components can give
    (``failed_to_download``, each processor's ``failure_status``): they are
    written right after ``successes``, zero or not, as img2dataset writes its
    ``failed_to_download`` and ``failed_to_resize``.
    """

    shard_id: int
    count: int
    successes: int
    status_dict: Mapping[str, int]
    error_types: Mapping[str, int]
    statuses: Mapping[str, int]
    start_time: float
    end_time: float
    reported_statuses: tuple[str, ...] = ()
    failed_hosts: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)

    @property
    def duration(self) -> float:
        """Seconds the shard took."""
        return self.end_time - self.start_time

    def to_json(self) -> dict[str, Any]:
        """img2dataset's keys first, then any2ds's additions."""
        data: dict[str, Any] = {"count": self.count, "successes": self.successes}
        data.update((status, self.statuses.get(status, 0)) for status in self.reported_statuses)
        data.update(duration=self.duration, start_time=self.start_time, end_time=self.end_time,
                    status_dict=dict(self.status_dict))
        for status, n in sorted(self.statuses.items()):
            if status != "success":
                data.setdefault(status, n)
        data["error_types"] = dict(self.error_types)
        data["failed_hosts"] = {host: dict(types) for host, types in self.failed_hosts.items()}
        return data


@attrs.frozen
class ShardFailure:
    """A shard that raised instead of finishing; it is retried later in the run."""

    shard_id: int
    error: str
