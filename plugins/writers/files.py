"""``output_format: files``: one folder per shard with a file per sample stream."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import fsspec

from any2ds import SampleFilesWriter

# Files are written in batches: on an object store fsspec uploads a batch
# concurrently instead of paying one request's latency per file.
BATCH_FILES = 256
BATCH_BYTES = 64 * 1024 * 1024


class PendingFiles:
    """A shard folder's files waiting to be written in one batch."""

    def __init__(self, fs: fsspec.AbstractFileSystem, folder: str) -> None:
        self.fs = fs
        self.folder = folder
        self.files: dict[str, bytes] = {}
        self.size = 0

    def flush(self) -> None:
        if self.files:
            self.fs.pipe(self.files)
        self.files = {}
        self.size = 0


class FilesWriter(SampleFilesWriter):
    """img2dataset's ``files`` layout: ``<shard>/<key>.<ext>``, ``<key>.txt`` (when
    captioned) and ``<key>.json`` for each success, plus ``<shard>.parquet``."""

    name = "files"
    container_suffix = ""
    files_as_given = True  # hashed as they are added: at commit, no file is read back

    def open_container(self, fs: fsspec.AbstractFileSystem, path: str) -> PendingFiles:
        fs.makedirs(path, exist_ok=True)
        return PendingFiles(fs, path)

    def add_file(self, container: PendingFiles, name: str, data: bytes) -> None:
        container.files[f"{container.folder}/{name}"] = data
        container.size += len(data)
        if len(container.files) >= BATCH_FILES or container.size >= BATCH_BYTES:
            container.flush()

    def close_container(self, container: PendingFiles) -> None:
        container.flush()

    def read_container(self, fs: fsspec.AbstractFileSystem, path: str) -> Iterator[tuple[str, bytes]]:
        for file in sorted(fs.find(path)):
            yield posixpath.relpath(file, path), fs.cat_file(file)
