"""Shared fixtures: a corpus of real images and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from PIL import Image

from any2ds.testing import serve_directory
from tests.venvs import Venv

REPO = Path(__file__).resolve().parent.parent

# (name, width, height): varied shapes for the resize-geometry tests.
JPEG_SIZES = [("123_456.jpg", 123, 456), ("456_123.jpg", 456, 123), ("300_500.jpg", 300, 500),
              ("500_300.jpg", 500, 300), ("1000_100.jpg", 1000, 100), ("64_64.jpg", 64, 64),
              ("800_600.jpg", 800, 600)]


def gradient(width: int, height: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """A smooth, non-trivial picture (so encoders and resizers have real work)."""
    y, x = np.mgrid[0:height, 0:width]
    peak = np.iinfo(dtype).max
    planes = [(x * peak // max(width - 1, 1)), (y * peak // max(height - 1, 1)),
              ((x + y) * peak // max(width + height - 2, 1))]
    return np.stack(planes[:channels], axis=-1).astype(dtype)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_image_corpus(root: Path) -> dict[str, tuple[int, int]]:
    """Write the test images into ``root``; return name -> (width, height) as displayed."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, w, h in JPEG_SIZES:
        (root / name).write_bytes(encode(Image.fromarray(gradient(w, h)), "JPEG", quality=90))
        sizes[name] = (w, h)
    rgba = gradient(200, 100, 3)
    alpha = np.full((100, 200, 1), 255, np.uint8)
    alpha[:, :100] = 0  # left half fully transparent
    (root / "alpha.png").write_bytes(encode(Image.fromarray(np.concatenate([rgba, alpha], -1), "RGBA"), "PNG"))
    sizes["alpha.png"] = (200, 100)
    (root / "gray16.png").write_bytes(encode(Image.fromarray(np.full((50, 80), 40000, np.uint16)), "PNG"))
    sizes["gray16.png"] = (80, 50)
    (root / "gray.jpg").write_bytes(encode(Image.fromarray(gradient(90, 60, 1)[..., 0], "L"), "JPEG"))
    sizes["gray.jpg"] = (90, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    (root / "rotated.jpg").write_bytes(encode(Image.fromarray(gradient(160, 90)), "JPEG", exif=exif))
    sizes["rotated.jpg"] = (90, 160)
    (root / "image.webp").write_bytes(encode(Image.fromarray(gradient(120, 80)), "WEBP"))
    sizes["image.webp"] = (120, 80)
    (root / "not_an_image.jpg").write_bytes(b"<html><body>this is not an image</body></html>")
    return sizes


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_image_corpus(root)
    return root


@pytest.fixture(scope="session")
def image_sizes(image_dir) -> dict[str, tuple[int, int]]:
    return make_image_corpus(image_dir)


@pytest.fixture(scope="session")
def http_server(image_dir):
    with serve_directory(image_dir) as server:
        yield server


# --- a virtual environment as a user makes one ----------------------------------


@pytest.fixture(scope="session")
def installed_venv(tmp_path_factory) -> Venv:
    """A venv in which any2ds (with its own ``bin/any2ds``) and the example third-party plugin
    (docs/examples/any2ds-thumbnail) are pip-installed: a driver with a plugin workers may lack."""
    root = tmp_path_factory.mktemp("installed")
    example = shutil.copytree(REPO / "docs" / "examples" / "any2ds-thumbnail", root / "any2ds-thumbnail")
    return Venv.with_any2ds(root / "venv", example)


# --- rows for any2ds.Pipeline, and their download() ---------------------------------


@pytest.fixture(scope="session")
def pipeline_rows(http_server):
    from tests.library_rows import make_rows

    return make_rows(http_server)


@pytest.fixture(scope="session")
def pipeline_rows_downloaded(pipeline_rows, tmp_path_factory):
    """What download() stores for ``pipeline_rows``: (metadata row, {stream: bytes}) per row."""
    from tests.library_rows import download_rows

    return download_rows(pipeline_rows, tmp_path_factory.mktemp("download"))


# --- engines' worker processes --------------------------------------------------


@pytest.fixture(scope="module")
def workers_import_tests():
    """Worker processes that Spark and Ray start inherit this environment: with the repository on
    their PYTHONPATH they import ``tests`` and this checkout's ``any2ds``."""
    repo = str(Path(__file__).resolve().parent.parent)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([repo, *([before] if before else [])])
    yield
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


# --- S3, through a loopback moto server --------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    # Where moto_recording's server-side log goes (read when moto is imported; else the current folder).
    os.environ.setdefault("MOTO_RECORDER_FILEPATH", str(tmp_path_factory.mktemp("moto") / "recording"))
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@contextlib.contextmanager
def moto_recording(endpoint: str) -> Iterator[list[tuple[str, str]]]:
    """The requests the loopback S3 server receives meanwhile, from every process, as (method, URL):
    moto's recorder, filled when the block ends."""
    def call(action: str) -> bytes:
        method = "GET" if action == "download-recording" else "POST"
        request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method=method)
        with urllib.request.urlopen(request) as response:
            return response.read()

    requests: list[tuple[str, str]] = []
    call("reset-recording")
    call("start-recording")
    try:
        yield requests
    finally:
        call("stop-recording")
        requests.extend((r["method"], r["url"]) for r in _json_values(call("download-recording").decode()))


NOT_SPACE = re.compile(r"\S")


def _json_values(text: str) -> Iterator[Any]:
    """Each JSON value of ``text``: moto writes one per line, but concurrent requests (fsspec's
    batched uploads) can leave two on one line."""
    decoder, index = json.JSONDecoder(), 0
    while start := NOT_SPACE.search(text, index):
        value, index = decoder.raw_decode(text, start.start())
        yield value


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the loopback server; fsspec's s3 config points there."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": s3_endpoint}})
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", s3_endpoint)  # for spawned worker processes
    bucket = f"any2ds-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3")
    fs.mkdir(bucket)
    return fs, bucket


@pytest.fixture
def s3_storage(s3_endpoint, monkeypatch):
    """A fresh bucket on the loopback server, reached only through ``storage_options`` (no AWS_* or
    FSSPEC_* variable, no fsspec config): ``(storage_options, fs, bucket)``."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "FSSPEC_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    options = {"s3": {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}}
    fs = fsspec.filesystem("s3", **options["s3"])
    bucket = f"any2ds-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return options, fs, bucket
