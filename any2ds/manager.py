"""The plugin host: the one place core code calls hooks from.

Built-in plugins and third-party ones are loaded the same way, from the
``any2ds`` entry-point group; each registers its classes by name into the
registries kept here. A run loads strictly: the first broken plugin is a
startup error naming it and its distribution. ``any2ds plugins`` loads
tolerantly, listing a broken plugin with its error, so that a bad install can
still be inspected and switched off.

Environment controls, read by every process (spawned workers inherit them):

- ``ANY2DS_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in entry points
  (those of the ``any2ds`` distribution) and the plugins named by ``plugins``;
- ``ANY2DS_BLOCK_PLUGINS=a,b``: never import the plugins named ``a`` and ``b``
  (entry-point names; blocking a built-in makes its names unavailable);
- ``ANY2DS_TRACE_PLUGINS=1``: print each plugin load and registration to stderr.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from types import ModuleType
from typing import Any, ClassVar

import attrs
import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from any2ds import hookspecs
from any2ds.components import COMPONENT_KINDS, Component
from any2ds.config import NoOptions
from any2ds.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "any2ds"
BUILTIN_DISTRIBUTION = "any2ds"
DISABLE_AUTOLOAD_ENV = "ANY2DS_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "ANY2DS_BLOCK_PLUGINS"
TRACE_ENV = "ANY2DS_TRACE_PLUGINS"
# The module-level attribute in which a plugin states the hook spec versions it supports.
HOOKSPEC_ATTRIBUTE = "ANY2DS_HOOKSPEC"

# PluginRecord.state values.
LOADED = "loaded"
BLOCKED = "blocked"
AUTOLOAD_DISABLED = "autoload disabled"
BROKEN = "broken"


@attrs.define
class PluginRecord:
    """One plugin the host found: where it comes from and whether it loaded."""

    name: str
    source: str  # the entry point's module, the local plugin's path, or what an object is
    distribution: str | None = None
    version: str | None = None
    state: str = LOADED
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution is not None and _canonical(self.distribution) == BUILTIN_DISTRIBUTION

    def label(self) -> str:
        """How messages name the plugin: ``plugin 'lance' (distribution any2ds-lance 0.2.0)``."""
        if self.distribution is None or self.builtin:
            return f"plugin {self.name!r}"
        return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"


@attrs.frozen
class Registration:
    """A registered class and the plugin that registered it."""

    cls: type[Component]
    plugin: str


class Registry:
    """Classes of one kind (readers, writers, ...) by name; ``label`` names a plugin in errors."""

    def __init__(self, kind: str, label: Callable[[str], str]) -> None:
        self.kind = kind
        self._label = label
        self._entries: dict[str, Registration] = {}

    def add(self, cls: type[Component], plugin: str) -> None:
        base = COMPONENT_KINDS[self.kind]
        who = self._label(plugin)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{who} registered {cls!r} as a {self.kind}, but it does not derive from any2ds.{base.__name__}")
        if not cls.name:
            raise PluginError(f"{who} registered {self.kind} {cls.__qualname__} without a name")
        if cls.Options is not NoOptions and not attrs.has(cls.Options):
            raise PluginError(f"{self.kind} {cls.name!r} from {who}: Options must be an attrs class")
        previous = self._entries.get(cls.name)
        if previous is not None:
            raise PluginError(
                f"duplicate {self.kind} name {cls.name!r}: registered by {self._label(previous.plugin)} and by {who}"
            )
        self._entries[cls.name] = Registration(cls, plugin)

    def get(self, name: str, option: str) -> type[Component]:
        """The class named ``name``; ``option`` names the config key, for the error."""
        entry = self._entries.get(name)
        if entry is None:
            hint = difflib.get_close_matches(name, self.names(), n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{option}: unknown {self.kind} {name!r}{maybe}; available: {', '.join(self.names()) or 'none'}"
            )
        return entry.cls

    def registration(self, name: str) -> Registration:
        """The registration of ``name``; KeyError if there is none."""
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def registrations(self) -> list[Registration]:
        return [self._entries[n] for n in self.names()]


class PluginHost:
    """Loads plugins, fills the registries and exposes typed access to them.

    ``strict`` hosts raise ``PluginError`` at the first broken plugin; tolerant
    ones record the error in the plugin's :class:`PluginRecord` and go on.
    """

    # Plugin objects every host built in this process registers, by name
    # (any2ds.testing.registered_plugin). Other processes never see them.
    process_plugins: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, strict: bool = True) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.strict = strict
        self.records: list[PluginRecord] = []
        self._registered: dict[str, PluginRecord] = {}
        self.registries = {kind: Registry(kind, self.label) for kind in COMPONENT_KINDS}
        self._trace = _env_flag(TRACE_ENV)
        for name in _env_list(BLOCK_ENV):
            self._pm.set_blocked(name)

    @classmethod
    def load(cls, plugins: Iterable[Any] = (), *, local_plugins: Iterable[str] = (),
             entry_points: bool = True, strict: bool = True) -> PluginHost:
        """A host with the entry-point plugins (built-ins included), ``plugins`` (objects),
        this process's :attr:`process_plugins` and ``local_plugins`` (paths to .py files or
        module names) registered."""
        host = cls(strict=strict)
        if entry_points:
            host._load_entry_points()
        for plugin in plugins:
            host.register(plugin)
        for name, plugin in cls.process_plugins.items():
            host.register(plugin, name)
        for spec in local_plugins:
            host._add(PluginRecord(spec, source=os.path.abspath(spec) if _is_path(spec) else spec),
                      lambda spec=spec: _import_local_plugin(spec))
        host.collect()
        return host

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Register a plugin object (a module or instance with ``@hookimpl`` functions)."""
        name = name or self._pm.get_canonical_name(plugin)
        source = plugin.__name__ if isinstance(plugin, ModuleType) else f"{type(plugin).__name__} object"
        self._add(PluginRecord(name, source=source), lambda: plugin)

    def _load_entry_points(self) -> None:
        autoload = not _env_flag(DISABLE_AUTOLOAD_ENV)
        for ep, distribution, version in _entry_points():
            record = PluginRecord(ep.name, source=ep.value, distribution=distribution, version=version)
            if autoload or record.builtin:
                self._add(record, ep.load)
            else:
                record.state = AUTOLOAD_DISABLED
                self.records.append(record)

    def _add(self, record: PluginRecord, load: Callable[[], Any]) -> None:
        """Import (unless blocked) and register one plugin, checking it can work with this any2ds."""
        self.records.append(record)
        if self._pm.is_blocked(record.name):
            record.state = BLOCKED
            self._log(f"{record.label()} is blocked ({BLOCK_ENV})")
            return
        holder = self._registered.get(record.name)
        if holder is not None:
            self._fail(record, f"{record.label()} has the same name as {holder.label()}; rename one of them")
            return
        try:
            plugin = load()
        except Exception as exc:  # whatever a plugin's import raises, it is this plugin's error
            self._fail(record, f"{record.label()} failed to import {record.source}: {type(exc).__name__}: {exc}")
            return
        problem = _hookspec_problem(plugin)
        if problem is None:
            try:
                self._pm.register(plugin, name=record.name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                problem = f"cannot be registered: {exc}"
        if problem is None and (unknown := self._unknown_hooks(plugin)):
            self._pm.unregister(plugin)
            problem = f"implements {_unknown_hooks_message(unknown)}"
        if problem is not None:
            self._fail(record, f"{record.label()} {problem}")
            return
        self._registered[record.name] = record
        self._log(f"loaded {record.label()} from {record.source}")

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        """Hooks ``plugin`` implements that the spec does not define (pluggy's check_pending, for one plugin)."""
        return sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or []
                      if not caller.has_spec()
                      and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()))

    def _fail(self, record: PluginRecord, message: str) -> None:
        record.state, record.error = BROKEN, message
        if self.strict:
            remedy = ""
            if record.distribution:  # an entry point: it can be blocked
                remedy = f"; {'' if record.builtin else 'uninstall it or '}set {BLOCK_ENV}={record.name}"
            raise PluginError(message + remedy)

    def _log(self, message: str) -> None:
        if self._trace:
            print(f"any2ds trace [pid {os.getpid()}]: {message}", file=sys.stderr, flush=True)

    def collect(self) -> None:
        """Call every registration hook once per plugin, attributing each class to its plugin."""
        for kind, registry in self.registries.items():
            hook_name = f"any2ds_register_{kind}s"
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                record = self._registered[impl.plugin_name]

                def register(cls: type[Component], _record: PluginRecord = record, _registry: Registry = registry) -> None:
                    _registry.add(cls, _record.name)
                    self._log(f"{_record.label()} registered {_registry.kind} {cls.name!r}")

                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except PluginError as exc:
                    self._fail(record, str(exc))
                except Exception as exc:  # a bug in the plugin's hook
                    self._fail(record, f"{record.label()}: {hook_name} raised {type(exc).__name__}: {exc}")

    def label(self, plugin_name: str) -> str:
        """How messages name a registered plugin (with its distribution when it is third-party)."""
        record = self._registered.get(plugin_name)
        return record.label() if record is not None else f"plugin {plugin_name!r}"

    def is_builtin(self, plugin_name: str) -> bool:
        """Whether a registered plugin is one of any2ds's own (an entry point of the any2ds distribution)."""
        record = self._registered.get(plugin_name)
        return record is not None and record.builtin

    def component(self, kind: str, name: str, option: str) -> type[Component]:
        """The class registered as ``name`` in the ``kind`` registry; ``option`` is for errors."""
        return self.registries[kind].get(name, option)

    def provider(self, cls: type[Component]) -> PluginRecord:
        """The plugin that registered ``cls`` (its distribution and version say what to install)."""
        registration = self.registries[cls.kind].registration(cls.name)
        return self._registered[registration.plugin]

    def component_classes(self) -> list[Registration]:
        """Every registered class of every kind."""
        return [r for registry in self.registries.values() for r in registry.registrations()]

    def report(self) -> list[dict[str, Any]]:
        """Every plugin found, loaded or not: its record, the names it registered by kind
        and the hooks it implements (what ``any2ds plugins`` shows)."""
        rows = []
        for record in self.records:
            loaded = self._registered.get(record.name) is record
            plugin = self._pm.get_plugin(record.name) if loaded else None
            registers: dict[str, list[str]] = {}
            for registration in self.component_classes() if loaded else ():
                if registration.plugin == record.name:
                    registers.setdefault(registration.cls.kind, []).append(registration.cls.name)
            hooks = sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or []) if plugin else []
            rows.append({**attrs.asdict(record), "registers": registers, "hooks": hooks})
        return rows


def _entry_points() -> list[tuple[metadata.EntryPoint, str, str]]:
    """Every entry point of the group with its distribution's name and version, built-ins first,
    then by distribution and name.

    ``metadata.entry_points`` counts a distribution found twice on sys.path once. Each read of
    ``dist.name`` or ``dist.version`` parses the distribution's METADATA file again (about 20 ms
    of every process's start-up): each is read once per distribution.
    """
    described: dict[int, tuple[str, str]] = {}
    entries = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if id(ep.dist) not in described:
            fields = ep.dist.metadata
            described[id(ep.dist)] = (fields["Name"], fields["Version"])
        entries.append((ep, *described[id(ep.dist)]))

    def order(entry: tuple[metadata.EntryPoint, str, str]) -> tuple[bool, str, str]:
        distribution = _canonical(entry[1])
        return distribution != BUILTIN_DISTRIBUTION, distribution, entry[0].name

    return sorted(entries, key=order)


def _hookspec_problem(plugin: Any) -> str | None:
    """Why ``plugin``'s ``ANY2DS_HOOKSPEC`` excludes this any2ds's hook spec version, if it does."""
    wanted = getattr(plugin, HOOKSPEC_ATTRIBUTE, None)
    if wanted is None:
        return None
    try:
        supported = SpecifierSet(str(wanted))
    except InvalidSpecifier:
        return f"has an invalid {HOOKSPEC_ATTRIBUTE} {wanted!r}: write a version specifier such as '>=1,<2'"
    if supported.contains(hookspecs.HOOKSPEC_VERSION):
        return None
    return (f"supports any2ds hook specs {wanted!r}, but this any2ds has hook spec version "
            f"{hookspecs.HOOKSPEC_VERSION}; install a version of the plugin made for it")


def _unknown_hooks_message(names: list[str]) -> str:
    known = [name for name in dir(hookspecs) if name.startswith("any2ds_")]
    parts = []
    for name in names:
        hint = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return f"unknown hook {', '.join(parts)}, which any2ds hook spec {hookspecs.HOOKSPEC_VERSION} does not define"


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec


def _import_local_plugin(spec: str) -> ModuleType:
    """Import a one-off plugin: a path to a .py file, or an importable module name."""
    if not _is_path(spec):
        return importlib.import_module(spec)
    path = os.path.abspath(spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    name = "any2ds_local_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # lets pickle find classes defined in the file
    module_spec.loader.exec_module(module)
    return module


def _canonical(name: str) -> str:
    """A distribution name normalised as PEP 503 does (``Any2DS_Lance`` -> ``any2ds-lance``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]
