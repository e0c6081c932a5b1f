"""Base classes for the things a config names: readers, fetchers, processors,
verifiers, writers, distributors and observers.

A plugin subclasses one of these, gives it a ``name`` and (optionally) an
attrs ``Options`` class, and registers the class through the matching
``any2ds_register_*`` hook. The core builds one instance per run (in every
worker process) as ``cls(options)``; instances must therefore be cheap to
build and must not be pickled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import attrs

if TYPE_CHECKING:
    import fsspec
    import pyarrow as pa

    from any2ds.config import RunConfig
    from any2ds.metadata import MetadataLayout
    from any2ds.output import ShardTarget
    from any2ds.types import FetchResult, Sample, SampleResult, Shard, ShardFailure, ShardStats


@attrs.frozen
class NoOptions:
    """Options of a component that has none."""


def option(default: Any, help: str, validator: Any = None, *, flat: str | None = None, **kwargs: Any) -> Any:
    """An attrs field that becomes a CLI flag and YAML key; ``help`` is shown in --help.

    ``flat`` is the flat flag name of a built-in plugin's option (``audio_sample_rate``),
    when it is not the field's own name.
    """
    metadata = {"help": help} if flat is None else {"help": help, "flat": flat}
    return attrs.field(default=default, validator=validator, metadata=metadata, **kwargs)


class Component:
    """What every named component has in common."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any) -> None:
        self.options = options

    def read_columns(self) -> Sequence[str]:
        """Input columns this component needs in ``Sample.columns``."""
        return ()

    def kept_columns(self) -> Sequence[str]:
        """Input columns this component wants copied into the output metadata."""
        return ()

    def metadata_fields(self) -> Sequence[pa.Field]:
        """Metadata columns this component fills in ``SampleResult.metadata``."""
        return ()

    def check(self) -> None:
        """Fail at startup (raise ConfigError) if this component cannot run here,
        e.g. an optional dependency is missing. Called once in the main process."""

    def close(self) -> None:
        """Release what the instance holds (sessions, pools); called once per process."""


@attrs.frozen
class InputSource:
    """One input file: where it is and how it is compressed."""

    path: str
    fs: fsspec.AbstractFileSystem
    compression: str | None = None

    def open(self) -> BinaryIO:
        """The file's bytes, decompressed."""
        return self.fs.open(self.path, "rb", compression=self.compression)


class Reader(Component):
    """Turns one input file into a stream of pyarrow RecordBatches.

    ``name`` is what ``input_format`` says (``csv``); a ``.gz`` suffix on
    input_format selects the same reader with gzip compression.
    """

    kind = "reader"

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        """Yield batches of at most about ``batch_size`` rows holding ``columns``.

        ``columns[0]`` is the URL column. A reader that has no column names
        (txt) names its single column ``columns[0]``. Memory must not grow
        with the file's size. A column missing from the file is left out of
        the batches; the core reports it.
        """
        raise NotImplementedError

    def available_columns(self, source: InputSource) -> list[str] | None:
        """The file's column names, read cheaply (header, schema, first records).

        None for formats without column names (txt): their one column is the
        URL column, and other requested columns are null.
        """
        raise NotImplementedError


class Fetcher(Component):
    """Gets the bytes behind a URL. Called from many threads at once."""

    kind = "fetcher"
    schemes: ClassVar[tuple[str, ...]] = ()

    def fetch(self, sample: Sample) -> FetchResult:
        """Return the body, or raise ``FetchError`` with a message for the metadata."""
        raise NotImplementedError


class Verifier(Component):
    """Checks the raw bytes before processing and may add metadata (hashes)."""

    kind = "verifier"

    def verify(self, sample: Sample, fetched: FetchResult) -> Mapping[str, Any]:
        """Return metadata fields to add, or raise ``VerifyError``."""
        raise NotImplementedError


class Processor(Component):
    """Turns the fetched bytes into stored media (resize, resample, ...). Thread-safe."""

    kind = "processor"
    # The status of a sample this processor fails without a ProcessError of its own.
    failure_status: ClassVar[str] = "failed_to_process"

    def media_streams(self) -> Sequence[str]:
        """Names of the media streams this processor adds (``jpg``): parquet column names."""
        return ()

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        """Fill ``result.media`` and ``result.metadata``; raise ``ProcessError`` to fail the sample.

        Processors run in the configured order; a later one sees what earlier
        ones put in ``result``.
        """
        raise NotImplementedError


class ShardWriter:
    """Writes one shard's samples under temporary names; the core commits them."""

    def write(self, result: SampleResult) -> None:
        """Store one sample; called for every input row, failures included."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish every file; after this the core renames them into place."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop what was written; the shard failed."""
        self.close()


class Writer(Component):
    """Packages samples into an output format (``output_format`` names it)."""

    kind = "writer"

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> ShardWriter:
        raise NotImplementedError


ShardFunction = Callable[["Shard"], "ShardStats"]


class Distributor(Component):
    """Runs shard tasks somewhere: local processes, Spark, Ray."""

    kind = "distributor"

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig) -> Iterator[ShardStats | ShardFailure]:
        """Run ``task`` on every shard and yield one outcome per shard, in any order.

        ``task`` is picklable; it rebuilds the plugins from the config in the
        worker. A shard whose task raised, or whose worker died, is yielded as
        a ``ShardFailure``; the core retries it. Read ``shards`` lazily: it
        streams from the input.
        """
        raise NotImplementedError


class Observer(Component):
    """Watches a run from the main process: progress, logging, experiment trackers."""

    kind = "observer"

    def run_started(self, config: RunConfig) -> None:
        """Called once before the first shard."""

    def shard_completed(self, stats: ShardStats) -> None:
        """Called once per committed shard."""

    def shard_failed(self, failure: ShardFailure) -> None:
        """Called when a shard raised; it may be retried."""

    def run_completed(self, summary: Mapping[str, Any]) -> None:
        """Called once at the end with the run summary (also written to run_summary.json)."""


COMPONENT_KINDS: dict[str, type[Component]] = {
    cls.kind: cls for cls in (Reader, Fetcher, Verifier, Processor, Writer, Distributor, Observer)
}
