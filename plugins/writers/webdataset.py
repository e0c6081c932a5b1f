"""``output_format: webdataset``: one tar per shard, read by the ``webdataset`` library."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import fsspec

from any2ds import SampleFilesWriter

# Members as webdataset's TarWriter (img2dataset's writer) makes them: ustar, read-only, owned by "bigdata";
# but with a fixed time, so that a shard's tar is the same bytes from run to run (SOURCE_DATE_EPOCH,
# the reproducible-builds convention, when set; else 0).
MEMBER_MODE = 0o444
MEMBER_OWNER = "bigdata"
MEMBER_MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


class WebDatasetWriter(SampleFilesWriter):
    """img2dataset's ``webdataset`` layout: ``<shard>.tar`` with ``<key>.<ext>``,
    ``<key>.txt`` and ``<key>.json`` per success, in write order, plus ``<shard>.parquet``.
    Streams into the tar on the output filesystem (fsspec, so S3 works too)."""

    name = "webdataset"
    container_suffix = ".tar"

    def start_container(self, file: BinaryIO) -> tarfile.TarFile:
        return tarfile.open(fileobj=file, mode="w|", format=tarfile.USTAR_FORMAT)

    def add_file(self, container: tarfile.TarFile, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.mode = len(data), MEMBER_MTIME, MEMBER_MODE
        member.uname = member.gname = MEMBER_OWNER
        container.addfile(member, io.BytesIO(data))

    def close_container(self, container: tarfile.TarFile) -> None:
        container.close()  # the core closes the file under it

    def read_container(self, fs: fsspec.AbstractFileSystem, path: str) -> Iterator[tuple[str, bytes]]:
        with fs.open(path, "rb") as file, tarfile.open(fileobj=file, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member).read()
