"""The plugin core: the hookspec contract, registries, option schema, keys."""

from __future__ import annotations

import inspect
import types

import pytest

from any2ds import Writer, hookimpl, hookspecs
from any2ds.errors import ConfigError, PluginError
from any2ds.manager import PluginHost
from any2ds.types import make_key, shard_name


def hook_functions():
    return [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("any2ds_")]


@pytest.mark.parametrize("hook", hook_functions(), ids=lambda f: f.__name__)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(hook) or ""
    assert "Called" in doc, f"{hook.__name__}: say when it is called"
    for arg in inspect.signature(hook).parameters:
        assert f":param {arg}:" in doc, f"{hook.__name__}: document argument {arg}"
    assert ":returns:" in doc, f"{hook.__name__}: say what to return"


def test_hooks_cover_every_registry_kind():
    host = PluginHost.load()
    assert {f.__name__ for f in hook_functions()} == {f"any2ds_register_{k}s" for k in host.registries}


def test_builtins_are_registered_through_entry_points():
    host = PluginHost.load()
    names = {kind: reg.names() for kind, reg in host.registries.items()}
    assert {"txt", "csv", "tsv", "json", "jsonl", "parquet"} <= set(names["reader"])
    assert {"files", "webdataset", "parquet", "tfrecord", "dummy"} <= set(names["writer"])
    assert "http" in names["fetcher"] and "image" in names["processor"] and "hash" in names["verifier"]
    assert "multiprocessing" in names["distributor"] and "progress" in names["observer"]
    assert PluginHost.load(entry_points=False).component_classes() == []


class _EchoWriter(Writer):
    name = "webdataset"


def test_duplicate_name_is_a_startup_error_naming_both_plugins():
    plugin = types.SimpleNamespace(any2ds_register_writers=hookimpl(lambda register: register(_EchoWriter)))
    with pytest.raises(PluginError, match=r"duplicate writer name 'webdataset': registered by plugin 'writers' and by plugin 'dup'"):
        host = PluginHost()
        host._load_entry_points()
        host.register(plugin, name="dup")
        host.collect()


def test_unknown_hook_is_a_startup_error():
    plugin = types.SimpleNamespace(any2ds_register_widgets=hookimpl(lambda register: None))
    with pytest.raises(PluginError, match="unknown hook"):
        PluginHost.load([plugin], entry_points=False)


def test_registering_a_non_component_is_an_error():
    plugin = types.SimpleNamespace(any2ds_register_processors=hookimpl(lambda register: register(dict)))
    with pytest.raises(PluginError, match="does not derive from any2ds.Processor"):
        PluginHost.load([plugin], entry_points=False)


def test_unknown_name_lists_what_is_available(tmp_path):
    host = PluginHost.load()
    with pytest.raises(ConfigError, match=r"output_format: unknown writer 'mds'; available: dummy, files, lance, parquet, tfrecord, webdataset"):
        host.component("writer", "mds", "output_format")


def test_keys_and_shard_names_follow_img2dataset():
    assert make_key(1, 5, 10000, 5) == "000010005"
    assert make_key(0, 3, 10, 5) == "000003"
    assert make_key(123456, 7, 10, 5) == "1234567"  # grows, never truncated
    assert shard_name(3, 5) == "00003" and shard_name(123456, 5) == "123456"


def test_the_public_api_is_documented():
    """Everything in any2ds.__all__ has a docstring, and so has every public method of its classes."""
    import any2ds

    missing = []
    for name in any2ds.__all__:
        obj = getattr(any2ds, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(name)
        if inspect.isclass(obj) and obj.__module__.startswith("any2ds"):
            for attr, value in vars(obj).items():
                function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                if attr.startswith("_") or not (inspect.isfunction(function) or isinstance(value, property)):
                    continue
                if not (function.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"undocumented: {', '.join(missing)}"


def test_builtin_plugins_import_only_the_public_api():
    """A built-in plugin is built like a third-party one: from any2ds (and its own package) only."""
    import ast
    import pathlib

    plugins = pathlib.Path(__file__).resolve().parent.parent / "plugins"
    internal = []
    for path in sorted(plugins.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                       [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            internal += [f"{path.relative_to(plugins)}: {m}" for m in modules if m.startswith("any2ds.")]
    assert not internal, "plugins import internal modules:\n" + "\n".join(internal)
