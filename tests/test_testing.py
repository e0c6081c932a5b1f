"""any2ds.testing, the helpers for plugin authors: used as a plugin's tests would use them."""

from __future__ import annotations

import io
import types
import urllib.error
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from any2ds import Media, Processor, hookimpl
from any2ds.errors import PluginError
from any2ds.manager import PluginHost
from any2ds.testing import download_in_process, read_dataset, registered_plugin, serve_directory

PICTURES = ["123_456.jpg", "64_64.jpg", "missing.jpg"]


class _Gray(Processor):
    """Stores a grayscale copy of the fetched picture and its mean brightness."""

    name = "gray"

    def media_streams(self):
        return ("gray",)

    def metadata_fields(self):
        return [pa.field("brightness", pa.float64())]

    def process(self, fetched, result):
        image = Image.open(io.BytesIO(fetched.body)).convert("L")
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        result.media["gray"] = Media(encoded.getvalue(), "gray.png")
        result.metadata["brightness"] = float(np.asarray(image).mean())


class GrayPlugin:
    @hookimpl
    def any2ds_register_processors(self, register):
        register(_Gray)


def test_registered_plugin_reaches_the_hosts_built_inside_the_block_only():
    with registered_plugin(GrayPlugin(), name="gray-plugin"):
        assert "gray" in PluginHost.load().registries["processor"].names()
        with (pytest.raises(ValueError, match="a plugin named 'gray-plugin' is already registered"),
              registered_plugin(GrayPlugin(), name="gray-plugin")):
            pass
    assert "gray" not in PluginHost.load().registries["processor"].names()


def test_a_registered_plugin_taking_an_installed_plugins_name_is_an_error():
    with (registered_plugin(types.SimpleNamespace(), name="http"),
          pytest.raises(PluginError, match="plugin 'http' has the same name as plugin 'http'")):
        PluginHost.load()


@pytest.fixture
def url_list(tmp_path, http_server):
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(http_server.url(f"/allowed/{name}") for name in PICTURES))
    return path


@pytest.mark.parametrize("output_format", ["webdataset", "files"])
def test_download_in_process_runs_an_in_memory_plugin_and_read_dataset_reads_it_back(
        tmp_path, url_list, output_format):
    out = tmp_path / "out"
    summary = download_in_process(GrayPlugin(), url_list=str(url_list), output_folder=str(out),
                                  output_format=output_format, processors=["gray"], number_sample_per_shard=2,
                                  allow_private_networks=True)
    assert summary["successes"] == 2 and summary["config"]["distributor"] == "inprocess"
    dataset = read_dataset(out)
    assert [row["status"] for row in dataset.rows] == ["success", "success", "failed_to_download"]
    assert dataset.summary == summary
    assert sorted(dataset.samples) == [dataset.rows[0]["key"], dataset.rows[1]["key"]]
    for row in dataset.rows[:2]:
        files = dataset.samples[row["key"]]
        assert sorted(files) == ["gray.png", "json"]
        gray = Image.open(io.BytesIO(files["gray.png"]))
        assert gray.mode == "L" and float(np.asarray(gray).mean()) == row["brightness"]
    assert "gray" not in PluginHost.load().registries["processor"].names()


def test_read_dataset_of_a_parquet_output_splits_media_from_rows(tmp_path, url_list):
    download_in_process(GrayPlugin(), url_list=str(url_list), output_folder=str(tmp_path / "out"),
                        output_format="parquet", processors=["gray"], allow_private_networks=True)
    dataset = read_dataset(tmp_path / "out")
    assert len(dataset.rows) == 3 and all("gray" not in row for row in dataset.rows)
    ok = [row["key"] for row in dataset.rows if row["status"] == "success"]
    assert sorted(dataset.samples) == ok
    assert [Image.open(io.BytesIO(dataset.samples[key]["gray"])).mode for key in ok] == ["L"] * 2


def test_serve_directory_serves_files_with_and_without_an_opt_out(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello")
    with serve_directory(tmp_path) as server:
        with urllib.request.urlopen(server.url("/allowed/a.txt")) as response:
            assert response.read() == b"hello" and response.headers["Content-Type"] == "text/plain"
        with urllib.request.urlopen(server.url("/disallowed/a.txt")) as response:
            assert "noai" in response.headers["X-Robots-Tag"]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(server.url("/allowed/../a.txt"))
        assert [path for path, _headers in server.requests] == ["/allowed/a.txt", "/disallowed/a.txt",
                                                                "/allowed/../a.txt"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url("/allowed/a.txt"), timeout=5)
