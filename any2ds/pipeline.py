"""Builds a run's components from registered names and the validated config.

The main process builds every component once at startup (so bad options and
missing dependencies fail before any work); each worker process rebuilds
the ones it needs from the same names and config.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pyarrow as pa

from any2ds.components import Component, Distributor, Fetcher, Observer, Processor, Reader, Verifier, Writer
from any2ds.config import RunConfig
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost
from any2ds.metadata import CORE_FIELDS, MetadataLayout
from any2ds.sharding import split_input_format


def _build(host: PluginHost, config: RunConfig, kind: str, name: str, option: str) -> Component:
    cls = host.component(kind, name, option)
    return cls(config.options_for(cls))


def _names(values: Sequence[str], option: str) -> list[str]:
    duplicates = sorted({n for n in values if list(values).count(n) > 1})
    if duplicates:
        raise ConfigError(f"{option}: {', '.join(duplicates)} listed more than once")
    return list(values)


@attrs.define
class SamplePipeline:
    """What a worker needs per sample and per shard: fetchers, verifiers, processors, writer."""

    config: RunConfig
    fetchers: dict[str, Fetcher]
    verifiers: list[Verifier]
    processors: list[Processor]
    writer: Writer

    @classmethod
    def build(cls, host: PluginHost, config: RunConfig) -> SamplePipeline:
        core = config.core
        fetchers: dict[str, Fetcher] = {}
        for name in _names(core.fetchers, "fetchers"):
            fetcher = _build(host, config, "fetcher", name, "fetchers")
            for scheme in fetcher.schemes:
                if scheme in fetchers:
                    raise ConfigError(f"fetchers: both {fetchers[scheme].name!r} and {name!r} claim scheme {scheme!r}")
                fetchers[scheme] = fetcher
        verifiers = [_build(host, config, "verifier", n, "verifiers") for n in _names(core.verifiers, "verifiers")]
        processors = [_build(host, config, "processor", n, "processors") for n in _names(core.processors, "processors")]
        writer = _build(host, config, "writer", core.output_format, "output_format")
        pipeline = cls(config, fetchers, verifiers, processors, writer)  # type: ignore[arg-type]
        pipeline._check_columns()
        return pipeline

    @property
    def components(self) -> list[Component]:
        return [*dict.fromkeys(self.fetchers.values()), *self.verifiers, *self.processors, self.writer]

    def plugin_fields(self) -> list[pa.Field]:
        return [f for c in (*self.processors, *self.verifiers) for f in c.metadata_fields()]

    def media_streams(self) -> list[str]:
        return [s for p in self.processors for s in p.media_streams()]

    def saved_columns(self) -> list[str]:
        """Input columns copied to the metadata, in img2dataset's order."""
        core = self.config.core
        kept = [c for comp in self.components for c in comp.kept_columns()]
        return list(dict.fromkeys([*(core.save_additional_columns or []), *kept]))

    def input_columns(self) -> list[str]:
        """Every input column to read, the URL column first."""
        core = self.config.core
        needed = [c for comp in self.components for c in comp.read_columns()]
        caption = [core.caption_col] if core.caption_col else []
        return list(dict.fromkeys([core.url_col, *caption, *self.saved_columns(), *needed]))

    def layout(self, input_schema: pa.Schema) -> MetadataLayout:
        return MetadataLayout.build(input_schema, self.saved_columns(), self.config.core.caption_col is not None,
                                    self.plugin_fields(), self.media_streams())

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
    """The main process's view: the sample pipeline plus reader, distributor and observers."""

    samples: SamplePipeline
    reader: Reader
    compression: str | None
    distributor: Distributor
    observers: list[Observer]

    @classmethod
    def build(cls, host: PluginHost, config: RunConfig) -> RunPipeline:
        core = config.core
        reader_name, compression = split_input_format(core.input_format)
        reader = _build(host, config, "reader", reader_name, "input_format")
        samples = SamplePipeline.build(host, config)
        distributor = _build(host, config, "distributor", core.distributor, "distributor")
        observers = [_build(host, config, "observer", n, "observers") for n in _names(core.observers, "observers")]
        pipeline = cls(samples, reader, compression, distributor, observers)  # type: ignore[arg-type]
        for component in (reader, *samples.components, distributor, *observers):
            component.check()
        return pipeline

    def close(self) -> None:
        self.samples.close()
        for component in (self.reader, self.distributor, *self.observers):
            component.close()
