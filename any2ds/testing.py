"""Helpers for testing plugins: register one for the length of a test, serve files
on 127.0.0.1, run a download in this process and read its output back.

::

    from any2ds.testing import download_in_process, read_dataset, serve_directory

    def test_my_processor(tmp_path):
        with serve_directory(tmp_path / "images") as server:
            (tmp_path / "urls.txt").write_text(server.url("/allowed/cat.jpg"))
            download_in_process(MyPlugin(), url_list=str(tmp_path / "urls.txt"),
                                output_folder=str(tmp_path / "out"), processors=["image", "mine"],
                                allow_private_networks=True)  # the server is on 127.0.0.1
        dataset = read_dataset(tmp_path / "out")
        assert dataset.rows[0]["status"] == "success"

Plugin objects registered here exist in this process only: worker processes
rebuild their plugins from entry points and the ``plugins`` option. Run the
shards in this process (``distributor="inprocess"``, which
:func:`download_in_process` sets) when a test registers a plugin object.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import pyarrow as pa

from any2ds.components import Writer
from any2ds.manager import PluginHost
from any2ds.metadata import MetadataLayout, to_json
from any2ds.options import OptionSchema
from any2ds.output import SUMMARY_FILE, TMP_DIR, OutputFolder
from any2ds.run import download
from any2ds.storage import Storage
from any2ds.types import Media, Sample, SampleResult

__all__ = ["Dataset", "LocalHTTPServer", "check_writer", "download_in_process", "read_dataset", "registered_plugin",
           "send_bytes", "serve_directory"]


# --------------------------------------------------------------------------
# plugins
# --------------------------------------------------------------------------


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) with every
    plugin host this process builds until the block ends: ``any2ds.download`` and
    ``any2ds.cli.main`` called inside the block see it."""
    name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin)}"
    if name in PluginHost.process_plugins:
        raise ValueError(f"a plugin named {name!r} is already registered in this process")
    PluginHost.process_plugins[name] = plugin
    try:
        yield plugin
    finally:
        del PluginHost.process_plugins[name]


def download_in_process(*plugins: Any, **options: Any) -> dict[str, Any]:
    """``any2ds.download(**options)`` with ``plugins`` registered and the shards run in this
    process (``distributor="inprocess"``, which plugin objects need); returns the run summary."""
    with contextlib.ExitStack() as stack:
        for plugin in plugins:
            stack.enter_context(registered_plugin(plugin))
        return download(**{"distributor": "inprocess", **options})


# --------------------------------------------------------------------------
# a local HTTP server
# --------------------------------------------------------------------------

Handler = Callable[[BaseHTTPRequestHandler], None]

CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
                 ".wav": "audio/wav", ".flac": "audio/flac", ".txt": "text/plain"}
# What the /disallowed/ route answers with: the opt-out header img2dataset and any2ds honour.
X_ROBOTS_TAG_REFUSAL = "noai, noimageai, noindex, noimageindex, nofollow"


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    disable_nagle_algorithm = True  # as real servers do for kept-alive connections (else 40 ms per answer)

    def log_message(self, *args):  # keep test output clean
        pass

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):  # clients may hang up early on purpose
            pass

    def do_GET(self):  # http.server's naming
        server: LocalHTTPServer = self.server.owner  # type: ignore[attr-defined]
        server.record(self)
        path = unquote(urlsplit(self.path).path)
        for prefix, handler in sorted(server.routes.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(prefix):
                handler(self)
                return
        self.send_error(404, "Not Found")


def send_bytes(request: BaseHTTPRequestHandler, body: bytes, content_type: str = "application/octet-stream",
               status: int = 200, headers: dict[str, str] | None = None) -> None:
    """Answer ``request`` with ``body``: for handlers given to :meth:`LocalHTTPServer.route`."""
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.end_headers()
    request.wfile.write(body)


class _Server(ThreadingHTTPServer):
    # Connections waiting to be accepted: socketserver's 5 drops the SYNs of a few dozen clients
    # connecting at once (each then waits a second to try again), where real servers queue them.
    request_queue_size = 128


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1, on a free port, in a background thread.

    Serves the files of ``root`` under ``/allowed/<name>`` and, with an
    X-Robots-Tag refusing AI use, under ``/disallowed/<name>``. ``route(prefix,
    handler)`` adds programmable answers; ``requests`` records (path, headers)
    of every request.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.routes: dict[str, Handler] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _RequestHandler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.route("/allowed/", self._static())
        self.route("/disallowed/", self._static({"X-Robots-Tag": X_ROBOTS_TAG_REFUSAL}))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, prefix: str, handler: Handler) -> None:
        self.routes[prefix] = handler

    def record(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((request.path, dict(request.headers)))

    def _static(self, headers: dict[str, str] | None = None) -> Handler:
        def handler(request: BaseHTTPRequestHandler) -> None:
            name = unquote(urlsplit(request.path).path).split("/", 2)[2]
            path = (self.root / name).resolve()
            if self.root.resolve() not in path.parents or not path.is_file():
                request.send_error(404, "Not Found")
                return
            send_bytes(request, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                       headers=headers)
        return handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike) -> Iterator[LocalHTTPServer]:
    """A :class:`LocalHTTPServer` serving ``root`` for the length of the block."""
    server = LocalHTTPServer(Path(root))
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------
# reading an output back
# --------------------------------------------------------------------------


@attrs.frozen
class Dataset:
    """An output folder read back by its writer (:meth:`any2ds.Writer.read_output`).

    ``rows``: every metadata row (one per input row, failures included), by
    key, media columns excluded. ``samples``: each stored sample's files by
    key, then by extension (``jpg``, ``json``, ``txt``, ``thumb.jpg``), as
    webdataset groups them (for ``parquet``, the media columns by stream).
    ``summary``: ``_any2ds/run_summary.json``.
    """

    rows: list[dict[str, Any]]
    samples: dict[str, dict[str, bytes]]
    summary: dict[str, Any]


def read_dataset(output_folder: str | os.PathLike,
                 storage_options: Mapping[str, Mapping[str, Any]] | None = None) -> Dataset:
    """Read an output folder (a local path or any fsspec URL, reached with ``storage_options`` as a
    run is) back with the writer that made it, rebuilt from the run summary's config (plugins
    registered in this process included)."""
    storage = Storage(storage_options or {})
    fs, root = storage.url_to_fs(str(output_folder))
    summary_path = posixpath.join(root, SUMMARY_FILE)
    if not fs.exists(summary_path):
        raise ValueError(f"{output_folder}: no {SUMMARY_FILE}, so not an any2ds output folder")
    summary = json.loads(fs.cat_file(summary_path))
    config = summary["config"]
    host = PluginHost.load(local_plugins=config.get("plugins") or ())
    run_config = OptionSchema(host).parse_kwargs(config, needs_url_list=False)
    writer_class = host.component("writer", run_config.core.output_format, "output_format")
    writer = writer_class(run_config.options_for(writer_class))
    writer.storage = storage
    rows: list[dict[str, Any]] = []
    samples: dict[str, dict[str, bytes]] = {}
    for row, files in writer.read_output(OutputFolder(str(output_folder), run_config.core.oom_shard_count, storage)):
        rows.append(row)
        if files:
            samples[row["key"]] = files
    return Dataset(rows=sorted(rows, key=lambda row: row["key"]), samples=samples, summary=summary)


# --------------------------------------------------------------------------
# writer conformance
# --------------------------------------------------------------------------


def check_writer(writer: Writer, folder: str | os.PathLike) -> None:
    """Check that ``writer`` (a built Writer) does what every output format must, in ``folder``
    (an empty local or fsspec folder); raise AssertionError saying what it does not.

    A shard of three successes (a caption, a saved column, a metadata field and two media
    streams, one stored as ``<key>.thumb.jpg``) and two failures is written and committed, the
    run finalized, and the output read back through ``writer.read_output``: every row must be
    there once, failures included, with its metadata; each success's media under its stream
    name or its extension; and for formats storing sample files, the ``json`` sidecar (the
    metadata row) and the ``txt`` caption. Then a second shard is aborted: nothing of it may
    remain.
    """
    layout = MetadataLayout.build(pa.schema([("extra", pa.int64())]), ["extra"], True,
                                  [pa.field("width", pa.int32())], ["jpg", "thumbnail"])
    output = OutputFolder(str(folder), oom_shard_count=5)
    output.prepare("overwrite")
    results = _conformance_results()
    target = output.target(0)
    shard_writer = writer.open_shard(target, layout)
    for result in results:
        shard_writer.write(result)
    shard_writer.close()
    target.commit({"count": len(results)})
    writer.finalize(output)

    read = {row["key"]: (row, files) for row, files in writer.read_output(output)}
    assert sorted(read) == sorted(r.sample.key for r in results), f"rows read back: {sorted(read)}"
    for result in results:
        row, files = read[result.sample.key]
        expected = layout.record(result)
        for name in ("url", "caption", "extra", "status", "error_message", "error_type", "width"):
            assert row.get(name) == expected[name], f"{result.sample.key}: {name} is {row.get(name)!r}"
        if not result.ok:
            assert not files, f"{result.sample.key} failed but has files {sorted(files)}"
            continue
        for stream, media in result.media.items():
            stored = files.get(stream, files.get(media.extension))
            assert stored == media.data, f"{result.sample.key}: stream {stream} is not stored as written"
        if "json" in files:
            assert json.loads(files["json"]) == json.loads(to_json(expected)), f"{result.sample.key}: json sidecar"
            assert files.get("txt") == (result.sample.caption or "").encode(), f"{result.sample.key}: txt sidecar"

    aborted = output.target(1)
    shard_writer = writer.open_shard(aborted, layout)
    for result in results[:2]:
        shard_writer.write(result)
    shard_writer.abort()
    aborted.abort()
    # The shard's own files are <out>/00001<suffix>, written under <out>/_tmp/00001-<id>/.
    left = [path for path in output.fs.find(output.root)
            if path[len(output.root) + 1:].startswith(("00001", f"{TMP_DIR}/00001-"))]
    assert not left, f"an aborted shard left {left}"


def _conformance_results() -> list[SampleResult]:
    results = []
    for index in range(5):
        sample = Sample(f"00000{index:04d}", 0, index, f"http://example.com/{index}.jpg",
                        caption=f"caption {index}" if index != 1 else None, columns={"extra": index})
        if index in (2, 4):
            results.append(SampleResult(sample, status="failed_to_download", error_message="HTTP Error 404: Not Found",
                                        error_type="http_4xx"))
            continue
        media = {"jpg": Media(bytes([index]) * (100 + index), "jpg"),
                 "thumbnail": Media(bytes([index + 10]) * 10, "thumb.jpg")}
        results.append(SampleResult(sample, media=media, metadata={"width": 100 + index}))
    return results
