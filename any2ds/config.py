"""The run's configuration: core options plus every registered component's options.

One schema serves the CLI, YAML files and ``any2ds.download(**kwargs)``: it is
built from the registries, so a plugin's options are flags and keys like the
core's. Option names are flat, as img2dataset's flags are; two components
declaring the same option name is a startup error.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Optional

import attrs

from any2ds.components import Component, NoOptions, option
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost

# What attrs validators and Options constructors raise for a bad value.
OPTION_ERRORS = (ValueError, TypeError)


def _positive(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


def _above_zero(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be more than 0, got {value}")


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value}")


@attrs.frozen
class CoreOptions:
    """Options the core owns (img2dataset's names and defaults)."""

    url_list: str = option(None, "Input: a file, a folder of files of input_format, or any fsspec URL.")
    output_folder: str = option("images", "Output folder; any fsspec URL (s3://, gs://, ...).")
    input_format: str = option("txt", "Input reader: txt, csv, tsv, json, jsonl, parquet; add .gz for gzip.")
    output_format: str = option("files", "Writer: files, webdataset, parquet, tfrecord, dummy, lance.")
    url_col: str = option("url", "Input column holding the URL.")
    caption_col: Optional[str] = option(None, "Input column holding the caption; saved only when set.")
    save_additional_columns: Optional[list[str]] = option(None, "Input columns copied into the metadata.")
    number_sample_per_shard: int = option(10000, "Rows per shard; also sets the key width.", _positive)
    oom_shard_count: int = option(5, "Zero-padding width of shard ids.", _positive)
    processes_count: int = option(1, "Worker processes (multiprocessing distributor).", _positive)
    thread_count: int = option(256, "Fetch threads per worker process.", _positive)
    processing_threads: Optional[int] = option(
        None, "Threads per worker process running decode/resize/encode; default: cores / processes_count."
    )
    max_bytes_in_flight: int = option(
        512 * 2**20, "Per worker process: bytes of fetched bodies waiting for or in processing.", _positive
    )
    sample_timeout: float = option(
        300.0, "Watchdog: a sample unfinished this many seconds after it started is recorded as failed.",
        _above_zero,
    )
    distributor: str = option(
        "multiprocessing", "Where shards run: multiprocessing, inprocess, pyspark, ray (more with plugins)."
    )
    incremental_mode: Literal["incremental", "overwrite", "extend"] = option(
        "incremental", "incremental: skip finished shards; overwrite: start afresh; extend: add shards after the last."
    )
    max_shard_retry: int = option(1, "Rounds re-running failed shards at the end of the run.", _non_negative)
    fetchers: list[str] = option(["http"], "Fetchers to enable; each URL goes to the one claiming its scheme.")
    verifiers: list[str] = option(["hash"], "Verifiers run on the raw bytes (hash: compute_hash, verify_hash).")
    processors: list[str] = option(["image"], "Processors chained on each sample ([] stores nothing but metadata).")
    plugins: Optional[list[str]] = option(
        None, "One-off plugins to load: .py files or module names (main process and every worker)."
    )
    observers: list[str] = option(
        ["progress", "wandb"], "Observers of the run; wandb logs only with enable_wandb."
    )

    def cpu_threads(self) -> int:
        if self.processing_threads is not None:
            return max(1, self.processing_threads)
        return max(1, (os.cpu_count() or 1) // self.processes_count)


CORE_OPTION_NAMES = frozenset(f.name for f in attrs.fields(CoreOptions))


def options_fields(cls: type) -> tuple[attrs.Attribute, ...]:
    """An Options class's fields with their annotations resolved to real types."""
    if cls is NoOptions:
        return ()
    attrs.resolve_types(cls)
    return attrs.fields(cls)


def option_key(field: attrs.Attribute) -> str:
    """The name an option is given by in flags, YAML and keyword arguments."""
    return field.metadata.get("flat") or field.name


def declared_options(host: PluginHost) -> dict[str, tuple[type, attrs.Attribute]]:
    """Every option name of every registered component, mapped to (Options class, field).

    Raises PluginError-style ConfigError on a clash between two components.
    """
    owners: dict[str, tuple[str, type, attrs.Attribute]] = {}
    for registration in host.component_classes():
        cls = registration.cls
        for field in options_fields(cls.Options):
            where = f"{cls.kind} {cls.name!r} (plugin {registration.plugin!r})"
            key = option_key(field)
            if key in CORE_OPTION_NAMES:
                raise ConfigError(f"option {key!r} of {where} clashes with a core option")
            previous = owners.get(key)
            if previous is not None and previous[1] is not cls.Options:
                raise ConfigError(f"option {key!r} is declared by both {previous[0]} and {where}")
            owners[key] = (where, cls.Options, field)
    return {name: (cls, field) for name, (_w, cls, field) in owners.items()}


def _default(field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


@attrs.frozen
class RunConfig:
    """A validated run configuration; plain data, picklable, rebuilt into plugins by workers."""

    core: CoreOptions
    plugin_values: Mapping[str, Any]

    def options_for(self, cls: type[Component]) -> Any:
        """Build ``cls.Options`` from the run's values; validators raise ConfigError."""
        if cls.Options is NoOptions:
            return NoOptions()
        values = {f.name: self.plugin_values[option_key(f)] for f in options_fields(cls.Options)
                  if option_key(f) in self.plugin_values}
        try:
            return cls.Options(**values)
        except OPTION_ERRORS as exc:
            raise ConfigError(f"{cls.kind} {cls.name!r}: {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        """Every option by name, as given to the run (for run_summary.json and trackers)."""
        return {**attrs.asdict(self.core), **self.plugin_values}


def reject_unknown(host: PluginHost, names: Iterable[str]) -> None:
    """ConfigError naming every option no core field or registered component declares."""
    known = CORE_OPTION_NAMES | set(declared_options(host))
    unknown = sorted(set(names) - known)
    if unknown:
        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, known, n=1)) else repr(u)
                 for u in unknown]
        raise ConfigError(f"unknown option(s): {', '.join(hints)}")


def build_config(host: PluginHost, values: Mapping[str, Any]) -> RunConfig:
    """Validate already-typed ``values`` (from the CLI, YAML or kwargs) into a RunConfig."""
    reject_unknown(host, values)
    plugin_options = declared_options(host)
    core_values = {k: v for k, v in values.items() if k in CORE_OPTION_NAMES}
    if core_values.get("url_list") in (None, ""):
        raise ConfigError("url_list is required: a file, a folder of input files, or an fsspec URL")
    try:
        core = CoreOptions(**core_values)
    except OPTION_ERRORS as exc:
        raise ConfigError(str(exc)) from exc
    plugin_values = {name: values.get(name, _default(field)) for name, (_cls, field) in plugin_options.items()}
    return RunConfig(core=core, plugin_values=plugin_values)
