"""What a body is: its MIME type and usual extension, from its bytes first.

Magic numbers are read by the ``filetype`` library (pure Python, about a
microsecond a call on the hot path; ``puremagic`` took 4 ms and names ogg
``application/ogg``). What magic cannot tell (text, JSON, numpy files) falls
back to an informative Content-Type, then to the suffix of the URL or file
name.
"""

from __future__ import annotations

import fnmatch
import mimetypes
import posixpath
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs
import filetype

# filetype answers with some legacy x- names; routing patterns and metadata use the registered ones.
_REGISTERED_NAMES = {"audio/x-wav": "audio/wav", "audio/x-flac": "audio/flac", "audio/m4a": "audio/mp4",
                     "audio/x-aiff": "audio/aiff", "image/x-icon": "image/vnd.microsoft.icon"}
# The usual extension where mimetypes' first guess is an odd one.
_USUAL_EXTENSIONS = {"image/jpeg": "jpg", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/ogg": "ogg",
                     "audio/wav": "wav", "image/tiff": "tiff", "text/plain": "txt", "video/mp4": "mp4"}
# Content-Types that say nothing about the content.
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
UNKNOWN_MIME = "application/octet-stream"
MAGIC_BYTES = 8192  # filetype reads at most this much


@attrs.frozen
class MediaType:
    """A detected type: ``mime`` (``audio/flac``) and the usual file ``extension`` (``flac``)."""

    mime: str
    extension: str

    def matches(self, patterns: Iterable[str]) -> bool:
        """Whether the MIME type matches one of ``patterns`` (``image/*``, ``audio/flac``, ``*/*``)."""
        return any(fnmatch.fnmatchcase(self.mime, pattern) for pattern in patterns)


UNKNOWN = MediaType(UNKNOWN_MIME, "bin")


def from_magic(data: bytes) -> MediaType | None:
    """The type the first bytes of ``data`` show, or None."""
    kind = filetype.guess(data[:MAGIC_BYTES]) if data else None
    if kind is None:
        return None
    mime = _REGISTERED_NAMES.get(kind.mime, kind.mime)
    return MediaType(mime, _USUAL_EXTENSIONS.get(mime, kind.extension))


def from_content_type(content_type: str | None) -> MediaType | None:
    """The type an informative Content-Type header names, or None."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in _GENERIC_TYPES:
        return None
    mime = _REGISTERED_NAMES.get(mime, mime)
    extension = _USUAL_EXTENSIONS.get(mime) or (mimetypes.guess_extension(mime) or "").lstrip(".")
    return MediaType(mime, extension) if extension else None


def from_name(url_or_name: str | None) -> MediaType | None:
    """The type a short alphanumeric suffix of a URL's path or a file name suggests, or None."""
    try:
        path = urlsplit(url_or_name or "").path
    except ValueError:  # unbalanced brackets in the host: no path to go by
        return None
    suffix = posixpath.splitext(path)[1][1:].lower()
    if not (suffix.isascii() and suffix.isalnum() and len(suffix) <= 8):
        return None
    mime = mimetypes.guess_type(f"file.{suffix}")[0] or UNKNOWN_MIME
    return MediaType(_REGISTERED_NAMES.get(mime, mime), suffix)


def detect_media_type(data: bytes, content_type: str | None = None, *names: str | None) -> MediaType:
    """The type of ``data``: its magic bytes, else ``content_type``, else the suffix of the first of
    ``names`` (URLs or file names) that has one, else ``application/octet-stream``."""
    found = from_magic(data) or from_content_type(content_type)
    for name in names:
        found = found or from_name(name)
    return found or UNKNOWN
