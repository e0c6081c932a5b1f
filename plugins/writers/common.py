"""What the built-in writers share: the per-sample sidecars and the metadata parquet."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from any2ds.components import ShardWriter
from any2ds.metadata import MetadataParquetWriter, to_json

if TYPE_CHECKING:
    from any2ds.metadata import MetadataLayout
    from any2ds.output import ShardTarget
    from any2ds.types import SampleResult


def caption_text(record: dict[str, Any]) -> str:
    """The ``txt`` sidecar of a record: its caption as text, ``""`` when it has none."""
    caption = record.get("caption")
    return "" if caption is None else str(caption)


def sample_members(result: SampleResult, record: dict[str, Any], layout: MetadataLayout) -> dict[str, bytes]:
    """The files of one successful sample by extension: ``json`` metadata, ``txt`` caption
    (when the layout has captions) and one entry per media stream.

    A medium is stored under its own extension (which may differ from the stream
    name). An extension already taken, by a sidecar (a ``txt`` download next to a
    caption) or by an earlier stream, becomes ``<stream>.<extension>`` instead, a
    webdataset multi-part extension, so nothing is silently overwritten.
    """
    members = {"json": to_json(record).encode("utf-8")}
    if layout.has_caption:
        members["txt"] = caption_text(record).encode("utf-8")
    for stream, media in result.media.items():
        extension = media.extension
        if extension in members:
            extension = f"{stream}.{media.extension}"
        members[extension] = media.data
    return members


class MetadataShardWriter(ShardWriter):
    """A shard writer that records every row in ``<shard>.parquet`` and hands the
    successful samples to :meth:`write_sample`, which stores them in the format's
    own container (folder, tar, tfrecord).
    """

    def __init__(self, target: ShardTarget, layout: MetadataLayout) -> None:
        self.target = target
        self.layout = layout
        self._metadata = MetadataParquetWriter(target, layout)

    def write(self, result: SampleResult) -> None:
        record = self.layout.record(result)
        self._metadata.add(record)
        if result.ok:
            self.write_sample(result, record)

    def write_sample(self, result: SampleResult, record: dict[str, Any]) -> None:
        """Store one successful sample; ``record`` is its metadata row."""
        raise NotImplementedError

    def close_container(self) -> None:
        """Finish the format's own files."""

    def close(self) -> None:
        self.close_container()
        self._metadata.close()

    def abort(self) -> None:
        """Release open files without writing the metadata parquet.

        Best effort: the shard has already failed and the core deletes its
        temporary folder next, so an error while closing changes nothing.
        """
        with contextlib.suppress(Exception):
            self.close_container()
