"""any2ds inside a bigger pipeline: rows in, results out (:class:`Pipeline`).

A Pipeline runs the worker's machinery (:class:`~any2ds.worker.SampleStages`:
fetch stage, processing stage, byte budget, watchdog) on rows its caller
holds, in the caller's process. The stages are per process and per config:
every Pipeline of the same options in a process shares them (a Pipeline
unpickled in an engine's worker finds them there, built once), counted so
that the last one closed closes them. A forked child starts without them:
the parent's threads do not exist there, nor may the parent's connections be
shared, so the child builds its own on first use.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from any2ds.config import RunConfig
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost
from any2ds.metadata import MetadataLayout
from any2ds.pipeline import SamplePipeline
from any2ds.sharding import check_columns
from any2ds.sink import ShardSink
from any2ds.types import SampleResult
from any2ds.worker import SampleStages

# download()'s options that mean nothing to a pipeline: it is given its rows, runs in its caller's
# process and reports to its caller.
RUN_ONLY_OPTIONS = ("url_list", "input_format", "distributor", "processes_count", "observers", "max_shard_retry")
# Rows of Arrow input turned into Python values at a time.
ROWS_PER_SLICE = 1024

Batch = pa.RecordBatch | pa.Table


class _ProcessStages:
    """This process's SampleStages, by config, with the number of Pipelines using each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, list[Any]] = {}  # config id -> [SampleStages, users]

    def acquire(self, config_id: str, build: Callable[[], SampleStages]) -> SampleStages:
        entry = self.entries.get(config_id)
        if entry is None:
            entry = self.entries[config_id] = [build(), 0]
        entry[1] += 1
        return entry[0]

    def release(self, config_id: str) -> None:
        entry = self.entries[config_id]
        entry[1] -= 1
        if entry[1] == 0:
            del self.entries[config_id]
            entry[0].close()


_STAGES = _ProcessStages()


def _forget_parent_stages() -> None:
    global _STAGES
    _STAGES = _ProcessStages()  # the lock too: a parent's thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_parent_stages)


class Pipeline:
    """Fetches and processes rows its caller holds, as a run's workers do, and gives back each
    row's result: for dataframes, Ray, Spark, Hugging Face ``datasets`` and plain loops.

    Built once from :func:`download`'s options (plugins, processors, fetchers, verifiers and
    their options, validated the same way: a bad one is a :class:`ConfigError` here), then
    used for any number of calls. ``url_list``, ``input_format``, ``distributor``,
    ``processes_count``, ``observers`` and ``max_shard_retry`` are download()'s alone::

        with any2ds.Pipeline(image_size=256, caption_col="caption") as pipeline:
            for result in pipeline.process([{"url": "https://example.com/cat.jpg", "caption": "a cat"}]):
                print(result.status, result.metadata.get("width"))

    Sharing: a Pipeline may be used by several threads at once (their calls share the fetch
    and processing threads; each call has its own byte budget), pickled (the copy holds the
    options only and builds its plugins in the process that uses it, once per process) and
    forked (the child builds its own plugins and threads on first use). See docs/library.md.
    """

    def __init__(self, **options: Any) -> None:
        given = sorted(set(options) & set(RUN_ONLY_OPTIONS))
        if given:
            raise ConfigError(f"Pipeline: {', '.join(given)}: download() options only (a pipeline is given its "
                              "rows by process() and runs in its caller's process; processing_threads sets its "
                              "threads)")
        # Imported here: jsonargparse (20 ms, 3.7 MB) stays out of the workers, which import this module.
        from any2ds.options import OptionSchema, read_keyword_plugins

        plugins, options = read_keyword_plugins(options)
        host = PluginHost.load(local_plugins=plugins)
        config = OptionSchema(host).parse_kwargs(options, needs_url_list=False)
        built = SamplePipeline.build(host, config, read_input=False)
        try:
            for component in built.components:
                component.check()
        except BaseException:
            built.close()
            raise
        self._setup(config, config.digest())
        self._stages(built)

    def _setup(self, config: RunConfig, config_id: str) -> None:
        self.config = config
        self._config_id = config_id  # pickled along: a config pickled again may give other bytes
        self._pid: int | None = None  # the process whose stages self._running are
        self._running: SampleStages | None = None
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "config_id": self._config_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["config"], state["config_id"])

    def _stages(self, built: SamplePipeline | None = None) -> SampleStages:
        """This process's stages for the config, shared; built on first use here (from ``built``,
        the plugins the constructor checked, when it is the first)."""
        stages = _STAGES
        with stages.lock:
            if self._closed:
                raise ValueError("this Pipeline is closed")
            if self._pid != os.getpid():
                self._running = stages.acquire(self._config_id, lambda: SampleStages(built) if built is not None
                                               else SampleStages.load(self.config, read_input=False))
                self._pid = os.getpid()
                if built is not None and self._running.pipeline is not built:
                    built.close()  # another Pipeline of the same options runs here already
            return self._running

    # -- rows in, results out ----------------------------------------------

    def process(self, rows: Iterable[Mapping[str, Any]] | Batch, *, in_order: bool = True) -> Iterator[SampleResult]:
        """Fetch and process ``rows`` (dicts of column values, or a pyarrow RecordBatch or Table);
        yield one :class:`SampleResult` per row, in input order (``in_order=False``: as each
        completes, which never waits for a slow row). ``rows`` is read as the work goes, never
        all at once.

        A result holds what a shard would: ``status``, ``error_message``, ``error_type``,
        ``metadata`` (the processors' and verifiers' fields, not yet cut to
        max_metadata_field_bytes) and ``media`` (bytes by stream); ``result.sample`` has the
        row's url, caption and saved columns, and the key the row would have in a download of
        these rows (its position, in img2dataset's key format).
        """
        stages = self._stages()
        if isinstance(rows, (pa.RecordBatch, pa.Table)):
            rows = self._arrow_rows(stages.pipeline, rows)
        return self._results(stages, iter(rows), in_order)

    def process_batch(self, batch: Batch) -> Batch:
        """Arrow in, Arrow out: ``batch``'s rows processed, as a RecordBatch (a Table for a Table)
        of the metadata columns a shard's parquet holds, then one binary column per media stream
        (:meth:`output_schema`), one row per input row, in order."""
        (out,) = self.process_batches([batch])
        return pa.Table.from_batches([out]) if isinstance(batch, pa.Table) else out

    def process_batches(self, batches: Iterable[Batch]) -> Iterator[pa.RecordBatch]:
        """A stream of batches processed as one stream (no wait at the end of each batch, as there
        is between :meth:`process_batch` calls): one RecordBatch out per batch in, in order, as
        soon as its last row is done. Spark's ``mapInArrow`` takes this method as it is."""
        return self._batches(self._stages(), iter(batches))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The schema of what :meth:`process_batch` returns for input of ``input_schema``."""
        return self._layout(self._stages().pipeline, input_schema).table_schema()

    def writer(self, output_folder: str | None = None, *, input_schema: pa.Schema | None = None) -> ShardSink:
        """A :class:`ShardSink` writing results to ``output_folder`` (default: the output_folder
        option) as a run does, with the output_format, number_sample_per_shard and
        incremental_mode options. ``input_schema`` types the saved columns (default: the types
        of the first result's values)."""
        return ShardSink(self._stages().pipeline, output_folder or self.config.core.output_folder, input_schema)

    def close(self) -> None:
        """Release this Pipeline's share of the process's plugins and threads (closed with the last
        Pipeline of the same options); calls after this raise ValueError."""
        stages = _STAGES
        with stages.lock:
            if self._closed:
                return
            self._closed = True
            if self._pid == os.getpid():
                stages.release(self._config_id)
            self._running = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _results(self, stages: SampleStages, rows: Iterator[Mapping[str, Any]],
                 in_order: bool) -> Iterator[SampleResult]:
        intake = stages.pipeline.row_intake()
        per_shard = intake.keys.number_sample_per_shard

        def samples():
            for position, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise TypeError(f"Pipeline.process: a row is a mapping of column names to values, "
                                    f"not {type(row).__name__}")
                yield intake.sample(row, *divmod(position, per_shard))

        return stages.flow(ordered=in_order).results(samples())

    def _batches(self, stages: SampleStages, batches: Iterator[Batch]) -> Iterator[pa.RecordBatch]:
        first = next(batches, None)
        if first is None:
            return
        layout = self._layout(stages.pipeline, first.schema)
        schema = layout.table_schema()
        sizes: deque[int] = deque()  # rows of each batch read, not yet given out

        def rows() -> Iterator[Mapping[str, Any]]:
            for batch in itertools.chain([first], batches):
                rows_of_batch = self._arrow_rows(stages.pipeline, batch)
                sizes.append(batch.num_rows)
                yield from rows_of_batch

        done: list[SampleResult] = []
        for result in self._results(stages, rows(), in_order=True):
            done.append(result)
            while sizes and len(done) >= sizes[0]:
                yield _record_batch(layout, schema, done[:sizes[0]])
                del done[:sizes.popleft()]
        for size in sizes:  # empty batches after the last row
            yield _record_batch(layout, schema, done[:size])

    def _arrow_rows(self, pipeline: SamplePipeline, batch: Batch) -> Iterator[Mapping[str, Any]]:
        columns = pipeline.input_columns()
        check_columns("Pipeline input", columns, batch.schema.names)
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        return (row for piece in table.select(columns).to_batches(ROWS_PER_SLICE) for row in piece.to_pylist())

    def _layout(self, pipeline: SamplePipeline, input_schema: pa.Schema) -> MetadataLayout:
        check_columns("Pipeline input", pipeline.input_columns(), input_schema.names)
        return pipeline.layout(input_schema)


def _record_batch(layout: MetadataLayout, schema: pa.Schema, results: list[SampleResult]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([layout.table_row(result) for result in results], schema=schema)
