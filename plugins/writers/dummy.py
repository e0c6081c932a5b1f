"""``output_format: dummy``: stores nothing; only the core's ``<shard>_stats.json`` appears.

Useful to measure download and processing speed without the cost of writing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from any2ds import MetadataLayout, OutputFolder, SampleResult, ShardTarget, ShardWriter, Writer


class DummyWriter(Writer):
    """img2dataset's ``dummy`` output format."""

    name = "dummy"

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> DummyShardWriter:
        return DummyShardWriter()

    def read_output(self, output: OutputFolder) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Nothing: the format stores no row."""
        return iter(())


class DummyShardWriter(ShardWriter):
    """Discards every sample."""

    def write(self, result: SampleResult) -> None:
        pass

    def close(self) -> None:
        pass
