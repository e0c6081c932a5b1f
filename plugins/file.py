"""The built-in "any file" processor: stores the fetched bytes untouched.

For datasets of arbitrary files (``processors: [file]``). The stored
extension is the file's real type, found from its magic bytes first, then
from the Content-Type, then from the URL's suffix (img2dataset names raw
bodies after ``encode_format`` whatever they hold).
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Sequence
from typing import Optional
from urllib.parse import urlsplit

import attrs
import pyarrow as pa
from attrs import validators as v

from any2ds.components import Processor, option
from any2ds.hookspecs import hookimpl
from any2ds.types import FetchResult, Media, SampleResult

UNKNOWN = ("bin", "application/octet-stream")

# (prefix, extension, MIME type) for formats recognisable from their first bytes.
_PREFIXES = (
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
    (b"II*\x00", "tiff", "image/tiff"),
    (b"MM\x00*", "tiff", "image/tiff"),
    (b"%PDF-", "pdf", "application/pdf"),
    (b"fLaC", "flac", "audio/flac"),
    (b"ID3", "mp3", "audio/mpeg"),
    (b"\xff\xfb", "mp3", "audio/mpeg"),
    (b"\xff\xf3", "mp3", "audio/mpeg"),
    (b"\xff\xf2", "mp3", "audio/mpeg"),
    (b"OggS", "ogg", "audio/ogg"),
    (b"PK\x03\x04", "zip", "application/zip"),
    (b"PK\x05\x06", "zip", "application/zip"),
    (b"\x1f\x8b", "gz", "application/gzip"),
)
# RIFF containers: the form type at offset 8.
_RIFF = {b"WEBP": ("webp", "image/webp"), b"WAVE": ("wav", "audio/wav"), b"AVI ": ("avi", "video/x-msvideo")}
# ISO base media files ("ftyp" at offset 4): the major brand at offset 8; anything else is mp4.
_FTYP = {b"M4A ": ("m4a", "audio/mp4"), b"qt  ": ("mov", "video/quicktime"), b"heic": ("heic", "image/heic"),
         b"heix": ("heic", "image/heic"), b"avif": ("avif", "image/avif")}
# MIME types this module knows an extension for, whatever the platform's mimetypes tables say.
_MIME_EXTENSIONS = {mime: ext for _p, ext, mime in _PREFIXES} | {mime: ext for ext, mime in _RIFF.values()} | {
    mime: ext for ext, mime in _FTYP.values()} | {"video/mp4": "mp4", "video/webm": "webm", "audio/x-wav": "wav"}
# Content-Types that say nothing about the content.
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})


def sniff(data: bytes) -> tuple[str, str] | None:
    """(extension, MIME type) from the magic bytes at the start of ``data``, or None."""
    for prefix, ext, mime in _PREFIXES:
        if data.startswith(prefix):
            return ext, mime
    if data.startswith(b"RIFF") and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return _FTYP.get(data[8:12], ("mp4", "video/mp4"))
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, or WebM when its DocType says so
        return ("webm", "video/webm") if b"webm" in data[:64] else ("mkv", "video/x-matroska")
    if data.startswith(b"BM") and data[6:10] == b"\x00\x00\x00\x00":  # BMP: reserved header bytes are zero
        return "bmp", "image/bmp"
    return None


def from_content_type(content_type: str | None) -> tuple[str, str] | None:
    """(extension, MIME type) from an informative Content-Type header, or None."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in _GENERIC_TYPES:
        return None
    ext = _MIME_EXTENSIONS.get(mime) or (mimetypes.guess_extension(mime) or "").lstrip(".")
    return (ext, mime) if ext else None


def from_url(url: str | None) -> tuple[str, str] | None:
    """(extension, MIME type) from a short alphanumeric suffix of the URL's path, or None."""
    suffix = posixpath.splitext(urlsplit(url or "").path)[1][1:].lower()
    if not (suffix.isascii() and suffix.isalnum() and len(suffix) <= 8):
        return None
    return suffix, mimetypes.guess_type(f"file.{suffix}")[0] or UNKNOWN[1]


def detect(fetched: FetchResult, original_url: str | None) -> tuple[str, str]:
    """(extension, MIME type) of a fetched body: magic bytes, then Content-Type, then URL suffix."""
    return (sniff(fetched.body) or from_content_type(fetched.content_type) or from_url(fetched.url)
            or from_url(original_url) or UNKNOWN)


class FileProcessor(Processor):
    """Stores the raw body as the ``file`` stream, under its detected extension."""

    name = "file"

    @attrs.frozen
    class Options:
        file_extension: Optional[str] = option(
            None, "Extension to store every file under (e.g. npy); default: detected from the content.",
            v.optional(v.matches_re(r"\.?[A-Za-z0-9]+(\.[A-Za-z0-9]+)*")))

    def media_streams(self) -> Sequence[str]:
        return ("file",)

    def metadata_fields(self) -> Sequence[pa.Field]:
        return [pa.field("mime_type", pa.string()), pa.field("size", pa.int64())]

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        extension, mime_type = detect(fetched, result.sample.url)
        if self.options.file_extension:
            extension = self.options.file_extension.lstrip(".")
        result.media["file"] = Media(fetched.body, extension)
        result.metadata["mime_type"] = mime_type
        result.metadata["size"] = len(fetched.body)


@hookimpl
def any2ds_register_processors(register):
    register(FileProcessor)
