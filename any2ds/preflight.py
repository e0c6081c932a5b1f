"""The preflight: before any shard runs, one small task checks that the workers can run the job.

Spark executors and Ray workers run whatever interpreter their cluster gives them, which may
lack any2ds or a plugin, or hold other versions of them. Without this check every shard would
fail, one after the other, with the same error. The distributor runs a :class:`WorkerProbe`
once where shards run (:meth:`~any2ds.Distributor.probe_workers`); the probe loads the plugins
and builds the run's components as a shard's worker does, and reports what it found. The main
process compares that with its own environment and stops the run with one line saying what
differs, and where.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping

import attrs

from any2ds.components import Distributor
from any2ds.config import RunConfig
from any2ds.errors import Any2dsError, ConfigError
from any2ds.hookspecs import HOOKSPEC_VERSION
from any2ds.inputs import split_input_format
from any2ds.manager import PluginHost, PluginRecord
from any2ds.pipeline import SamplePipeline

# The provider of a built-in component: any2ds itself, whose version is compared on its own.
BUILTIN = "any2ds (built-in)"


@attrs.frozen
class WorkerEnvironment:
    """What one process can run: any2ds's version and, for every component the run uses
    (``processor 'blur'``), the distribution that provides it (``any2ds-blur 1.2.0``);
    or why the components could not be built there (``error``)."""

    host: str
    python: str
    any2ds: str
    providers: Mapping[str, str] = attrs.field(factory=dict)
    error: str | None = None

    def where(self) -> str:
        return f"host {self.host}, python {self.python}"


class WorkerProbe:
    """The picklable preflight task: load the plugins and build the run's components, as a
    shard's worker would, and say what was found."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def __call__(self) -> WorkerEnvironment:
        try:
            host = PluginHost.load(local_plugins=self.config.core.plugins or ())
            SamplePipeline.build(host, self.config).close()
            return describe_environment(host, self.config)
        except Any2dsError as exc:
            return _environment({}, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever stops a worker is what the user must read
            return _environment({}, error=f"{type(exc).__name__}: {exc}")


def describe_environment(host: PluginHost, config: RunConfig) -> WorkerEnvironment:
    """This process's environment: the providers of the components ``config`` selects."""
    core = config.core
    selected = [("reader", split_input_format(core.input_format)[0], "input_format"),
                *(("fetcher", name, "fetchers") for name in core.fetchers),
                *(("verifier", name, "verifiers") for name in core.verifiers),
                *(("processor", name, "processors") for name in core.processor_names()),
                ("writer", core.output_format, "output_format")]
    providers = {}
    for kind, name, option in selected:
        providers[f"{kind} {name!r}"] = _provider(host.provider(host.component(kind, name, option)))
    return _environment(providers)


def check_workers(distributor: Distributor, host: PluginHost, config: RunConfig) -> None:
    """Run the preflight on ``distributor``'s workers; ConfigError saying what they lack."""
    found = distributor.probe_workers(WorkerProbe(config), config)
    if found is None:  # the workers are this interpreter's own processes
        return
    here = describe_environment(host, config)
    needed = ", ".join([f"any2ds {here.any2ds}", *sorted({p for p in here.providers.values() if p != BUILTIN})])
    if found.error is not None:
        problem = f"cannot build the run's components: {found.error}"
    elif found.any2ds != here.any2ds:
        problem = f"have any2ds {found.any2ds}, this machine {here.any2ds}"
    else:
        differ = [f"{component} comes from {found.providers.get(component)} there, {provider} here"
                  for component, provider in here.providers.items() if found.providers.get(component) != provider]
        if not differ:
            return
        problem = "; ".join(differ)
    raise ConfigError(f"distributor {distributor.name}: the workers ({found.where()}) {problem}. "
                      f"Install on every worker what this machine has: {needed}; or point the workers at "
                      "a Python that has them")


def _provider(record: PluginRecord) -> str:
    """How the environment names the plugin behind a component: its distribution and version, or
    the file or module a one-off plugin was loaded from."""
    if record.builtin:
        return BUILTIN
    if record.distribution is not None:
        return f"{record.distribution} {record.version}"
    return f"plugin {record.source}"


def _environment(providers: Mapping[str, str], error: str | None = None) -> WorkerEnvironment:
    from any2ds import __version__

    return WorkerEnvironment(socket.gethostname(), sys.executable, f"{__version__} (hook spec {HOOKSPEC_VERSION})",
                             providers, error)
