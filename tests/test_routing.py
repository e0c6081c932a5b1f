"""A mixed list of images, audio and other files, routed by type; and an async fetcher on the
worker's event loop, end to end against a loopback server."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile
from PIL import Image

from any2ds import FetchError, Fetcher, FetchResult, hookimpl
from any2ds.testing import download_in_process, read_dataset, send_bytes, serve_directory


def picture(fmt: str, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size[::-1], 3), np.uint8)).save(out, format=fmt)
    return out.getvalue()


def sound(fmt: str, rate: int = 22050, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)
    soundfile.write(out, tone, rate, format=fmt, subtype=subtype)
    return out.getvalue()


MIXED = {
    "photo.jpg": (picture("JPEG"), "image"),
    "logo.png": (picture("PNG"), "image"),
    "tone.wav": (sound("WAV"), "audio"),
    "tone.flac": (sound("FLAC"), "audio"),
    "voice.ogg": (sound("OGG", subtype="VORBIS"), "audio"),
    "paper.pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", "file"),
    "notes.txt": (b"plain text notes\n", "file"),
    "data.npy": (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }\n", "file"),
}
STREAM = {"image": "jpg", "audio": "flac", "file": "file"}


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for name, (data, _processor) in MIXED.items():
        (root / name).write_bytes(data)
    with serve_directory(root) as server:
        yield server


@pytest.mark.parametrize("output_format", ["webdataset", "files", "parquet", "tfrecord"])
def test_a_mixed_list_is_routed_by_type(tmp_path, mixed_server, output_format):
    if output_format == "tfrecord":
        pytest.importorskip("tensorflow")
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(mixed_server.url(f"/allowed/{name}") + "\n" for name in MIXED))
    summary = download_in_process(url_list=str(urls), output_folder=str(tmp_path / "out"), routing="by_type",
                                  output_format=output_format, image_size=32, audio_sample_rate=16000,
                                  thread_count=4, allow_private_networks=True)
    assert summary["successes"] == len(MIXED)
    dataset = read_dataset(tmp_path / "out")
    by_name = {row["url"].rsplit("/", 1)[1]: row for row in dataset.rows}
    for name, (data, processor) in MIXED.items():
        row = by_name[name]
        assert (row["status"], row["processor"]) == ("success", processor), name
        files = dataset.samples[row["key"]]
        stored = files.get(STREAM[processor]) or files[{"file": name.rsplit(".", 1)[1]}.get(processor, "")]
        if processor == "image":
            assert Image.open(io.BytesIO(stored)).size == (32, 32) and row["width"] == 32
        elif processor == "audio":
            decoded, rate = soundfile.read(io.BytesIO(stored))
            assert rate == 16000 and row["sample_rate"] == 16000 and row["width"] is None
        else:
            assert stored == data and row["mime_type"] and row["sample_rate"] is None


# -- an async fetcher ----------------------------------------------------------------------------


class AsyncHTTP(Fetcher):
    """A minimal HTTP/1.0 GET on asyncio streams, for loopback servers in tests."""

    name = "asynchttp"
    schemes = ("http",)
    threads: set[int] = set()
    in_flight = 0
    peak = 0

    async def fetch_async(self, sample):
        cls = type(self)
        cls.threads.add(threading.get_ident())
        cls.in_flight += 1
        cls.peak = max(cls.peak, cls.in_flight)
        try:
            url = urlsplit(sample.url)
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            writer.write(f"GET {url.path} HTTP/1.0\r\nHost: {url.netloc}\r\n\r\n".encode())
            response = await reader.read()
            writer.close()
        finally:
            cls.in_flight -= 1
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status != 200:
            raise FetchError(f"HTTP Error {status}", error_type="http_4xx")
        return FetchResult(body=body, url=sample.url)


class AsyncPlugin:
    @hookimpl
    def any2ds_register_fetchers(self, register):
        register(AsyncHTTP)


def test_an_async_fetcher_keeps_a_shard_in_flight_on_one_thread(tmp_path):
    (tmp_path / "files").mkdir()
    with serve_directory(tmp_path / "files") as server:
        def slow(request):
            time.sleep(0.5)
            send_bytes(request, b"slow body " + request.path.encode(), "text/plain")

        def hang(request):
            time.sleep(30)

        server.route("/slow/", slow)
        server.route("/hang/", hang)
        urls = [server.url(f"/slow/{i}") for i in range(30)] + [server.url("/hang/x"), server.url("/missing/y")]
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        AsyncHTTP.threads, AsyncHTTP.peak = set(), 0
        download_in_process(AsyncPlugin(), url_list=str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"),
                            fetchers=["asynchttp"], processors=["file"], thread_count=40, sample_timeout=10)
    rows = {row["url"].rsplit("/", 2)[1] + "/" + row["url"].rsplit("/", 1)[1]: row
            for row in read_dataset(tmp_path / "out").rows}
    assert all(rows[f"slow/{i}"]["status"] == "success" for i in range(30))
    assert (rows["hang/x"]["status"], rows["hang/x"]["error_type"]) == ("failed_to_download", "watchdog")
    assert rows["missing/y"]["error_type"] == "http_4xx"
    assert len(AsyncHTTP.threads) == 1, "every fetch ran on the worker's one event loop thread"
    assert AsyncHTTP.peak >= 30, f"only {AsyncHTTP.peak} fetches were in flight at once"


def test_an_archive_of_mixed_media_is_routed_by_type(tmp_path):
    """Samples read from an archive (bytes, no fetch) go through the same routing."""
    import tarfile

    archive = tmp_path / "mixed.tar"
    members = {name: entry for name, entry in MIXED.items() if not name.endswith(".txt")}  # .txt: the caption
    with tarfile.open(archive, "w") as tar:
        for index, (name, (data, _processor)) in enumerate(members.items()):
            for member, content in ((f"{index:05d}.{name.rsplit('.', 1)[1]}", data),
                                    (f"{index:05d}.txt", f"caption of {name}".encode())):
                info = tarfile.TarInfo(member)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    download_in_process(url_list=str(archive), input_format="archive", output_folder=str(tmp_path / "out"),
                        routing="by_type", output_format="parquet", image_size=32, audio_sample_rate=16000,
                        archive={"media_extensions": ["jpg", "png", "wav", "flac", "ogg", "pdf", "npy"]})
    dataset = read_dataset(tmp_path / "out")
    by_caption = {row["caption"]: row for row in dataset.rows}
    for name, (_data, processor) in members.items():
        row = by_caption[f"caption of {name}"]
        assert (row["status"], row["processor"]) == ("success", processor), name
        assert STREAM[processor] in dataset.samples[row["key"]]
