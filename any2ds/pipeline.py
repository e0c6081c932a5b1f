"""Builds a run's components from registered names and the validated config.

The main process builds every component once at startup (so bad options and
missing dependencies fail before any work); each worker process rebuilds
the ones it needs from the same names and config.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pyarrow as pa

from any2ds.components import (
    Component, Distributor, Fetcher, Observer, Processor, Reader, SampleReader, Verifier, Writer,
)
from any2ds.config import RunConfig
from any2ds.errors import ConfigError
from any2ds.inputs import split_input_format
from any2ds.intake import RowIntake
from any2ds.manager import PluginHost
from any2ds.metadata import CORE_FIELDS, MetadataLayout
from any2ds.processing import PROCESSOR_FIELD
from any2ds.types import KeyFormat


def _build(host: PluginHost, config: RunConfig, kind: str, name: str, option: str) -> Component:
    cls = host.component(kind, name, option)
    component = cls(config.options_for(cls))
    component.storage = config.core.storage()
    return component


def _names(values: Sequence[str], option: str) -> list[str]:
    duplicates = sorted({n for n in values if list(values).count(n) > 1})
    if duplicates:
        raise ConfigError(f"{option}: {', '.join(duplicates)} listed more than once")
    return list(values)


@attrs.define
class SamplePipeline:
    """What a worker needs per shard and per sample: reader, fetchers, verifiers, processors, writer.

    ``reader`` is None for rows handed over by a caller (:class:`any2ds.Pipeline`), which
    are read like a format with named columns.
    """

    config: RunConfig
    reader: Reader | None
    fetchers: dict[str, Fetcher]
    verifiers: list[Verifier]
    processors: list[Processor]
    writer: Writer

    @classmethod
    def build(cls, host: PluginHost, config: RunConfig, read_input: bool = True) -> SamplePipeline:
        core = config.core
        reader = (_build(host, config, "reader", split_input_format(core.input_format)[0], "input_format")
                  if read_input else None)
        fetchers: dict[str, Fetcher] = {}
        for name in _names(core.fetchers, "fetchers"):
            fetcher = _build(host, config, "fetcher", name, "fetchers")
            for scheme in fetcher.schemes:
                if scheme in fetchers:
                    raise ConfigError(f"fetchers: both {fetchers[scheme].name!r} and {name!r} claim scheme {scheme!r}")
                fetchers[scheme] = fetcher
        verifiers = [_build(host, config, "verifier", n, "verifiers") for n in _names(core.verifiers, "verifiers")]
        processors = [_build(host, config, "processor", n, "processors") for n in _names(core.processor_names(), "processors")]
        writer = _build(host, config, "writer", core.output_format, "output_format")
        pipeline = cls(config, reader, fetchers, verifiers, processors, writer)  # type: ignore[arg-type]
        pipeline._check_columns()
        return pipeline

    @property
    def components(self) -> list[Component]:
        reader = [self.reader] if self.reader is not None else []
        return [*reader, *dict.fromkeys(self.fetchers.values()), *self.verifiers, *self.processors, self.writer]

    @property
    def named_columns(self) -> bool:
        """Whether input rows have named columns (not a txt file's bare URLs)."""
        return self.reader is None or self.reader.named_columns

    @property
    def has_caption(self) -> bool:
        """Whether the metadata has a caption column: captions are read only when caption_col
        is set, and only from formats with named columns (img2dataset reads a txt file's URLs only)."""
        if isinstance(self.reader, SampleReader):
            return self.reader.captioned()
        return self.config.core.caption_col is not None and self.named_columns

    def plugin_fields(self) -> list[pa.Field]:
        """Every metadata field components fill, the leading ones first."""
        return [*self._fields("leading_metadata_fields"), *self._fields("metadata_fields")]

    def _fields(self, method: str) -> list[pa.Field]:
        return [f for c in (*self.processors, *self.verifiers) for f in getattr(c, method)()]

    def reported_statuses(self) -> tuple[str, ...]:
        """The failure statuses the run can give, counted in every ``_stats.json`` even at zero:
        a failed download, then each processor's own (``failed_to_resize`` for images)."""
        return tuple(dict.fromkeys(["failed_to_download", *(p.failure_status for p in self.processors)]))

    def media_streams(self) -> list[str]:
        return [s for p in self.processors for s in p.media_streams()]

    def saved_columns(self) -> list[str]:
        """Input columns copied to the metadata, in img2dataset's order."""
        if not self.named_columns:
            return []
        core = self.config.core
        kept = [c for comp in self.components for c in comp.kept_columns()]
        return list(dict.fromkeys([*(core.save_additional_columns or []), *kept]))

    def sample_columns(self) -> list[str]:
        """The input columns samples carry in ``Sample.columns`` (url and caption excluded)."""
        if not self.named_columns:
            return []
        needed = [c for comp in self.components for c in comp.read_columns()]
        return list(dict.fromkeys([*self.saved_columns(), *needed]))

    def input_columns(self) -> list[str]:
        """Every input column a row reader reads, the URL column first."""
        core = self.config.core
        caption = [core.caption_col] if self.has_caption else []
        return list(dict.fromkeys([core.url_col, *caption, *self.sample_columns()]))

    def row_intake(self) -> RowIntake:
        """How this run turns an input row into a sample."""
        core = self.config.core
        return RowIntake(KeyFormat(core.number_sample_per_shard, core.oom_shard_count), core.url_col,
                         core.caption_col if self.has_caption else None, tuple(self.sample_columns()))

    def layout(self, input_schema: pa.Schema) -> MetadataLayout:
        core = self.config.core
        return MetadataLayout.build(input_schema, self.saved_columns(), self.has_caption,
                                    self._routing_fields() + self._fields("metadata_fields"), self.media_streams(),
                                    self._fields("leading_metadata_fields"), core.max_metadata_field_bytes,
                                    core.max_metadata_bytes)

    def _routing_fields(self) -> list[pa.Field]:
        """The ``processor`` column, which says who processed each sample when routing by type."""
        return [pa.field(PROCESSOR_FIELD, pa.string())] if self.config.core.routing == "by_type" else []

    def _check_columns(self) -> None:
        """img2dataset refuses saved columns that clash with metadata names; so do we."""
        core = self.config.core
        metadata_names = {"caption", "url", *(f.name for f in CORE_FIELDS), *(f.name for f in self.plugin_fields())}
        clash = sorted(set(core.save_additional_columns or []) & (metadata_names | set(self.media_streams())))
        if clash:
            raise ConfigError(f"save_additional_columns: {', '.join(clash)} would clash with metadata columns of the same name")
        streams = sorted(set(self.media_streams()) & (metadata_names | set(self.saved_columns())))
        if streams:
            raise ConfigError(f"media stream(s) {', '.join(streams)} would clash with metadata columns of the same name")
        fields = [f.name for f in self.plugin_fields()]
        twice = sorted({n for n in fields if fields.count(n) > 1})
        if twice:
            raise ConfigError(f"metadata field(s) {', '.join(twice)} declared by more than one processor/verifier")

    def close(self) -> None:
        for component in self.components:
            component.close()


@attrs.define
class RunPipeline:
    """The main process's view: the sample pipeline plus distributor and observers."""

    samples: SamplePipeline
    distributor: Distributor
    observers: list[Observer]

    @classmethod
    def build(cls, host: PluginHost, config: RunConfig) -> RunPipeline:
        core = config.core
        samples = SamplePipeline.build(host, config)
        distributor = _build(host, config, "distributor", core.distributor, "distributor")
        observers = [_build(host, config, "observer", n, "observers") for n in _names(core.observers, "observers")]
        pipeline = cls(samples, distributor, observers)  # type: ignore[arg-type]
        for component in (*samples.components, distributor, *observers):
            component.check()
        return pipeline

    def close(self) -> None:
        self.samples.close()
        for component in (self.distributor, *self.observers):
            component.close()
