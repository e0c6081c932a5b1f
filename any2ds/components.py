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
from typing import TYPE_CHECKING, Any, ClassVar

from any2ds.config import NoOptions, option  # noqa: F401  (option: until every plugin imports from any2ds)
from any2ds.inputs import find_input_files
from any2ds.storage import Storage
from any2ds.types import InputSource

if TYPE_CHECKING:
    import pyarrow as pa

    from any2ds.config import RunConfig
    from any2ds.mediatypes import MediaType
    from any2ds.metadata import MetadataLayout
    from any2ds.output import OutputFolder, ShardTarget
    from any2ds.progress import RunProgress, ShardProgress
    from any2ds.types import FetchResult, KeyFormat, Sample, SampleResult, Shard, ShardFailure, ShardStats


class Component:
    """What every named component has in common.

    ``storage`` builds filesystems with the run's ``storage_options`` (the core sets it when
    it builds the component): open any file through ``self.storage.url_to_fs(url)``, never
    ``fsspec`` directly, so that endpoints and credentials given for the run apply.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    storage: Storage = Storage()

    def __init__(self, options: Any) -> None:
        self.options = options

    def read_columns(self) -> Sequence[str]:
        """Input columns this component needs in ``Sample.columns``. Samples of one URL listed
        several times in a shard share one fetch, and their result too unless a verifier or
        processor reads per-row columns: a component whose output depends on the row says so here."""
        return ()

    def kept_columns(self) -> Sequence[str]:
        """Input columns this component wants copied into the output metadata."""
        return ()

    def metadata_fields(self) -> Sequence[pa.Field]:
        """Metadata columns this component fills in ``SampleResult.metadata``, placed after the
        core columns (key, status, error_message, error_type)."""
        return ()

    def leading_metadata_fields(self) -> Sequence[pa.Field]:
        """Metadata columns this component fills, placed among the input columns, before ``url``
        (img2dataset's place for a hash that was verified against an input column)."""
        return ()

    def check(self) -> None:
        """Fail at startup (raise ConfigError) if this component cannot run here,
        e.g. an optional dependency is missing. Called once in the main process."""

    def close(self) -> None:
        """Release what the instance holds (sessions, pools); called once per process."""


class Reader(Component):
    """Turns one input file into a stream of pyarrow RecordBatches of rows (URL lists).

    ``name`` is what ``input_format`` says (``csv``); a ``.gz`` suffix on
    input_format selects the same reader with gzip compression. The main
    process reads the rows and cuts them into shards; see
    :class:`SampleReader` for sources whose samples are read in the workers.
    """

    kind = "reader"
    # False for formats without column names (txt): only the URL is read, as img2dataset does.
    named_columns: ClassVar[bool] = True

    def input_files(self, url_list: str, input_format: str) -> list[InputSource]:
        """The input files ``url_list`` names, in order: the file itself, or the sorted
        ``*.<input_format>`` files of a folder. Raises ConfigError when there are none."""
        return find_input_files(url_list, input_format, self.storage)

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

    def count_rows(self, source: InputSource) -> int | None:
        """The file's number of rows if it can be had without reading them (a parquet footer),
        else None (the default): the progress total then grows as rows are read."""
        return None


class SampleReader(Reader):
    """A source whose samples are read where they are processed, in the workers (archives).

    The main process only plans: :meth:`plan` describes each output shard's
    work in a few bytes (an archive's path); the worker that runs the shard
    calls :meth:`samples`, which streams the samples, each with its bytes.
    """

    def plan(self, sources: Sequence[InputSource]) -> Iterator[tuple[int, Any]]:
        """Yield ``(shard_id, work)`` for every output shard, in increasing shard id.

        ``work`` is small and picklable; it comes back in ``Shard.work``. Shard
        ids must not depend on anything but the sources and options, so that
        a rerun (or another machine given other offsets) gives each shard the
        same id.
        """
        raise NotImplementedError

    def column_schema(self, sources: Sequence[InputSource], columns: Sequence[str]) -> pa.Schema:
        """The types of ``columns`` (the input columns the run needs) as samples will carry
        them; read cheaply (a peek at the first sample). A column the source does not
        have is typed ``string`` and left null."""
        raise NotImplementedError

    def captioned(self) -> bool:
        """Whether samples carry captions; the metadata then has a ``caption`` column."""
        return False

    def samples(self, shard: Shard, keys: KeyFormat, columns: Sequence[str]) -> Iterator[Sample]:
        """Stream the samples of ``shard`` (called in the worker, once per attempt of the shard).

        Every sample has ``data`` (or a ``url`` to fetch) and the ``columns``
        the run needs in ``Sample.columns``. Keys come from ``keys`` unless the
        source brings its own. Raise (any exception) when the source is broken
        (a truncated archive): the shard fails with that message, and nothing
        of it is committed.
        """
        raise NotImplementedError

    def read(self, source: InputSource, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        """Not used: a SampleReader's samples are read in the workers, by :meth:`samples`."""
        raise TypeError(f"reader {self.name!r} reads samples in the workers, not rows")

    def available_columns(self, source: InputSource) -> list[str] | None:
        """Not used: :meth:`column_schema` says what the samples carry."""
        raise TypeError(f"reader {self.name!r} reads samples in the workers, not rows")


class Fetcher(Component):
    """Gets the bytes behind a URL. Called from many threads at once."""

    kind = "fetcher"
    schemes: ClassVar[tuple[str, ...]] = ()

    def fetch(self, sample: Sample) -> FetchResult:
        """Return the body, or raise ``FetchError`` with a message for the metadata.

        Called on one of the worker's ``thread_count`` fetch threads; blocking is fine.
        """
        raise NotImplementedError

    async def fetch_async(self, sample: Sample) -> FetchResult:
        """The same as :meth:`fetch`, as a coroutine; implement one or the other.

        A fetcher implementing it runs on its worker process's event loop,
        ``thread_count`` fetches in flight at once on one thread, instead of a
        thread each. It must never block the loop (run blocking calls with
        ``loop.run_in_executor``) and keeps its own deadline, body cap and
        address checks, as a blocking fetcher does; the watchdog cancels a
        fetch that overruns ``sample_timeout``.
        """
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
    # The media types (MIME patterns: "image/*", "audio/flac", "*/*") this processor takes when a
    # run routes samples by type; none: it is only used in chains.
    media_types: ClassVar[tuple[str, ...]] = ()

    def accepts(self, media_type: MediaType) -> bool:
        """Whether a run routing by type gives this processor a sample of ``media_type`` (detected
        from the fetched bytes, then the Content-Type, then the URL's suffix). By default: whether
        it matches one of :attr:`media_types`."""
        return media_type.matches(self.media_types)

    def media_streams(self) -> Sequence[str]:
        """Names of the media streams this processor adds (``jpg``): parquet column names."""
        return ()

    def estimate_bytes(self) -> tuple[int, str] | None:
        """About how many bytes this processor stores per successful sample, and the assumption
        behind the figure (``any2ds plan`` shows both); None (the default) when the options
        alone cannot tell."""
        return None

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
        """A writer for one shard: its files go to ``target``'s temporary paths, which the core
        renames into place when the shard completes. ``layout`` builds each metadata row."""
        raise NotImplementedError

    def finalize(self, output: OutputFolder) -> None:
        """The run-level last step (an index over every shard, a commit), in the main process.

        Called once at the end of every run, after the last shard committed,
        also when a rerun found every shard already done, and also when some
        shards failed (the next run finalizes again). It must therefore be
        idempotent and work from what is committed in ``output`` (every done
        shard, this run's and earlier runs'), not from this run's memory.
        """

    def read_output(self, output: OutputFolder) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Read a finished output back: ``(metadata row, {extension: bytes})`` for every row of
        every done shard, failures included (with no files). Used by
        :func:`any2ds.testing.read_dataset` and the writer conformance check; a format that
        cannot be read back raises NotImplementedError."""
        raise NotImplementedError(f"writer {self.name!r} cannot read its output back")


# ``task(shard)`` or ``task(shard, report)``: see Distributor.run.
ShardFunction = Callable[..., "ShardStats"]


class Distributor(Component):
    """Runs shard tasks somewhere: local processes, Spark, Ray.

    ``dedicated_workers``: True when every worker is a process this distributor starts
    for the run and runs nothing else (``multiprocessing``). The core may then make
    process-wide choices there that a process shared with other work (a Spark executor,
    a Ray worker, the caller's own) must not get: today, pyarrow is told pandas is absent
    when no plugin imported it (see the plugin guide).
    """

    kind = "distributor"
    dedicated_workers = False

    def run(self, shards: Iterable[Shard], task: ShardFunction, config: RunConfig,
            progress: Callable[[ShardProgress], None] | None = None) -> Iterator[ShardStats | ShardFailure]:
        """Run ``task`` on every shard and yield one outcome per shard, in any order.

        ``task`` is picklable; it rebuilds the plugins from the config in the
        worker. A shard whose task raised, or whose worker died, is yielded as
        a ``ShardFailure``; the core retries it. Read ``shards`` lazily: it
        streams from the input.

        ``progress`` (main process, thread-safe) takes the workers' live
        counts: run ``task(shard, report)`` in the worker with a ``report``
        callable that carries each :class:`~any2ds.ShardProgress` it is given
        (a few numbers, about twice a second per running shard) to the main
        process, and call ``progress`` with it there. A distributor whose
        ``run`` has no ``progress`` parameter is called without it; progress
        then moves as shards finish.

        ``task(shard, report, cpu_share=...)``, for a distributor whose workers share one machine:
        ``cpu_share`` (a callable, in the worker) returns how many processing threads the shard may
        run now. It is asked when the shard starts and about four times a second while it runs;
        the shard's pool grows when the answer does. Give each busy worker its share of the cores,
        ``config.core.cpu_threads(busy_processes=...)``: when the last shards run, the workers
        left without one leave their cores to them (``multiprocessing`` does).
        """
        raise NotImplementedError

    def probe_workers(self, probe: Callable[[], Any], config: RunConfig) -> Any:
        """Run ``probe`` once where shards run, before any shard, and return what it returns.

        The core's probe (picklable, fast) checks that the workers can load the run's
        plugins at the versions the main process has. A distributor whose workers are
        processes started here, from this interpreter, returns None: nothing to check
        (the default). One running shards on an engine (Spark, Ray) runs ``probe`` as one
        small task there, and raises ConfigError, within a bounded time, when that task
        cannot run at all (a worker without any2ds cannot even load it): saying why and where.
        """
        return None


class Observer(Component):
    """Watches a run from the main process: progress, logging, experiment trackers."""

    kind = "observer"

    def run_started(self, config: RunConfig) -> None:
        """Called once before the first shard."""

    def progress(self, progress: RunProgress) -> None:
        """Called about every second while the run goes, and once more after its last shard,
        with the run's live counts, totals, rate and ETA (:class:`~any2ds.RunProgress`).

        Counts move as samples finish in the workers, not only as shards end
        (with a distributor that reports them). Called from a thread of its
        own, never at the same time as the other methods; keep it quick. An
        exception is printed and the run goes on.
        """

    def shard_completed(self, stats: ShardStats) -> None:
        """Called once per committed shard."""

    def shard_failed(self, failure: ShardFailure) -> None:
        """Called when a shard raised; it may be retried."""

    def run_completed(self, summary: Mapping[str, Any]) -> None:
        """Called once at the end with the run summary (also written to run_summary.json)."""


COMPONENT_KINDS: dict[str, type[Component]] = {
    cls.kind: cls for cls in (Reader, Fetcher, Verifier, Processor, Writer, Distributor, Observer)
}
