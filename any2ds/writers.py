"""What writers share: the metadata parquet of every row, the per-sample files, and
:class:`SampleFilesWriter`, the base of formats that store each sample as files.

A sample's files, as img2dataset writes them: ``<key>.<extension>`` per media
stream, ``<key>.json`` (its metadata row) and ``<key>.txt`` (its caption, when
the run saves captions). Only successful samples have files; every row,
failures included, is in ``<shard>.parquet``.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import fsspec

from any2ds.components import ShardWriter, Writer
from any2ds.metadata import MetadataParquetWriter, read_parquet, to_json

if TYPE_CHECKING:
    from any2ds.metadata import MetadataLayout
    from any2ds.output import OutputFolder, ShardTarget
    from any2ds.types import SampleResult


def caption_text(record: dict[str, Any]) -> str:
    """The ``txt`` file of a record: its caption as text, ``""`` when it has none."""
    caption = record.get("caption")
    return "" if caption is None else str(caption)


def sample_files(result: SampleResult, record: dict[str, Any], layout: MetadataLayout) -> dict[str, bytes]:
    """The files of one successful sample by extension: ``json`` (the metadata row), ``txt``
    (the caption, when the layout has captions) and one per media stream.

    A medium is stored under its own extension. An extension already taken (a
    ``txt`` download next to a caption, or an earlier stream's) becomes
    ``<stream>.<extension>`` instead, a webdataset multi-part extension, so
    nothing is silently overwritten.
    """
    files = {"json": to_json(record).encode("utf-8")}
    if layout.has_caption:
        files["txt"] = caption_text(record).encode("utf-8")
    for stream, media in result.media.items():
        extension = media.extension
        if extension in files:
            extension = f"{stream}.{media.extension}"
        files[extension] = media.data
    return files


class MetadataShardWriter(ShardWriter):
    """A shard writer that records every row in ``<shard>.parquet`` and hands each successful
    sample to :meth:`write_sample`, which stores it in the format's own files."""

    def __init__(self, target: ShardTarget, layout: MetadataLayout) -> None:
        self.target = target
        self.layout = layout
        self._metadata = MetadataParquetWriter(target, layout)

    def write(self, result: SampleResult) -> None:
        """Record the row in the metadata parquet; store the files of a success (:meth:`write_sample`)."""
        record = self.layout.record(result)
        self._metadata.add(record)
        if result.ok:
            self.write_sample(result, record)

    def write_sample(self, result: SampleResult, record: dict[str, Any]) -> None:
        """Store one successful sample; ``record`` is its metadata row."""
        raise NotImplementedError

    def close_container(self) -> None:
        """Finish the format's own files (the metadata parquet is written after)."""

    def close(self) -> None:
        """Finish the format's files, then write the metadata parquet."""
        self.close_container()
        self._metadata.close()

    def abort(self) -> None:
        """Release open files without writing the metadata parquet.

        Best effort: the shard has already failed and the core deletes its
        temporary folder next, so an error while closing changes nothing.
        """
        with contextlib.suppress(Exception):
            self.close_container()


class SampleFilesWriter(Writer):
    """A format that stores each successful sample as files (``<key>.jpg``, ``<key>.json``,
    ``<key>.txt``) in one container per shard: a folder, a tar, a zip...

    A subclass says how to handle its container, in four methods; the sidecars,
    the extensions, the metadata parquet of every row and the abort are done
    here. A container that is one file written front to back (a tar, a zip) is
    started in a file the core opens and closes, hashing it as it is written
    (:meth:`start_container`); any other (a folder) is opened by the format on
    the filesystem (:meth:`open_container`), and read back at commit to be
    hashed, unless it is a folder of exactly the files given to :meth:`add_file`
    (:attr:`files_as_given`). ``container_suffix`` names the container:
    ``<shard><suffix>`` (``.zip``; ``""`` for a folder)::

        class ZipWriter(SampleFilesWriter):
            name = "zip"
            container_suffix = ".zip"

            def start_container(self, file):
                return zipfile.ZipFile(file, "w")

            def add_file(self, container, name, data):
                container.writestr(name, data)

            def close_container(self, container):
                container.close()

            def read_container(self, fs, path):
                with fs.open(path, "rb") as file, zipfile.ZipFile(file) as archive:
                    for name in archive.namelist():
                        yield name, archive.read(name)
    """

    container_suffix: ClassVar[str] = ""
    files_as_given: ClassVar[bool] = False
    """True for a folder container holding exactly the files given to :meth:`add_file`, under their
    names: the core then hashes each file as it is added and does not read the folder back at commit."""

    def start_container(self, file: BinaryIO) -> Any:
        """Start the shard's container in ``file``, a new file open for writing (not seekable),
        which the core closes after :meth:`close_container`; return whatever :meth:`add_file` and
        :meth:`close_container` need. Defined by formats whose container is one file."""
        raise NotImplementedError

    def open_container(self, fs: fsspec.AbstractFileSystem, path: str) -> Any:
        """Create the shard's container at ``path`` (a temporary path the core renames into place
        on commit) on ``fs``; return whatever :meth:`add_file` and :meth:`close_container` need.
        Defined by formats whose container is not one file written front to back (a folder);
        the core then reads the container back at commit to hash it."""
        raise NotImplementedError

    def add_file(self, container: Any, name: str, data: bytes) -> None:
        """Add one file, ``name`` being ``<key>.<extension>``, in the order the samples complete."""
        raise NotImplementedError

    def close_container(self, container: Any) -> None:
        """Finish the container (also called, best effort, when the shard fails)."""
        raise NotImplementedError

    def read_container(self, fs: fsspec.AbstractFileSystem, path: str) -> Iterator[tuple[str, bytes]]:
        """Yield ``(name, data)`` of every file of a committed container, ``name`` as given to
        :meth:`add_file` (for :func:`any2ds.testing.read_dataset` and checks)."""
        raise NotImplementedError

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> ShardWriter:
        """A shard writer storing each success's files in a container from :meth:`start_container`
        or :meth:`open_container`."""
        return _SampleFilesShardWriter(self, target, layout)

    def read_output(self, output: OutputFolder) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Rows from each shard's ``<shard>.parquet``, files from its container (:meth:`read_container`)."""
        for shard_name in output.done_shard_names():
            files: dict[str, dict[str, bytes]] = {}
            path = output.join(shard_name + self.container_suffix)
            if output.fs.exists(path):
                for name, data in self.read_container(output.fs, path):
                    key, extension = split_file_name(name)
                    files.setdefault(key, {})[extension] = data
            for row in read_metadata(output, shard_name):
                yield row, files.get(row["key"], {})


def split_file_name(name: str) -> tuple[str, str]:
    """``dir/00001.thumb.jpg`` -> (``dir/00001``, ``thumb.jpg``): the key ends at the first dot of
    the base name, as webdataset groups tar members."""
    folder, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), extension


def read_metadata(output: OutputFolder, shard_name: str) -> list[dict[str, Any]]:
    """The rows of a committed shard's ``<shard>.parquet``."""
    with output.fs.open(output.join(f"{shard_name}.parquet"), "rb") as f:
        return read_parquet(f).to_pylist()


class _SampleFilesShardWriter(MetadataShardWriter):
    """One shard of a :class:`SampleFilesWriter`."""

    def __init__(self, format: SampleFilesWriter, target: ShardTarget, layout: MetadataLayout) -> None:
        super().__init__(target, layout)
        self._format = format
        self._file: BinaryIO | None = None
        starts_in_file = _starts_in_file(format)
        self._hashes_files = format.files_as_given and not starts_in_file
        if starts_in_file:
            self._file = target.open(format.container_suffix)
            self._container = format.start_container(self._file)
        else:
            self._container = format.open_container(target.fs, target.path(format.container_suffix))

    def write_sample(self, result: SampleResult, record: dict[str, Any]) -> None:
        # In extension order, as webdataset's TarWriter (img2dataset's writer) adds a sample's members.
        for extension, data in sorted(sample_files(result, record, self.layout).items()):
            name = f"{result.sample.key}.{extension}"
            self._format.add_file(self._container, name, data)
            if self._hashes_files:
                self.target.hash_folder_file(self._format.container_suffix, name, data)

    def close_container(self) -> None:
        try:
            self._format.close_container(self._container)
        finally:
            if self._file is not None:
                self._file.close()


def _starts_in_file(format: SampleFilesWriter) -> bool:
    """Whether ``format``'s container starts in a file the core opens (:meth:`start_container`)
    rather than one it opens itself (:meth:`open_container`): whichever of the two its class
    defines nearest, so that a subclass of a built-in format written against ``open_container``
    keeps being used through it."""
    for cls in type(format).__mro__:
        defines = vars(cls)
        if "start_container" in defines or "open_container" in defines:
            return "start_container" in defines and cls is not SampleFilesWriter
    return False
