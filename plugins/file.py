"""The built-in "any file" processor: stores the fetched bytes untouched.

For datasets of arbitrary files (``processors: [file]``), and the catch-all of
runs routing samples by type. The stored extension is the file's real type,
found from its magic bytes first, then from the Content-Type, then from the
URL's suffix (img2dataset names raw bodies after ``encode_format`` whatever
they hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import attrs
import pyarrow as pa
from attrs import validators as v

from any2ds import FetchResult, Media, Processor, SampleResult, detect_media_type, hookimpl, option


class FileProcessor(Processor):
    """Stores the raw body as the ``file`` stream, under its detected extension."""

    name = "file"
    media_types = ("*/*",)

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
        found = detect_media_type(fetched.body, fetched.content_type, fetched.url, result.sample.url,
                                  result.sample.filename)
        extension = self.options.file_extension.lstrip(".") if self.options.file_extension else found.extension
        result.media["file"] = Media(fetched.body, extension)
        result.metadata["mime_type"] = found.mime
        result.metadata["size"] = len(fetched.body)


@hookimpl
def any2ds_register_processors(register):
    register(FileProcessor)
