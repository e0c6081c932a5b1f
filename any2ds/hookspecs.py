"""The any2ds plugin contract: every hook a plugin can implement.

Hooks are grouped by pipeline phase. Each ``any2ds_register_*`` hook hands the
plugin a ``register`` callable; the plugin calls it once per class it
provides. Classes are registered under their ``name`` attribute; the config
then selects them by that name (``input_format: csv``, ``output_format:
webdataset``, ``processors: [image]``, ...). Two plugins registering the same
name in the same registry is a startup error naming both.

Registration hooks are called whenever plugins are loaded: in the main
process at startup, and again in every worker process (which rebuilds
plugins from names and the validated config; nothing live is pickled). The
``inprocess`` distributor loads them a second time in the main process, so a
hook must only call ``register``, with no other side effect.

Implement a hook with :data:`any2ds.hookimpl`::

    from any2ds import hookimpl, Processor

    class Thumbnail(Processor):
        name = "thumbnail"
        ...

    @hookimpl
    def any2ds_register_processors(register):
        register(Thumbnail)

A hook implementation returns None; whatever it returns is ignored.

The contract is versioned: :data:`HOOKSPEC_VERSION` changes its minor number
when hooks or arguments are added and its major number when one is removed or
changed incompatibly. A plugin states the versions it works with in a
module-level ``ANY2DS_HOOKSPEC = ">=1,<2"`` (a PEP 440 specifier), checked
when it is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from any2ds.components import Distributor, Fetcher, Observer, Processor, Reader, Verifier, Writer

PROJECT_NAME = "any2ds"
HOOKSPEC_VERSION = "1.3"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------
# read: turning input files into samples
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_readers(register: Callable[[type[Reader]], None]) -> None:
    """Register input readers: classes deriving from :class:`any2ds.Reader` (rows of URLs, read
    in the main process and cut into shards) or :class:`any2ds.SampleReader` (sources whose
    samples, bytes included, are streamed in the workers: archives).

    Called at startup, in the main process and in every worker, before the
    config is validated, so that ``input_format`` can name the reader and its
    options become flags.

    :param register: call ``register(ReaderClass)`` once per reader. The
        reader's ``name`` is the ``input_format`` value that selects it
        (``parquet``); ``input_format: <name>.gz`` selects the same reader with
        gzip decompression.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    .. versionchanged:: 1.1 SampleReader.
    .. versionchanged:: 1.2 Reader.count_rows.
    """


# --------------------------------------------------------------------------
# fetch: getting the bytes behind a URL
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_fetchers(register: Callable[[type[Fetcher]], None]) -> None:
    """Register fetchers: classes deriving from :class:`any2ds.Fetcher`.

    Called at startup, in the main process and in every worker. The
    ``fetchers`` option lists the fetchers a run enables (default ``[fast_http]``);
    each sample goes to the enabled fetcher whose ``schemes`` contain the
    URL's scheme, and a URL no enabled fetcher claims becomes a failed sample.
    A fetcher implements ``fetch`` (run on a thread) or ``fetch_async`` (run on
    the worker's event loop, many fetches in flight on one thread).

    :param register: call ``register(FetcherClass)`` once per fetcher.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    .. versionchanged:: 1.1 Fetcher.fetch_async.
    """


# --------------------------------------------------------------------------
# verify: checking the raw bytes before any processing
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_verifiers(register: Callable[[type[Verifier]], None]) -> None:
    """Register verifiers: classes deriving from :class:`any2ds.Verifier`.

    Called at startup, in the main process and in every worker. The
    ``verifiers`` option lists the enabled ones (default ``[hash]``, which
    owns ``compute_hash`` and ``verify_hash``). Verifiers see the raw fetched
    bytes of every sample before processors run, may add metadata fields and
    may reject the sample.

    :param register: call ``register(VerifierClass)`` once per verifier.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------
# process: turning fetched bytes into stored media
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_processors(register: Callable[[type[Processor]], None]) -> None:
    """Register media processors: classes deriving from :class:`any2ds.Processor`.

    Called at startup, in the main process and in every worker. The
    ``processors`` option lists the processors of a run (default ``[image]``:
    img2dataset's decode, filter, blur, resize and encode). With ``routing:
    chain`` each sample goes through all of them, in order; with ``routing:
    by_type`` through the first whose ``accepts()`` takes its detected media
    type (``Processor.media_types``). Processors run on the worker's
    processing threads, so they must be thread-safe.

    :param register: call ``register(ProcessorClass)`` once per processor.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    .. versionchanged:: 1.1 routing by type: Processor.media_types and accepts().
    .. versionchanged:: 1.2 Processor.estimate_bytes; error types from the core's vocabulary or namespaced.
    """


# --------------------------------------------------------------------------
# write: packaging samples into shards
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_writers(register: Callable[[type[Writer]], None]) -> None:
    """Register output writers: classes deriving from :class:`any2ds.Writer`.

    Called at startup, in the main process and in every worker.
    ``output_format`` names the writer. A writer opens one
    :class:`any2ds.ShardWriter` per shard, writing under temporary paths that
    the core renames into place when the shard is complete, and may finish
    the run in ``finalize`` (an index, a commit) in the main process. A format
    storing each sample as files derives from :class:`any2ds.SampleFilesWriter`.

    :param register: call ``register(WriterClass)`` once per writer.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    .. versionchanged:: 1.1 Writer.finalize, Writer.read_output, SampleFilesWriter.
    """


# --------------------------------------------------------------------------
# distribute: running shards on processes or clusters
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_distributors(register: Callable[[type[Distributor]], None]) -> None:
    """Register distributors: classes deriving from :class:`any2ds.Distributor`.

    Called at startup, in the main process and in every worker.
    ``distributor`` names the one a run uses (default ``multiprocessing``).
    Only the main process calls a distributor.

    :param register: call ``register(DistributorClass)`` once per distributor.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    .. versionchanged:: 1.2 Distributor.probe_workers: the preflight run on the engine before any shard;
       Distributor.run's progress channel.
    .. versionchanged:: 1.3 Distributor.run: the shard task's cpu_share (a worker's share of the cores);
       CoreOptions.cpu_threads(busy_processes).
    """


# --------------------------------------------------------------------------
# observe: watching a run's progress
# --------------------------------------------------------------------------


@hookspec
def any2ds_register_observers(register: Callable[[type[Observer]], None]) -> None:
    """Register observers: classes deriving from :class:`any2ds.Observer`.

    Called at startup, in the main process and in every worker. The
    ``observers`` option lists the enabled ones (default
    ``[progress, wandb]``; wandb logs only with ``enable_wandb``). Observers
    run in the main process and are told when the run starts, its live
    progress about every second, when each shard completes or fails, and
    when the run ends.

    :param register: call ``register(ObserverClass)`` once per observer.
    :returns: None; a return value is ignored.

    .. versionadded:: 1.0
    .. versionchanged:: 1.2 Observer.progress.
    """
