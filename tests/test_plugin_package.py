"""The example third-party plugin (docs/examples/any2ds-thumbnail), pip-installed into a fresh
virtual environment and used from the outside: CLI flags, YAML, ``any2ds plugins``, the
environment switches, and the example's own tests."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from tests.venvs import Venv

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "any2ds-thumbnail"
PICTURES = ["123_456.jpg", "456_123.jpg", "800_600.jpg", "64_64.jpg"]
HEX64 = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """A copy of the example package: pip builds in the source tree, which must stay clean."""
    return shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("example") / "any2ds-thumbnail")


@pytest.fixture(scope="module")
def venv(tmp_path_factory, example) -> Venv:
    venv = Venv.create(tmp_path_factory.mktemp("thumbnail") / "venv")
    venv.install(example)
    return venv


@pytest.fixture(scope="module")
def url_list(tmp_path_factory, http_server) -> Path:
    path = tmp_path_factory.mktemp("input") / "urls.txt"
    path.write_text("\n".join(http_server.url(f"/allowed/{name}") for name in [*PICTURES, "not_an_image.jpg"]))
    return path


def download_flags(url_list: Path, out: Path) -> list[str]:
    return ["--url_list", str(url_list), "--output_folder", str(out), "--allow_private_networks", "true"]


def test_cli_download_in_worker_processes_stores_thumbnails_and_hashes(venv, url_list, tmp_path):
    out = tmp_path / "out"
    result = venv.any2ds("download", *download_flags(url_list, out), "--output_format", "webdataset",
                         "--processors", "[image, thumbnail]", "--thumbnail.size", "32",
                         "--processes_count", "2", "--number_sample_per_shard", "2")
    assert result.returncode == 0, result.stderr
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
    assert len(samples) == len(PICTURES)
    hashes = set()
    for sample in samples:
        assert max(Image.open(io.BytesIO(sample["thumb.jpg"])).size) == 32
        record = json.loads(sample["json"])
        assert HEX64.fullmatch(record["dhash"])
        hashes.add(record["dhash"])
    assert len(hashes) == len(PICTURES)
    rows = [row for path in sorted(out.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert sorted(r["dhash"] for r in rows if r["dhash"]) == sorted(hashes)
    assert [r["status"] for r in rows if not r["dhash"]] == ["failed_to_resize"]


def test_yaml_config_selects_the_plugin_and_its_options(venv, url_list, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(f"url_list: {url_list}\noutput_folder: {out}\noutput_format: parquet\n"
                      "allow_private_networks: true\nprocessors: [image, thumbnail]\nthumbnail:\n  size: 48\n")
    result = venv.any2ds("download", "--config", str(config))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "00000.parquet").to_pylist()
    thumbnails = [Image.open(io.BytesIO(r["thumbnail"])) for r in rows if r["status"] == "success"]
    assert len(thumbnails) == len(PICTURES) and {max(t.size) for t in thumbnails} == {48}


def test_plugins_command_lists_the_package(venv):
    text = venv.any2ds("plugins")
    assert text.returncode == 0, text.stderr
    assert ("thumbnail: any2ds-thumbnail 0.1.0 (any2ds_thumbnail)\n    processor: thumbnail\n"
            "    hooks: any2ds_register_processors\n") in text.stdout
    listed = {p["name"]: p for p in json.loads(venv.any2ds("plugins", "--json").stdout)}
    assert listed["thumbnail"] == {
        "name": "thumbnail", "source": "any2ds_thumbnail", "distribution": "any2ds-thumbnail", "version": "0.1.0",
        "state": "loaded", "error": None, "registers": {"processor": ["thumbnail"]},
        "hooks": ["any2ds_register_processors"]}
    assert listed["image"]["distribution"] == "any2ds" and listed["image"]["registers"] == {"processor": ["image"]}
    assert "--thumbnail.size" in venv.any2ds("download", "--help").stdout


@pytest.mark.parametrize(("variable", "value", "state"), [("ANY2DS_DISABLE_PLUGIN_AUTOLOAD", "1", "autoload disabled"),
                                                         ("ANY2DS_BLOCK_PLUGINS", "thumbnail", "blocked")])
def test_environment_switches_leave_the_package_out(venv, url_list, tmp_path, variable, value, state):
    env = {variable: value}
    listed = {p["name"]: p for p in json.loads(venv.any2ds("plugins", "--json", env=env).stdout)}
    assert listed["thumbnail"]["state"] == state and listed["image"]["state"] == "loaded"
    result = venv.any2ds("download", *download_flags(url_list, tmp_path / "out"),
                         "--processors", "[image, thumbnail]", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("any2ds: error: processors: unknown processor 'thumbnail'; available: ")
    assert result.stderr.count("\n") == 1


def test_the_example_passes_its_own_tests(venv, example):
    result = venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_nothing_in_the_core_names_the_example():
    sources = [*(REPO / "any2ds").rglob("*.py"), *(REPO / "plugins").rglob("*.py"), REPO / "pyproject.toml"]
    assert not [p for p in sources if re.search(r"any2ds[-_]thumbnail", p.read_text())]
