"""Plugin loading and control in this process: `any2ds plugins`, the environment switches,
hook spec versions, tolerant loading, one-off plugins in worker processes, tracing, and the
``inprocess`` distributor. Installed third-party packages: test_plugin_package.py and
test_plugins_broken.py."""

from __future__ import annotations

import json
import os
import re
import types
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from any2ds_plugins.inprocess import InProcessDistributor

from any2ds import NoOptions, Processor, hookimpl
from any2ds.cli import main
from any2ds.options import read_plugins
from any2ds.errors import PluginError
from any2ds.manager import PluginHost
from any2ds.types import Shard, ShardFailure
from tests.conftest import JPEG_SIZES

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
VERSION = metadata.version("any2ds")


def docs_example(first_line: str) -> str:
    """The python block of docs/plugins.md that starts with ``first_line``."""
    return next(block for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
                if block.startswith(first_line))


class _Versioned(Processor):
    name = "versioned"


def processor_plugin(cls: type[Processor], **attributes) -> types.SimpleNamespace:
    return types.SimpleNamespace(any2ds_register_processors=hookimpl(lambda register: register(cls)), **attributes)


def test_plugins_command_lists_names_hooks_and_distribution(capsys):
    assert main(["plugins"]) == 0
    assert f"http: any2ds {VERSION} (any2ds_plugins.http)\n    fetcher: fast_http, http\n    hooks: any2ds_register_fetchers\n" \
        in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["writers"]["registers"] == {"writer": ["dummy", "files", "lance", "parquet", "tfrecord", "webdataset"]}
    assert listed["inprocess"] == {
        "name": "inprocess", "source": "any2ds_plugins.inprocess", "distribution": "any2ds", "version": VERSION,
        "state": "loaded", "error": None, "registers": {"distributor": ["inprocess"]},
        "hooks": ["any2ds_register_distributors"]}


def test_blocking_a_builtin_removes_its_names(monkeypatch):
    monkeypatch.setenv("ANY2DS_BLOCK_PLUGINS", "ray, spark")
    host = PluginHost.load()
    assert host.registries["distributor"].names() == ["inprocess", "multiprocessing"]
    states = {p["name"]: p["state"] for p in host.report()}
    assert states["ray"] == states["spark"] == "blocked" and states["http"] == "loaded"


def test_disabling_autoload_keeps_the_builtins(monkeypatch):
    everything = PluginHost.load().component_classes()
    monkeypatch.setenv("ANY2DS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert PluginHost.load().component_classes() == everything


@pytest.mark.parametrize("supported", [">=1,<2", "==1.*", "~=1.0"])
def test_plugin_supporting_this_hookspec_version_loads(supported):
    host = PluginHost.load([processor_plugin(_Versioned, ANY2DS_HOOKSPEC=supported)], entry_points=False)
    assert host.registries["processor"].names() == ["versioned"]


@pytest.mark.parametrize(("supported", "error"), [
    (">=2", r"supports any2ds hook specs '>=2', but this any2ds has hook spec version 1\.3"),
    ("<1", r"supports any2ds hook specs '<1'"),
    ("1.x", r"has an invalid ANY2DS_HOOKSPEC '1\.x': write a version specifier such as '>=1,<2'"),
])
def test_plugin_not_supporting_this_hookspec_version_is_refused(supported, error):
    with pytest.raises(PluginError, match=error):
        PluginHost.load([processor_plugin(_Versioned, ANY2DS_HOOKSPEC=supported)], entry_points=False)


def test_tolerant_loading_records_problems_and_keeps_the_rest():
    unknown_hook = types.SimpleNamespace(any2ds_register_widgets=hookimpl(lambda register: None))
    raising = types.SimpleNamespace(any2ds_register_processors=hookimpl(lambda register: 1 / 0))
    host = PluginHost(strict=False)
    host.register(unknown_hook, name="widgets")
    host.register(raising, name="raising")
    host.register(processor_plugin(_Versioned), name="fine")
    host.collect()
    errors = {record.name: record.error for record in host.records}
    assert errors == {
        "widgets": "plugin 'widgets' implements unknown hook 'any2ds_register_widgets' (did you mean "
                   "'any2ds_register_writers'?), which any2ds hook spec 1.3 does not define",
        "raising": "plugin 'raising': any2ds_register_processors raised ZeroDivisionError: division by zero",
        "fine": None}
    assert host.registries["processor"].names() == ["versioned"]


def test_local_plugin_from_the_docs_runs_in_worker_processes(tmp_path, http_server, capsys):
    plugin = tmp_path / "aspect.py"
    plugin.write_text(docs_example("# aspect.py"))
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(http_server.url(f"/allowed/{name}") for name, _w, _h in JPEG_SIZES))
    out = tmp_path / "out"
    assert main(["download", "--url_list", str(urls), "--output_folder", str(out), "--output_format", "parquet",
                 "--plugins", str(plugin), "--processors", "[image, aspect]", "--allow_private_networks", "true",
                 "--processes_count", "2", "--number_sample_per_shard", "4"]) == 0
    rows = pa.concat_tables([pq.read_table(path) for path in sorted(out.glob("0000?.parquet"))]).to_pylist()
    ratios = [row["aspect_ratio"] for row in sorted(rows, key=lambda row: row["key"])]
    assert ratios == [width / height for _name, width, height in JPEG_SIZES]
    assert main(["plugins", "--plugins", str(plugin)]) == 0
    assert f"{plugin}: {plugin}\n    processor: aspect\n    hooks: any2ds_register_processors" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "specs"), [
    (["--plugins", "a.py"], ["a.py"]),
    (["--plugins=a.py,pkg.mod"], ["a.py", "pkg.mod"]),
    (["--plugins", "[a.py, pkg.mod]"], ["a.py", "pkg.mod"]),
])
def test_plugins_flag_takes_one_path_a_comma_list_or_a_list(argv, specs):
    assert read_plugins(["--image_size", "9", *argv]) == (specs, ["--image_size", "9", "--plugins", json.dumps(specs)])


def test_plugins_key_of_a_config_file_is_read_ahead(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("plugins: [a.py]\n")
    specs, argv = read_plugins(["--config", str(config)])
    assert specs == ["a.py"] and argv[0] == "--config"
    assert yaml.safe_load(argv[1]) == {"plugins": ["a.py"]}  # the file's content: it is read once
    assert read_plugins(["--config", str(config), "--plugins", "b.py"])[0] == ["b.py"]


def test_trace_prints_loads_and_registrations(monkeypatch, capsys):
    monkeypatch.setenv("ANY2DS_TRACE_PLUGINS", "1")
    PluginHost.load()
    err = capsys.readouterr().err
    assert f"any2ds trace [pid {os.getpid()}]: loaded plugin 'http' from any2ds_plugins.http\n" in err
    assert f"any2ds trace [pid {os.getpid()}]: plugin 'http' registered fetcher 'http'\n" in err


def test_inprocess_distributor_turns_a_raising_shard_into_a_failure():
    shards = [Shard(shard_id, pa.table({"url": ["u"]})) for shard_id in range(3)]

    def task(shard):
        if shard.shard_id == 1:
            raise OSError("disk full")
        return shard.shard_id

    outcomes = list(InProcessDistributor(NoOptions()).run(shards, task, config=None))
    assert outcomes == [0, ShardFailure(1, "OSError: disk full"), 2]


def test_options_class_from_the_docs_parses_and_validates_at_startup(tmp_path, capsys):
    """The guide's Options example, as a one-off plugin: a typed flag, and a validator's complaint
    as the one-line startup error the guide quotes (renamed: the example package may be installed)."""
    plugin = tmp_path / "options_example.py"
    example = docs_example("import attrs\n").replace('name = "thumbnail"', 'name = "options_example"')
    plugin.write_text(f"from any2ds import hookimpl\n{example}\n\n"
                      "@hookimpl\ndef any2ds_register_processors(register):\n    register(Thumbnail)\n")
    base = ["download", "--url_list", str(tmp_path / "urls.txt"), "--output_folder", str(tmp_path / "out"),
            "--plugins", str(plugin), "--processors", "[image, options_example]"]
    assert main([*base, "--options_example.quality", "0"]) == 2
    assert capsys.readouterr().err == "any2ds: error: processor 'options_example': 'quality' must be >= 1: 0\n"
    assert main([*base, "--options_example.size", "large"]) == 2
    assert "options_example.size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
