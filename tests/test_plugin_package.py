"""The example third-party plugin package (docs/examples/any2ds-thumbnail: a `thumbnail` processor
and a `zip` output format), pip-installed into a fresh virtual environment and used from the
outside: CLI flags, YAML, worker processes, local Spark, ``any2ds plugins``, the environment
switches, and the example's own tests."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from any2ds.testing import serve_directory
from tests.venvs import Venv

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "any2ds-thumbnail"
PICTURES = {"wide.jpg": (400, 300), "tall.jpg": (150, 300), "square.png": (200, 200), "small.jpg": (64, 48)}
HEX64 = re.compile(r"[0-9a-f]{16}")
# any2ds.testing.read_dataset, run where the plugin is installed: it reads the zip shards back
# through the plugin's own writer.
READ_BACK = """
import json, sys
from any2ds.testing import read_dataset
dataset = read_dataset(sys.argv[1])
print(json.dumps({"rows": [{name: row.get(name) for name in ("key", "status", "dhash")} for row in dataset.rows],
                  "files": {key: sorted(files) for key, files in dataset.samples.items()}}))
"""


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
def url_list(tmp_path_factory) -> Path:
    """Four pictures of random colour blocks (each hashes differently) and a file that is not one."""
    folder = tmp_path_factory.mktemp("pictures")
    for seed, (name, (width, height)) in enumerate(PICTURES.items()):
        cells = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(cells).resize((width, height), Image.Resampling.NEAREST).save(folder / name)
    (folder / "not_an_image.jpg").write_bytes(b"<html><body>this is not an image</body></html>")
    with serve_directory(folder) as server:
        path = folder / "urls.txt"
        path.write_text("\n".join(server.url(f"/allowed/{name}") for name in [*PICTURES, "not_an_image.jpg"]))
        yield path


def download_flags(url_list: Path, out: Path) -> list[str]:
    return ["--url_list", str(url_list), "--output_folder", str(out), "--allow_private_networks", "true"]


def check_zip_output(venv: Venv, out: Path, thumbnail_side: int) -> None:
    """Every row once; each success's files in its shard's zip, read back by the plugin's writer too."""
    rows = [row for path in sorted(out.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert sorted(row["status"] for row in rows) == ["failed_to_resize", *["success"] * len(PICTURES)]
    in_zips = {}
    for path in sorted(out.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
            in_zips.update({name: archive.read(name) for name in archive.namelist()})
    successes = [row for row in rows if row["status"] == "success"]
    assert sorted(in_zips) == sorted(f"{row['key']}.{ext}" for row in successes for ext in ("jpg", "json", "thumb.jpg"))
    for row in successes:
        picture_side = max(PICTURES[row["url"].rsplit("/", 1)[1]])
        thumbnail = Image.open(io.BytesIO(in_zips[f"{row['key']}.thumb.jpg"]))
        assert max(thumbnail.size) == min(thumbnail_side, picture_side)  # a smaller picture is not enlarged
        assert HEX64.fullmatch(row["dhash"]) and json.loads(in_zips[f"{row['key']}.json"])["dhash"] == row["dhash"]
    assert len({row["dhash"] for row in successes}) == len(PICTURES)
    read_back = venv.run("-c", READ_BACK, str(out))
    assert read_back.returncode == 0, read_back.stderr
    dataset = json.loads(read_back.stdout)
    assert dataset["rows"] == sorted(({name: row[name] for name in ("key", "status", "dhash")} for row in rows),
                                     key=lambda row: row["key"])  # read_dataset's rows are in key order
    assert dataset["files"] == {row["key"]: ["jpg", "json", "thumb.jpg"] for row in successes}


def test_cli_zip_output_from_two_worker_processes(venv, url_list, tmp_path):
    out = tmp_path / "out"
    result = venv.any2ds("download", *download_flags(url_list, out), "--output_format", "zip",
                         "--processors", "[image, thumbnail]", "--thumbnail.size", "32",
                         "--processes_count", "2", "--number_sample_per_shard", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.zip")) == ["00000.zip", "00001.zip", "00002.zip"]
    check_zip_output(venv, out, thumbnail_side=32)


def test_yaml_config_selects_the_plugin_and_its_options(venv, url_list, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(f"url_list: {url_list}\noutput_folder: {out}\noutput_format: parquet\n"
                      "allow_private_networks: true\nprocessors: [image, thumbnail]\n"
                      "thumbnail:\n  size: 48\n  quality: 60\n")
    result = venv.any2ds("download", "--config", str(config))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "00000.parquet").to_pylist()
    successes = [row for row in rows if row["status"] == "success"]
    thumbnails = [Image.open(io.BytesIO(row["thumbnail"])) for row in successes]  # the stream's column
    assert len(thumbnails) == len(PICTURES) and {max(t.size) for t in thumbnails} == {48}
    assert all(HEX64.fullmatch(row["dhash"]) for row in successes)


def test_local_spark_runs_the_installed_plugin(venv, url_list, tmp_path):
    """any2ds starts local Spark itself: its Python workers must be this venv's interpreter, which
    has the plugin (python3 on PATH has not)."""
    pytest.importorskip("pyspark")
    out = tmp_path / "out"
    result = venv.any2ds("download", *download_flags(url_list, out), "--distributor", "pyspark",
                         "--output_format", "zip", "--processors", "[image, thumbnail]",
                         "--processes_count", "2", "--number_sample_per_shard", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.zip")) == ["00000.zip", "00001.zip"]
    check_zip_output(venv, out, thumbnail_side=128)


def test_plugins_command_lists_the_package(venv):
    text = venv.any2ds("plugins")
    assert text.returncode == 0, text.stderr
    assert ("thumbnail: any2ds-thumbnail 0.1.0 (any2ds_thumbnail)\n    processor: thumbnail\n    writer: zip\n"
            "    hooks: any2ds_register_processors, any2ds_register_writers\n") in text.stdout
    listed = {p["name"]: p for p in json.loads(venv.any2ds("plugins", "--json").stdout)}
    assert listed["thumbnail"] == {
        "name": "thumbnail", "source": "any2ds_thumbnail", "distribution": "any2ds-thumbnail", "version": "0.1.0",
        "state": "loaded", "error": None, "registers": {"processor": ["thumbnail"], "writer": ["zip"]},
        "hooks": ["any2ds_register_processors", "any2ds_register_writers"]}
    assert listed["image"]["distribution"] == "any2ds" and listed["image"]["registers"] == {"processor": ["image"]}
    help_text = venv.any2ds("download", "--help").stdout
    assert "--thumbnail.size" in help_text and "--thumbnail.quality" in help_text


def test_a_bad_option_stops_the_run_at_startup_on_one_line(venv, url_list, tmp_path):
    result = venv.any2ds("download", *download_flags(url_list, tmp_path / "out"), "--processors", "[image, thumbnail]",
                         "--thumbnail.quality", "0")
    assert result.returncode == 2
    assert result.stderr == "any2ds: error: processor 'thumbnail': 'quality' must be >= 1: 0\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("variable", "value", "state"), [("ANY2DS_DISABLE_PLUGIN_AUTOLOAD", "1", "autoload disabled"),
                                                         ("ANY2DS_BLOCK_PLUGINS", "thumbnail", "blocked")])
@pytest.mark.parametrize(("flag", "value_used", "message"), [
    ("--processors", "[image, thumbnail]", "processors: unknown processor 'thumbnail'; available: "),
    ("--output_format", "zip", "output_format: unknown writer 'zip'; available: ")])
def test_environment_switches_leave_the_package_out(venv, url_list, tmp_path, variable, value, state,
                                                    flag, value_used, message):
    env = {variable: value}
    listed = {p["name"]: p for p in json.loads(venv.any2ds("plugins", "--json", env=env).stdout)}
    assert listed["thumbnail"]["state"] == state and listed["image"]["state"] == "loaded"
    result = venv.any2ds("download", *download_flags(url_list, tmp_path / "out"), flag, value_used, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"any2ds: error: {message}")
    assert result.stderr.count("\n") == 1


def test_the_example_passes_its_own_tests(venv, example):
    result = venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout


def test_nothing_in_the_core_names_the_example():
    sources = [*(REPO / "any2ds").rglob("*.py"), *(REPO / "plugins").rglob("*.py"), REPO / "pyproject.toml"]
    assert not [p for p in sources if re.search(r"any2ds[-_]thumbnail", p.read_text())]
