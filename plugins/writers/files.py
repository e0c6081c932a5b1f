"""``output_format: files``: one folder per shard with a file per sample stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from any2ds.components import Writer
from any2ds_plugins.writers.common import MetadataShardWriter, sample_members

if TYPE_CHECKING:
    from any2ds.metadata import MetadataLayout
    from any2ds.output import ShardTarget
    from any2ds.types import SampleResult

# Files are written in batches: on an object store fsspec uploads a batch
# concurrently instead of paying one request's latency per file.
BATCH_FILES = 256
BATCH_BYTES = 64 * 1024 * 1024


class FilesWriter(Writer):
    """img2dataset's ``files`` layout: ``<shard>/<key>.<ext>``, ``<key>.txt`` (when
    captioned) and ``<key>.json`` for each success, plus ``<shard>.parquet``."""

    name = "files"

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> FilesShardWriter:
        return FilesShardWriter(target, layout)


class FilesShardWriter(MetadataShardWriter):
    """Writes each successful sample's files into the shard's temporary folder."""

    def __init__(self, target: ShardTarget, layout: MetadataLayout) -> None:
        super().__init__(target, layout)
        self._folder = target.path("")
        target.fs.makedirs(self._folder, exist_ok=True)
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0

    def write_sample(self, result: SampleResult, record: dict[str, Any]) -> None:
        key = result.sample.key
        for extension, data in sample_members(result, record, self.layout).items():
            self._pending[f"{self._folder}/{key}.{extension}"] = data
            self._pending_bytes += len(data)
        if len(self._pending) >= BATCH_FILES or self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.target.fs.pipe(self._pending)
        self._pending = {}
        self._pending_bytes = 0

    def close_container(self) -> None:
        self._flush()

    def abort(self) -> None:
        self._pending = {}
        super().abort()
