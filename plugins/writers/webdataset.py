"""``output_format: webdataset``: one tar per shard, read by the ``webdataset`` library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webdataset import TarWriter

from any2ds.components import Writer
from any2ds_plugins.writers.common import MetadataShardWriter, sample_members

if TYPE_CHECKING:
    from any2ds.metadata import MetadataLayout
    from any2ds.output import ShardTarget
    from any2ds.types import SampleResult

# img2dataset's tar members are read-only and owned by "bigdata".
MEMBER_MODE = 0o444


class WebDatasetWriter(Writer):
    """img2dataset's ``webdataset`` layout: ``<shard>.tar`` with ``<key>.<ext>``,
    ``<key>.txt`` and ``<key>.json`` per success, in write order, plus ``<shard>.parquet``."""

    name = "webdataset"

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> WebDatasetShardWriter:
        return WebDatasetShardWriter(target, layout)


class WebDatasetShardWriter(MetadataShardWriter):
    """Streams samples into a tar on the output filesystem (fsspec, so S3 works too)."""

    def __init__(self, target: ShardTarget, layout: MetadataLayout) -> None:
        super().__init__(target, layout)
        self._file = target.fs.open(target.path(".tar"), "wb")
        # encoder=False: every member is already bytes.
        self._tar = TarWriter(self._file, encoder=False, mode=MEMBER_MODE)

    def write_sample(self, result: SampleResult, record: dict[str, Any]) -> None:
        self._tar.write({"__key__": result.sample.key, **sample_members(result, record, self.layout)})

    def close_container(self) -> None:
        try:
            self._tar.close()  # does not close a file object it was given
        finally:
            self._file.close()
