"""``output_format: dummy``: stores nothing; only the core's ``<shard>_stats.json`` appears.

Useful to measure download and processing speed without the cost of writing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from any2ds.components import ShardWriter, Writer

if TYPE_CHECKING:
    from any2ds.metadata import MetadataLayout
    from any2ds.output import ShardTarget
    from any2ds.types import SampleResult


class DummyWriter(Writer):
    """img2dataset's ``dummy`` output format."""

    name = "dummy"

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> DummyShardWriter:
        return DummyShardWriter()


class DummyShardWriter(ShardWriter):
    """Discards every sample."""

    def write(self, result: SampleResult) -> None:
        pass

    def close(self) -> None:
        pass
