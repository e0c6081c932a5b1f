"""The ``exif`` column: an image's EXIF tags as bounded JSON, as img2dataset stores them."""

from __future__ import annotations

import io
import json
import logging

# exifread logs a warning for every image without EXIF (every PNG and WebP): noise at dataset scale.
logging.getLogger("exifread").setLevel(logging.ERROR)

JPEG_MAGIC = b"\xff\xd8\xff"  # a JPEG's first bytes

# exifread follows tag offsets anywhere in the file and reads the data of every
# tag afresh, so 300 tags naming one 1 MiB blob made 300 MiB of strings (2.8 GB
# peak through the writers). Its reads are metered: this many bytes requested in all, four times
# the largest JPEG EXIF segment (64 KiB); a file asking for more has its EXIF
# given up as {"_truncated": true}.
EXIF_READ_BUDGET = 256 * 1024
EXIF_TRUNCATED = "_truncated"  # the key marking a capped exif JSON (exifread names start with a letter)
ELLIPSIS = "..."  # ends a value cut to max_exif_value_bytes
DEFAULT_MAX_EXIF_VALUE_BYTES = 64 * 1024  # a camera's 160x120 thumbnail prints as 13-37 KB: kept whole
DEFAULT_MAX_EXIF_BYTES = 128 * 1024  # room for such a thumbnail and every other tag
MIN_EXIF_BYTES = len(json.dumps({EXIF_TRUNCATED: True}))


def exif_json(body: bytes, max_bytes: int, max_value_bytes: int) -> str | None:
    """img2dataset's exif column: the original bytes' EXIF tags as JSON, ``"{}"`` if none, None if unreadable.

    Bounded: see EXIF_READ_BUDGET and :func:`_capped_json`. A JPEG whose header segments hold no
    ``Exif`` APP1 has none: exifread is not run (most web JPEGs; it costs 0.1-0.2 ms each).
    """
    if body[:3] == JPEG_MAGIC and body.find(b"Exif\x00", 0, max(body.find(b"\xff\xda"), 0)) < 0:
        return "{}"
    import exifread  # here: the main process imports this module for its limits only (exifread: 31 ms, 2.1 MB)

    try:
        tags = exifread.process_file(_MeteredFile(body, EXIF_READ_BUDGET), details=False)
    except _ReadBudgetExceeded:
        return json.dumps({EXIF_TRUNCATED: True})
    except Exception:  # exifread fails in many ways on odd files; img2dataset stores null then
        return None
    return _capped_json({tag: str(value).strip() for tag, value in tags.items() if value is not None},
                        max_bytes, max_value_bytes)


def _capped_json(values: dict[str, str], max_bytes: int, max_value_bytes: int) -> str:
    """``json.dumps(values)`` in at most ``max_bytes``: each value cut to ``max_value_bytes``
    serialized, then the longest left out until the rest fits; either adds ``"_truncated": true``."""
    cut = {tag: _cut(value, max_value_bytes) for tag, value in values.items()}
    # json.dumps writes '{"k": "v", "k2": "v2"}': each entry costs len(k) + len(v) + 4 with its separators.
    sizes = {tag: len(json.dumps(tag)) + len(json.dumps(value)) + 4 for tag, value in cut.items()}
    total = sum(sizes.values())
    if cut == values and total <= max_bytes:
        return json.dumps(values)
    marker = len(json.dumps(EXIF_TRUNCATED)) + len("true") + 4
    for tag in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total + marker <= max_bytes:
            break
        del cut[tag]
        total -= sizes[tag]
    return json.dumps({**cut, EXIF_TRUNCATED: True})


def _cut(value: str, max_bytes: int) -> str:
    """``value``, or its start followed by ELLIPSIS if its JSON string would exceed ``max_bytes``."""
    if len(json.dumps(value)) <= max_bytes:
        return value
    shortest, longest = 0, min(len(value), max_bytes)  # a character takes at least one byte in JSON
    while shortest < longest:  # the longest start that fits, by bisection
        middle = (shortest + longest + 1) // 2
        if len(json.dumps(value[:middle] + ELLIPSIS)) <= max_bytes:
            shortest = middle
        else:
            longest = middle - 1
    return value[:shortest] + ELLIPSIS


class _ReadBudgetExceeded(Exception):
    """A file asked exifread to read more than its budget."""


class _MeteredFile(io.BytesIO):
    """``body`` as a file that serves at most ``budget`` requested bytes in all, then raises.

    Each read is charged what it asks for (at least one byte), not what it gets:
    exifread reads value by value, even past the end, so this bounds its work
    as well as its memory.
    """

    def __init__(self, body: bytes, budget: int) -> None:
        super().__init__(body)  # shares body's buffer: nothing is copied
        self._size = len(body)
        self._left = budget

    def read(self, size: int | None = -1) -> bytes:
        asked = self._size - self.tell() if size is None or size < 0 else size
        self._left -= max(asked, 1)
        if self._left < 0:
            raise _ReadBudgetExceeded
        return super().read(size)
