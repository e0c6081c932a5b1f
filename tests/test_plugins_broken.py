"""Broken third-party plugins, each a real package pip-installed into one venv: every kind of
breakage stops ``download`` with one line naming the plugin and its distribution, while
``any2ds plugins`` and the switches that turn plugins off keep working (llm#1280)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from any2ds.hookspecs import HOOKSPEC_VERSION
from tests.venvs import Venv

# entry-point name -> (module source, what the error line says after naming the plugin)
BROKEN = {
    "fails_import": ("import a_module_nobody_installed\n",
                     ("failed to import any2ds_fails_import: ModuleNotFoundError: No module named "
                      "'a_module_nobody_installed'")),
    "unknown_hook": ("from any2ds import hookimpl\n\n@hookimpl\ndef any2ds_register_processor(register):\n    pass\n",
                     ("implements unknown hook 'any2ds_register_processor' (did you mean "
                      f"'any2ds_register_processors'?), which any2ds hook spec {HOOKSPEC_VERSION} does not define")),
    "duplicate": (("from any2ds import Processor, hookimpl\n\nclass Image(Processor):\n    name = 'image'\n\n"
                   "@hookimpl\ndef any2ds_register_processors(register):\n    register(Image)\n"),
                  None),  # the duplicate error names the built-in first, then this plugin
    "not_component": (("from any2ds import hookimpl\n\n@hookimpl\ndef any2ds_register_writers(register):\n"
                       "    register(dict)\n"),
                      "registered <class 'dict'> as a writer, but it does not derive from any2ds.Writer"),
    "future": ("ANY2DS_HOOKSPEC = '>=2'\n",
               (f"supports any2ds hook specs '>=2', but this any2ds has hook spec version {HOOKSPEC_VERSION}; "
                "install a version of the plugin made for it")),
}


def distribution(name: str) -> str:
    return "any2ds-" + name.replace("_", "-")


def label(name: str) -> str:
    return f"plugin {name!r} (distribution {distribution(name)} 0.1.0)"


def expected_error(name: str) -> str:
    detail = BROKEN[name][1]
    message = (f"duplicate processor name 'image': registered by plugin 'image' and by {label(name)}"
               if detail is None else f"{label(name)} {detail}")
    return f"any2ds: error: {message}; uninstall it or set ANY2DS_BLOCK_PLUGINS={name}\n"


def make_package(root: Path, name: str, source: str) -> Path:
    module = "any2ds_" + name
    project = root / distribution(name)
    project.mkdir()
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{distribution(name)}"
        version = "0.1.0"

        [project.entry-points.any2ds]
        {name} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (project / f"{module}.py").write_text(source)
    return project


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    root = tmp_path_factory.mktemp("broken")
    venv = Venv.create(root / "venv")
    venv.install(*(make_package(root, name, source) for name, (source, _detail) in BROKEN.items()))
    return venv


def block_all_but(name: str | None) -> dict[str, str]:
    return {"ANY2DS_BLOCK_PLUGINS": ",".join(other for other in BROKEN if other != name)}


@pytest.mark.parametrize("name", BROKEN)
def test_download_fails_with_one_line_naming_the_plugin_and_its_distribution(venv, name):
    result = venv.any2ds("download", "--url_list", "urls.txt", env=block_all_but(name))
    assert result.returncode == 2
    assert result.stderr == expected_error(name)


def test_plugins_command_lists_every_broken_plugin_with_its_error(venv):
    result = venv.any2ds("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    for name in BROKEN:
        assert listed[name]["state"] == "broken"
        assert listed[name]["distribution"] == distribution(name)
        assert expected_error(name).startswith(f"any2ds: error: {listed[name]['error']};")
    assert listed["image"]["state"] == "loaded" and listed["image"]["registers"] == {"processor": ["image"]}
    text = venv.any2ds("plugins")
    assert text.returncode == 0
    assert f"fails_import: any2ds-fails-import 0.1.0 (any2ds_fails_import) [broken]\n    error: {label('fails_import')}" \
        in text.stdout


@pytest.mark.parametrize("env", [block_all_but(None), {"ANY2DS_DISABLE_PLUGIN_AUTOLOAD": "1"}],
                         ids=["blocked", "autoload disabled"])
def test_switching_the_broken_plugins_off_lets_download_start(venv, env):
    result = venv.any2ds("download", "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert "--image_size" in result.stdout
