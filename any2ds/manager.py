"""The plugin host: the one place core code calls hooks from.

Built-in plugins and third-party ones are loaded the same way, from the
``any2ds`` entry-point group; each registers its classes by name into the
registries kept here.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from importlib import metadata
from types import ModuleType
from typing import Any

import attrs
import pluggy

from any2ds import hookspecs
from any2ds.components import COMPONENT_KINDS, Component, NoOptions
from any2ds.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "any2ds"


@attrs.frozen
class Registration:
    """A registered class and the plugin that registered it."""

    cls: type[Component]
    plugin: str


class Registry:
    """Classes of one kind (readers, writers, ...) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registration] = {}

    def add(self, cls: type[Component], plugin: str) -> None:
        base = COMPONENT_KINDS[self.kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {self.kind}, but it does not derive from any2ds.{base.__name__}")
        if not cls.name:
            raise PluginError(f"plugin {plugin!r} registered {self.kind} {cls.__qualname__} without a name")
        if cls.Options is not NoOptions and not attrs.has(cls.Options):
            raise PluginError(f"{self.kind} {cls.name!r} from plugin {plugin!r}: Options must be an attrs class")
        previous = self._entries.get(cls.name)
        if previous is not None:
            raise PluginError(
                f"duplicate {self.kind} name {cls.name!r}: registered by plugin {previous.plugin!r} "
                f"and by plugin {plugin!r}"
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

    def names(self) -> list[str]:
        return sorted(self._entries)

    def registrations(self) -> list[Registration]:
        return [self._entries[n] for n in self.names()]


def _import_local_plugin(spec: str) -> ModuleType:
    """Import a one-off plugin: a path to a .py file, or an importable module name."""
    try:
        if spec.endswith(".py") or os.sep in spec:
            path = os.path.abspath(spec)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
            name = "any2ds_local_" + hashlib.sha1(path.encode()).hexdigest()[:12]
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # lets pickle find classes defined in the file
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except Exception as exc:
        raise PluginError(f"error importing plugin {spec!r}: {type(exc).__name__}: {exc}") from exc


class PluginHost:
    """Loads plugins, fills the registries and exposes typed access to them."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in COMPONENT_KINDS}
        self._loaded = False

    @classmethod
    def load(cls, plugins: Iterable[Any] = (), *, local_plugins: Iterable[str] = (),
             entry_points: bool = True) -> PluginHost:
        """A host with the entry-point plugins (built-ins included), ``plugins`` (objects)
        and ``local_plugins`` (paths to .py files or module names) registered."""
        host = cls()
        if entry_points:
            host._load_entry_points()
        for plugin in plugins:
            host.register(plugin)
        for spec in local_plugins:
            host.register(_import_local_plugin(spec), name=spec)
        host.collect()
        return host

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Register a plugin object (a module or instance with ``@hookimpl`` functions)."""
        try:
            self._pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name or getattr(plugin, '__name__', plugin)!r} cannot be registered: {exc}") from exc

    def _load_entry_points(self) -> None:
        for dist in metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or self._pm.get_plugin(ep.name) is not None:
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginError(
                        f"error importing plugin {ep.name!r} ({ep.value}) from distribution "
                        f"{dist.metadata['Name']}: {type(exc).__name__}: {exc}"
                    ) from exc
                self.register(plugin, name=ep.name)

    def collect(self) -> None:
        """Call every registration hook once, attributing each class to its plugin."""
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
        for kind, registry in self.registries.items():
            hook = getattr(self._pm.hook, f"any2ds_register_{kind}s")
            for impl in hook.get_hookimpls():
                plugin = impl.plugin_name

                def register(cls: type[Component], _plugin: str = plugin, _registry: Registry = registry) -> None:
                    _registry.add(cls, _plugin)

                impl.function(**{arg: register for arg in impl.argnames})
        self._loaded = True

    def component(self, kind: str, name: str, option: str) -> type[Component]:
        """The class registered as ``name`` in the ``kind`` registry; ``option`` is for errors."""
        return self.registries[kind].get(name, option)

    def component_classes(self) -> list[Registration]:
        """Every registered class of every kind."""
        return [r for registry in self.registries.values() for r in registry.registrations()]

    def plugin_names(self) -> list[str]:
        return sorted(self._pm.get_canonical_name(p) for p in self._pm.get_plugins())

    def hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self._pm.get_plugin(plugin_name)
        return sorted(h.name for h in (self._pm.get_hookcallers(plugin) or []))
