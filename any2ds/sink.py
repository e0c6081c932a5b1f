"""Results in, shards out: a run's writing and committing, for results a caller holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pyarrow as pa

from any2ds.errors import ConfigError
from any2ds.metadata import MetadataLayout
from any2ds.output import SUMMARY_FILE, OutputFolder, check_output_url
from any2ds.pipeline import SamplePipeline
from any2ds.run import RunTotals, finish_output
from any2ds.sharding import check_columns
from any2ds.types import KeyFormat, SampleResult
from any2ds.worker import ShardWrite


class ShardSink:
    """Writes results (from :meth:`any2ds.Pipeline.process`, filtered or enriched on the way, or
    made by the caller) as a run does: shards of number_sample_per_shard results in the
    output_format, each committed with its ``<shard>_stats.json``; :meth:`close` commits the last
    one, finalizes the writer and writes ``_any2ds/run_summary.json``. Made by
    :meth:`any2ds.Pipeline.writer`; a context manager::

        with pipeline.writer("out") as sink:
            for result in pipeline.process(rows):
                if result.ok:
                    sink.write(result)

    Each result is stored under the key of its place in the output (img2dataset's
    ``shard_id * 10**k + index``), whatever key it came with, so results of several calls
    never collide. The output folder starts afresh with incremental_mode=overwrite, after
    its last shard with extend; the default, incremental, refuses a folder that has shards
    (a sink cannot tell which of its rows are done). Thread-safe: writes are serialized.
    If a write or the block raises, the open shard is dropped and the sink is closed with
    its committed shards kept (and the summary left in state "running").
    """

    def __init__(self, pipeline: SamplePipeline, output_folder: str, input_schema: pa.Schema | None = None) -> None:
        core = pipeline.config.core
        check_output_url(output_folder, core.storage())
        if input_schema is not None:
            check_columns("ShardSink input_schema", pipeline.saved_columns(), input_schema.names)
        self._pipeline = pipeline
        # What the summary records: the folder written, which the options may not name.
        self._config = attrs.evolve(pipeline.config, core=attrs.evolve(core, output_folder=output_folder))
        self._keys = KeyFormat(core.number_sample_per_shard, core.oom_shard_count)
        self._input_schema = input_schema
        self._layout: MetadataLayout | None = None
        self.output = OutputFolder(output_folder, core.oom_shard_count, core.storage())
        done, self._shard_id = self.output.prepare(core.incremental_mode)
        if done:
            raise ConfigError(f"output_folder {output_folder!r} has shards already; a ShardSink cannot resume "
                              "(incremental_mode=overwrite starts afresh, extend adds shards after them)")
        self._shard: ShardWrite | None = None
        self._in_shard = 0
        self._totals = RunTotals()
        self._start = time.time()
        self._lock = threading.Lock()
        self._closed = False
        self.summary: dict[str, Any] | None = None
        self.output.write_json(SUMMARY_FILE, {"state": "running", "start_time": self._start,
                                              "config": self._config.as_dict()})

    def write(self, result: SampleResult) -> None:
        """Add ``result`` to the open shard under its key in the output; commit the shard when full."""
        with self._lock:
            if self._closed:
                raise ValueError("this ShardSink is closed")
            try:
                if self._shard is None:
                    layout = self._layout_for(result.sample.columns)
                    self._shard = ShardWrite(self._pipeline, self.output.target(self._shard_id), layout)
                sample = attrs.evolve(result.sample, key=self._keys.key(self._shard_id, self._in_shard),
                                      shard_id=self._shard_id, index=self._in_shard)
                self._shard.write(attrs.evolve(result, sample=sample))
                self._in_shard += 1
                if self._in_shard == self._keys.number_sample_per_shard:
                    self._commit()
            except BaseException:
                self._drop()
                raise

    def close(self) -> dict[str, Any]:
        """Commit the open shard, finalize the writer (an index, a commit, as at the end of a run)
        and write the run summary; return it (also kept in :attr:`summary`)."""
        with self._lock:
            if self._closed:
                if self.summary is None:
                    raise ValueError("this ShardSink was closed by an error; its open shard was dropped")
                return self.summary
            try:
                if self._shard is not None:
                    self._commit()
            except BaseException:
                self._drop()
                raise
            self._closed = True
            self.summary = finish_output(self._pipeline, self._config, self.output, self._totals, self._start,
                                         skipped=0, failed={})
            return self.summary

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            with self._lock:
                self._drop()

    def _commit(self) -> None:
        self._totals.add(self._shard.commit(self._shard_id))
        self._shard, self._in_shard = None, 0
        self._shard_id += 1

    def _drop(self) -> None:
        """Drop the open shard's files; the sink takes no more results."""
        self._closed = True
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.abort()

    def _layout_for(self, first_columns: Mapping[str, Any]) -> MetadataLayout:
        if self._layout is None:
            saved = self._pipeline.saved_columns()
            schema = self._input_schema or _value_types(saved, first_columns)
            self._layout = self._pipeline.layout(schema)
        return self._layout


def _value_types(columns: Sequence[str], values: Mapping[str, Any]) -> pa.Schema:
    """The type of each column's value (string where it is None)."""
    return pa.schema([(name, pa.string() if values.get(name) is None else pa.scalar(values[name]).type)
                      for name in columns])
