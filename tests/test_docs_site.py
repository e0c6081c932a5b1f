"""The documentation site (mkdocs.yml, docs/): it builds with ``mkdocs build --strict``, its
option reference documents every option of the core and the built-in plugins, and the commands
and code of the pages that say so run as written against a real download."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import any2ds
from any2ds import cli, docs
from any2ds.config import CoreOptions, field_default
from any2ds.manager import PluginHost
from any2ds.options import OptionSchema
from any2ds.testing import read_dataset, serve_directory

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PICTURES = ROOT / "dataset_examples" / "local_demo" / "images"
# Pages whose ```bash and ```python blocks all run, in order, in one folder holding urls.csv.
RUNNABLE_PAGES = ("formats.md", "resuming.md")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Loopback URLs are refused by default; the test's server is on 127.0.0.1.
LOOPBACK_OPTIONS = ["--allow_private_networks", "true"]


def build_site(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2.0
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, env=env, timeout=240)


# -- the build ---------------------------------------------------------------


def test_the_site_builds_strictly_with_every_page_and_the_mounted_examples(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    result = build_site(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr
    options_page = (site / "options" / "index.html").read_text()
    for title, specs in docs.documented_options():
        assert all(f'id="{spec.key}"' in options_page for spec in specs), title
    # dataset_examples/ lives outside docs/: the site serves it, and the links into it resolve.
    assert (site / "dataset_examples" / "audio" / "index.html").is_file()
    assert (site / "dataset_examples" / "mscoco.yaml").is_file()
    assert 'href="../dataset_examples/audio/"' in (site / "audio" / "index.html").read_text()
    assert 'href="../../audio/"' in (site / "dataset_examples" / "audio" / "index.html").read_text()
    # Material's default loads Google Fonts at view time; the site must read offline.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_the_build_fails_when_an_option_is_undocumented(tmp_path):
    pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]'")
    copy = tmp_path / "repository"
    for folder in ("docs", "dataset_examples"):
        shutil.copytree(ROOT / folder, copy / folder)
    shutil.copy(ROOT / "mkdocs.yml", copy)
    options_page = copy / "docs" / "options.md"
    text = options_page.read_text()
    options_page.write_text("\n".join(line for line in text.splitlines() if 'id="http.timeout"' not in line))
    result = build_site(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "generated documentation out of date in docs/options.md: run python -m any2ds.docs" in result.stderr


# -- the option reference ------------------------------------------------------


def test_the_option_reference_is_up_to_date():
    assert docs.stale([DOCS / "options.md"]) == {}, "run: python -m any2ds.docs"


def test_every_option_of_the_core_and_the_builtin_plugins_is_documented_with_its_flags():
    host = PluginHost.load()
    schema = OptionSchema(host)
    builtin = {schema.namespaces[(r.cls.kind, r.cls.name)] for r in host.component_classes()
               if host.is_builtin(r.plugin) and (r.cls.kind, r.cls.name) in schema.namespaces}
    rows = {match[1]: match[0] for match in re.finditer(r'^\| <a id="([^"]+)"></a>.*$', (DOCS / "options.md").read_text(),
                                                        re.MULTILINE)}
    expected = [spec for spec in schema.specs if spec.namespace is None or spec.namespace in builtin]
    assert len(expected) > 60 and sorted(rows) == sorted(spec.key for spec in expected)
    for spec in expected:
        row = rows[spec.key]
        assert f"`--{spec.key}`" in row and (spec.flat is None or f"`--{spec.flat}`" in row), row
        assert docs._cell(spec.field.metadata["help"]) in row


def test_the_reference_renders_types_defaults_and_third_party_options_stay_out():
    reference = docs.option_reference()
    assert ('| <a id="image.resize_mode"></a>`--image.resize_mode`<br>`--resize_mode` | `no`, `keep_ratio`, '
            '`keep_ratio_largest`, `center_crop` or `border` | `border` |') in reference
    assert '| <a id="caption_col"></a>`--caption_col` | `str` or null | `null` |' in reference
    in_flight = field_default(attrs.fields_dict(CoreOptions)["max_bytes_in_flight"])
    assert f"| `int` | `{in_flight}` ({docs._binary_size(in_flight)}) |" in reference
    assert "| `float` | `.inf` |" in reference
    # A flat name two fetchers share is listed with both, each row naming the other.
    assert ('<a id="http.timeout"></a>`--http.timeout`<br>`--timeout` (also sets [`fast_http.timeout`]'
            '(#fast_http.timeout))') in reference
    assert ('<a id="fast_http.timeout"></a>`--fast_http.timeout`<br>`--timeout` (also sets [`http.timeout`]'
            '(#http.timeout))') in reference
    assert "`--image_size` (also" not in reference
    assert "&lt;output_folder>/&lt;name>.lance" in reference  # no raw HTML tag in a cell

    host = PluginHost.load(plugins=[SharpenPlugin()])
    assert "sharpen.amount" in {spec.key for spec in OptionSchema(host).specs}
    assert "sharpen" not in docs.option_reference(host)


@attrs.frozen
class SharpenOptions:
    amount: float = any2ds.option(1.0, "How much to sharpen.")


class Sharpen(any2ds.Processor):
    """A third-party processor with an option."""

    name = "sharpen"
    Options = SharpenOptions

    def process(self, fetched, result):
        pass


class SharpenPlugin:
    @any2ds.hookimpl
    def any2ds_register_processors(self, register):
        register(Sharpen)


def test_one_file_may_hold_both_generated_sections_and_a_file_with_none_is_refused(tmp_path):
    page = tmp_path / "reference.md"
    page.write_text(f"{docs.HOOKS.begin}\n{docs.HOOKS.end}\nbetween\n{docs.OPTIONS.begin}\nold\n{docs.OPTIONS.end}\n")
    assert docs.main([str(page)]) == 0
    assert page.read_text() == (f"{docs.HOOKS.begin}\n\n{docs.hook_reference()}\n\n{docs.HOOKS.end}\nbetween\n"
                                f"{docs.OPTIONS.begin}\n\n{docs.option_reference()}\n\n{docs.OPTIONS.end}\n")
    (tmp_path / "plain.md").write_text("# No generated section\n")
    with pytest.raises(ValueError, match="no generated section"):
        docs.main([str(tmp_path / "plain.md")])


# -- the pages' code, run as written -------------------------------------------


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """The ```bash and ```python blocks of ``page``, in order."""
    return [(match[1], match[2]) for match in _FENCE.finditer(page.read_text()) if match[1] in ("bash", "python")]


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block, continuation lines joined."""
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture
def url_list(tmp_path):
    """urls.csv in ``tmp_path``: the 24 bundled pictures served on 127.0.0.1, a dead link, and
    a port nothing listens on (a connection error: the kind of failure worth retrying)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with serve_directory(PICTURES) as server:
        rows = [f"{server.url('/allowed/' + path.name)},a picture called {path.stem}"
                for path in sorted(PICTURES.iterdir())]
        rows += [f"{server.url('/allowed/missing.jpg')},a dead link",
                 f"http://127.0.0.1:{closed_port}/refused.jpg,a host that refuses connections"]
        (tmp_path / "urls.csv").write_text("url,caption\n" + "\n".join(rows) + "\n")
        yield tmp_path


def run_page(page: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run every command and snippet of ``page`` in ``folder``; return each snippet's output.

    Downloads run in this process (the CLI's entry point, shards in process: the same run
    without a worker's start-up); snippets run in a fresh interpreter each, as a user runs them.
    """
    monkeypatch.chdir(folder)
    env = {**os.environ, "HF_HOME": str(folder / "huggingface"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    outputs = []
    for language, code in code_blocks(DOCS / page):
        if language == "bash":
            for command in commands(code):
                assert command[:2] == ["any2ds", "download"], f"{page}: only any2ds download runs here: {command}"
                assert cli.main([*command[1:], *LOOPBACK_OPTIONS, "--distributor", "inprocess"]) == 0, command
        else:
            result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, f"{page}:\n{code}\n{result.stderr}"
            outputs.append(result.stdout)
    return outputs


def test_the_formats_page_loads_each_format_with_each_library(url_list, monkeypatch):
    for module in ("webdataset", "datasets", "duckdb", "tensorflow", "lance"):
        pytest.importorskip(module, reason="the docs, tfrecord and lance extras")
    outputs = run_page("formats.md", url_list, monkeypatch)
    assert len(outputs) == len(code_blocks(DOCS / "formats.md")) - 5  # five downloads
    for output in outputs:  # every snippet reads the 24 stored pictures
        assert re.search(r"\b24\b", output), output


def test_the_resuming_page_runs_as_written(url_list, monkeypatch):
    pytest.importorskip("duckdb", reason="the docs extra: pip install -e '.[docs]'")
    *_, retried = run_page("resuming.md", url_list, monkeypatch)
    refused = [row["key"] for row in read_dataset(url_list / "out").rows if "refused" in row["url"]]
    assert len(refused) == 1 and refused[0] in retried and "connect" in retried, retried
