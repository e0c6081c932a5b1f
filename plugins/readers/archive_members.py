"""The members of a tar, tar.gz or zip archive, in one sequential pass, with its integrity checked.

Both formats are read the same way: :func:`archive_members` yields each
regular member with a ``read()`` that returns its bytes; a member not read is
skipped without being held in memory. A tar is read in stream mode (nothing
seeks back, so S3 and gzip stream too); a zip's central directory is read
first, then its members in the order they are stored. Anything that shows
the archive is truncated or corrupt raises :class:`ArchiveError`.
"""

from __future__ import annotations

import contextlib
import posixpath
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

import attrs

from any2ds import SampleError, split_file_name
from any2ds_plugins.readers.common import one_line

DRAIN_BYTES = 1024 * 1024
"""Read size when reading a tar.gz past its end-of-archive marker (padding, gzip trailer)."""

# Suffix (lower case) -> fsspec compression of the file.
ARCHIVE_SUFFIXES = {".tar": None, ".tar.gz": "gzip", ".tgz": "gzip", ".zip": None}


class ArchiveError(Exception):
    """The archive cannot be read to its end (missing, truncated, corrupt): its shard fails."""


@attrs.frozen
class Member:
    """A regular file in an archive. ``read()`` returns its bytes; call it before asking for the next
    member (a tar streams past it). It raises SampleError when only this member is unreadable
    (an encrypted zip member), ArchiveError when the archive is broken."""

    name: str
    size: int
    read: Callable[[], bytes] = attrs.field(repr=False)


def archive_suffix(path: str) -> str | None:
    """The archive suffix ``path`` ends with (``.tar.gz``), or None."""
    lower = path.lower()
    return next((suffix for suffix in ARCHIVE_SUFFIXES if lower.endswith(suffix)), None)


def archive_members(f: BinaryIO, path: str) -> Iterator[Member]:
    """The regular members of the archive ``f`` (decompressed already for a tar.gz), in stored order.

    Directories are left out; any other entry that is not a regular file (a
    link, a device) is yielded as a member whose ``read()`` raises SampleError.
    """
    if archive_suffix(path) == ".zip":
        yield from _zip_members(f)
    else:
        yield from _tar_members(f)


class _EndAwareTarInfo(tarfile.TarInfo):
    """Remembers on the TarFile why its member list ended.

    tarfile stops as quietly at a missing or broken header as at a real
    end-of-archive marker (a zero block); only the latter means that the
    archive is complete.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as error:
            tar.end_of_members = error  # type: ignore[attr-defined]
            raise


def _tar_members(f: BinaryIO) -> Iterator[Member]:
    count = 0
    with tarfile.open(fileobj=f, mode="r|", tarinfo=_EndAwareTarInfo) as tar:
        while (info := tar.next()) is not None:
            tar.members = []  # stream mode keeps every header read otherwise: memory would grow
            if info.isdir():
                continue
            count += 1
            yield Member(_normalized(info.name), info.size, _tar_reader(tar, info))
        end = getattr(tar, "end_of_members", None)
        if not isinstance(end, tarfile.EOFHeaderError):
            where = f"after {count} member(s), at byte {tar.offset}"
            if isinstance(end, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
                raise ArchiveError(f"truncated: the tar ends {where} without its end-of-archive marker")
            raise ArchiveError(f"corrupt: {end or 'no end-of-archive marker'} {where}")
    # A tar.gz's gzip trailer (length and CRC) is only checked when read.
    while f.read(DRAIN_BYTES):
        pass


def _tar_reader(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        if not info.isfile():
            raise SampleError(f"member {info.name} is a {_tar_kind(info)}, not a regular file",
                              error_type="archive.not_a_file")
        member = tar.extractfile(info)
        assert member is not None  # a regular file always has data
        return member.read()

    return read


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    return "special file"


def _zip_members(f: BinaryIO) -> Iterator[Member]:
    with zipfile.ZipFile(f) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.header_offset):
            if not info.is_dir():
                yield Member(_normalized(info.filename), info.file_size, _zip_reader(archive, info))


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with archive.open(info) as member:
                return member.read()
        except RuntimeError as exc:  # encrypted: zipfile asks for a password
            raise SampleError(f"member {info.filename}: {exc}", error_type="archive.encrypted") from exc
        except NotImplementedError as exc:
            raise SampleError(f"member {info.filename}: {exc}", error_type="unsupported") from exc

    return read


def _normalized(name: str) -> str:
    """The member's path without the ``./`` prefix that ``tar -C dir .`` gives every name."""
    while name.startswith("./"):
        name = name[2:]
    return name


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) by the webdataset convention: the key is the path up to the first dot of
    the base name (``a/00001.seg.png`` -> ``a/00001``, ``seg.png``). A base name starting with a
    dot (``.DS_Store``) has no key part: the whole name is the key, with no extension."""
    if not posixpath.basename(name).partition(".")[0]:
        return name, ""
    return split_file_name(name)


def described(exc: BaseException) -> str:
    """The exception's type and first line, for a one-line message (the type alone if it says nothing)."""
    text = one_line(exc)
    return type(exc).__name__ if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"


def timed_out(timeout: float | None) -> str:
    """Why a read timed out: the bound that applied, when known."""
    if timeout is None:
        return "timed out"
    return f"timed out: no answer for {timeout:g} s (archive_read_timeout)"


@contextlib.contextmanager
def archive_errors(url: str, timeout: float | None = None) -> Iterator[None]:
    """Turn every failure of reading the archive into an ArchiveError naming it; a ``timeout``
    (the reads' bound, if one applies) is named in the message of a read that timed out."""
    try:
        yield
    except ArchiveError as exc:
        raise ArchiveError(f"archive {url}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ArchiveError(f"archive {url} does not exist") from exc
    except EOFError as exc:  # gzip data cut short
        raise ArchiveError(f"archive {url}: truncated: {one_line(exc)}") from exc
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ArchiveError(f"archive {url}: truncated or corrupt: {one_line(exc)}") from exc
    except TimeoutError as exc:
        raise ArchiveError(f"archive {url}: {timed_out(timeout)}") from exc
    except Exception as exc:  # I/O and anything else: the shard fails, naming the archive
        raise ArchiveError(f"archive {url}: {described(exc)}") from exc
