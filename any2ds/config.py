"""A run's configuration as values: the core options, each component's options, and ``option()``.

Plain data with no parsing (that is :mod:`any2ds.options`): a :class:`RunConfig`
is picklable and is what workers (spawned processes, Spark or Ray executors)
rebuild the run's components from.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from typing import Any, Literal, Optional

import attrs

from any2ds.errors import ConfigError
from any2ds.storage import Storage, check_storage_options, redacted
from any2ds.validators import at_least, greater_than

# What attrs validators and Options constructors raise for a bad value.
OPTION_ERRORS = (ValueError, TypeError)


@attrs.frozen
class NoOptions:
    """Options of a component that has none."""


def option(default: Any, help: str, validator: Any = None, *, flat: str | None = None, **kwargs: Any) -> Any:
    """An attrs field that becomes a flag and a YAML key; ``help`` is shown in ``--help``.

    A component's options are given under its name (``--audio.sample_rate``, an
    ``audio:`` YAML section, ``download(audio={"sample_rate": 48000})``). The
    built-in plugins' options also answer to a flat name (img2dataset's flags:
    ``--image_size``): the field's own name, or ``flat`` when given.
    """
    metadata = {"help": help} if flat is None else {"help": help, "flat": flat}
    return attrs.field(default=default, validator=validator, metadata=metadata, **kwargs)


def options_fields(cls: type) -> tuple[attrs.Attribute, ...]:
    """An Options class's fields with their annotations resolved to real types."""
    if cls is NoOptions:
        return ()
    attrs.resolve_types(cls)
    return attrs.fields(cls)


def field_default(field: attrs.Attribute) -> Any:
    """A field's default value (a factory's product for mutable defaults)."""
    default = field.default
    return default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]








# The processors of a run that routes samples by type, when the config names none.
BY_TYPE_PROCESSORS = ("image", "audio", "file")


@attrs.frozen
class CoreOptions:
    """Options the core owns (img2dataset's names and defaults)."""

    url_list: str = option(None, "Input: a file, a folder of files of input_format, or any fsspec URL.")
    output_folder: str = option("images", "Output folder; any fsspec URL (s3://, gs://, ...).")
    input_format: str = option("txt", "Input reader: txt, csv, tsv, json, jsonl, parquet (add .gz for gzip), "
                                      "archive (more with plugins).")
    output_format: str = option("files", "Writer: files, webdataset, parquet, tfrecord, dummy, lance "
                                         "(more with plugins).")
    url_col: str = option("url", "Input column holding the URL.")
    caption_col: Optional[str] = option(None, "Input column holding the caption; saved only when set.")
    save_additional_columns: Optional[list[str]] = option(None, "Input columns copied into the metadata.")
    number_sample_per_shard: int = option(10000, "Rows per shard; also sets the key width.", at_least(1))
    oom_shard_count: int = option(5, "Zero-padding width of shard ids.", at_least(1))
    processes_count: int = option(1, "Worker processes (multiprocessing distributor).", at_least(1))
    thread_count: int = option(256, "Fetches in flight per worker process (threads, or requests on an event "
                                    "loop for fetchers that have one).", at_least(1))
    processing_threads: Optional[int] = option(
        None, "Threads per worker process running verify/decode/resize/encode; default: cores / processes_count, "
              "and the cores of workers left without a shard at the end of a run go to those still running one."
    )
    max_bytes_in_flight: int = option(
        16 * 2**20, "Per worker process: bytes of fetched bodies waiting for or in processing, and of processed "
                    "results waiting for their turn to be written; no new fetch starts while they exceed it.",
        at_least(1)
    )
    sample_timeout: float = option(
        300.0, "Watchdog: a sample still in its fetch, or in its processing, this many seconds after that "
               "stage started is recorded as failed.", greater_than(0),
    )
    max_metadata_field_bytes: int = option(
        64 * 1024, "Largest text or bytes value of one metadata field (caption, extra columns, EXIF, ...); "
                   "longer values are cut and marked as truncated.", at_least(1),
    )
    max_metadata_bytes: int = option(
        1024 * 1024, "Largest sum of one sample's metadata values; the longest are cut further.", at_least(1),
    )
    storage_options: dict[str, Any] = option(
        attrs.Factory(dict), "fsspec options by protocol for input and output files (endpoint, credentials profile, "
                             "anonymous access): {s3: {endpoint_url: 'http://minio:9000', profile: minio}}; "
                             "on the command line as JSON or YAML.", check_storage_options,
    )
    distributor: str = option(
        "multiprocessing", "Where shards run: multiprocessing, inprocess, pyspark, ray (more with plugins)."
    )
    incremental_mode: Literal["incremental", "overwrite", "extend"] = option(
        "incremental", "incremental: skip finished shards; overwrite: start afresh; extend: add shards after the last."
    )
    max_shard_retry: int = option(1, "Rounds re-running failed shards at the end of the run.", at_least(0))
    fetchers: list[str] = option(["fast_http"], "Fetchers to enable; each URL goes to the one claiming its scheme "
                                                "(fast_http: libcurl on an event loop; http: requests on threads).")
    verifiers: list[str] = option(["hash"], "Verifiers run on the raw bytes (hash: compute_hash, verify_hash).")
    processors: Optional[list[str]] = option(
        None, "Processors: [image] by default; with routing by_type, [image, audio, file]. [] stores nothing "
              "but metadata."
    )
    routing: Literal["chain", "by_type"] = option(
        "chain", "chain: every processor runs on every sample, in order (img2dataset); by_type: each sample "
                 "goes to the first processor accepting its detected media type (images to image, audio to "
                 "audio, the rest to file) and the metadata's processor column says which."
    )
    plugins: Optional[list[str]] = option(
        None, "One-off plugins to load: .py files or module names (main process and every worker)."
    )
    observers: list[str] = option(
        ["progress", "wandb"], "Observers of the run; wandb logs only with enable_wandb."
    )
    progress: Literal["auto", "bar", "log", "none"] = option(
        "auto", "What the progress observer shows on stderr: bar (a live bar), log (a line every "
                "progress_log_interval seconds), none (only a failed shard's error); auto: bar on a terminal, "
                "else log."
    )

    def cpu_threads(self, busy_processes: int | None = None) -> int:
        """Threads of a worker process that run the CPU-heavy part of samples: ``processing_threads``,
        else the cores shared by the worker processes that have a shard, ``busy_processes`` of the
        ``processes_count`` (all of them unless given)."""
        if self.processing_threads is not None:
            return max(1, self.processing_threads)
        sharing = self.processes_count if busy_processes is None else min(busy_processes, self.processes_count)
        return max(1, (os.cpu_count() or 1) // max(1, sharing))

    def storage(self) -> Storage:
        """Builds the filesystems of the run's files with ``storage_options``."""
        return Storage(self.storage_options)

    def processor_names(self) -> list[str]:
        """The processors the run uses (``processors``, or the routing's default)."""
        if self.processors is not None:
            return list(self.processors)
        return list(BY_TYPE_PROCESSORS) if self.routing == "by_type" else ["image"]


CORE_OPTION_NAMES = frozenset(f.name for f in attrs.fields(CoreOptions))


@attrs.frozen
class RunConfig:
    """A validated run configuration; plain data, picklable, rebuilt into plugins by workers.

    ``component_values`` holds each component's option values under its
    namespace; ``namespaces`` maps ``(kind, name)`` of every registered
    component with options to that namespace (its name, see
    :mod:`any2ds.options`).
    """

    core: CoreOptions
    component_values: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    namespaces: Mapping[tuple[str, str], str] = attrs.field(factory=dict)

    def options_for(self, cls: type) -> Any:
        """Build ``cls.Options`` from the run's values; a validator's complaint is a ConfigError."""
        if cls.Options is NoOptions:
            return NoOptions()
        values = self.component_values.get(self.namespaces.get((cls.kind, cls.name), cls.name), {})
        known = {f.name for f in options_fields(cls.Options)}
        try:
            return cls.Options(**{k: v for k, v in values.items() if k in known})
        except OPTION_ERRORS as exc:
            raise ConfigError(f"{cls.kind} {cls.name!r}: {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        """Every option as given to the run: core options flat, component options by namespace
        (for run_summary.json and experiment trackers); secrets in storage_options are redacted."""
        core = {**attrs.asdict(self.core), "storage_options": redacted(self.core.storage_options)}
        return {**core, **{ns: dict(values) for ns, values in self.component_values.items()}}

    def digest(self) -> str:
        """An id of this config, for what a process builds once per config (take it once: a
        config pickled again after travelling may give other bytes)."""
        return hashlib.sha256(pickle.dumps(self)).hexdigest()
