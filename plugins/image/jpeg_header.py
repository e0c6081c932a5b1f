"""What the image processor needs from a plain JPEG's header, read without Pillow.

Pillow's JPEG reader parses every segment up to the first scan in Python (its
quantization tables into lists, the EXIF for a resolution): 37 us a file in a
tight loop, about 90 us between decodes. This walk reads the frame header and
the EXIF orientation in about 2 us. It reads only what leaves no doubt: on
anything else it answers None, and Pillow reads the header as before, so what
a file turns into does not depend on which of the two read it.
"""

from __future__ import annotations

import struct

import attrs

SOI = b"\xff\xd8"
SOS = 0xDA
# Frames OpenCV decodes as Pillow does: baseline, extended and progressive, Huffman-coded.
HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)
# Every other start-of-frame marker (lossless, hierarchical, arithmetic-coded): Pillow reads those.
OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
APP1, APP2 = 0xE1, 0xE2
EXIF_PREFIX = b"Exif\x00\x00"
XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"  # Pillow reads an orientation there when the EXIF has none
MPF_PREFIX = b"MPF\x00"  # a multi-picture file: Pillow opens it as MPO
TIFF_ORDERS = {b"II*\x00": "<", b"MM\x00*": ">"}
ORIENTATION_TAG = 0x0112
SHORT, LONG = 3, 4
# TIFF field types -> bytes per value (BYTE, ASCII, SHORT, LONG, RATIONAL, their signed kinds,
# UNDEFINED, FLOAT, DOUBLE, IFD): a value of more than 4 bytes lies elsewhere, at an offset.
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
NO_ORIENTATION = 0  # not an orientation's value: the EXIF has none
MODES = {1: "L", 3: "RGB"}  # components -> Pillow's mode


@attrs.frozen
class JpegHeader:
    """A plain JPEG's stored ``size`` (width, height), Pillow's ``mode`` for it (``L`` or ``RGB``)
    and its EXIF ``orientation`` (1 when it has none), as Pillow would read them."""

    size: tuple[int, int]
    mode: str
    orientation: int


def read_jpeg_header(body: bytes) -> JpegHeader | None:
    """The header of ``body`` if it is a plain JPEG: markers back to back from its start to its
    first scan, one 8-bit Huffman-coded frame of 1 or 3 components, not a multi-picture file,
    and an orientation read without doubt (one EXIF segment, or none and no XMP); else None."""
    if not body.startswith(SOI):
        return None
    position, end = 2, len(body)
    frame: tuple[tuple[int, int], str] | None = None
    exif: tuple[int, int] | None = None
    xmp = False
    while position + 4 <= end:
        if body[position] != 0xFF:
            return None  # junk between segments: Pillow's to read
        marker = body[position + 1]
        if marker < 0xC0 or 0xD0 <= marker <= 0xD9 or marker == 0xFF:
            return None  # a fill byte, or a marker without a length: Pillow's to read
        segment = position + 4
        position += 2 + ((body[position + 2] << 8) | body[position + 3])
        if position > end or position < segment:
            return None
        if marker == SOS:
            if frame is None:
                return None
            orientation = NO_ORIENTATION if exif is None else _orientation(body, *exif)
            if orientation is None or (orientation == NO_ORIENTATION and xmp):
                return None
            return JpegHeader(frame[0], frame[1], orientation or 1)
        if marker in HUFFMAN_FRAMES:
            if frame is not None or position - segment < 6 or body[segment] != 8:
                return None
            height, width = struct.unpack_from(">HH", body, segment + 1)
            mode = MODES.get(body[segment + 5])
            if mode is None or height == 0 or width == 0:
                return None
            frame = ((width, height), mode)
        elif marker in OTHER_FRAMES:
            return None
        elif marker == APP1 and body.startswith(EXIF_PREFIX, segment):
            if exif is not None:
                return None  # Pillow joins several EXIF segments
            exif = (segment + len(EXIF_PREFIX), position)
        elif marker == APP1 and body.startswith(XMP_PREFIX, segment):
            xmp = True
        elif marker == APP2 and body.startswith(MPF_PREFIX, segment):
            return None
    return None


def _orientation(body: bytes, start: int, end: int) -> int | None:
    """The orientation in the EXIF (a TIFF structure) at ``body[start:end]``: NO_ORIENTATION when
    its first directory has none, None when the structure is not read without doubt: Pillow stops
    reading a directory at an entry whose data lies past the end, skips an entry of a type it does
    not know, and gives a tuple for several values."""
    order = TIFF_ORDERS.get(body[start:start + 4])
    if order is None or start + 8 > end:
        return None
    directory = start + struct.unpack_from(order + "I", body, start + 4)[0]
    if directory + 2 > end:
        return None
    count = struct.unpack_from(order + "H", body, directory)[0]
    if directory + 2 + 12 * count > end:
        return None
    found = None
    for entry in range(directory + 2, directory + 2 + 12 * count, 12):
        tag, kind, values, offset = struct.unpack_from(order + "HHII", body, entry)
        unit = TIFF_TYPE_BYTES.get(kind)
        if unit is None or (unit * values > 4 and start + offset + unit * values > end):
            return None
        if tag == ORIENTATION_TAG:
            if found is not None or values != 1 or kind not in (SHORT, LONG):
                return None
            found = struct.unpack_from(order + ("H" if kind == SHORT else "I"), body, entry + 8)[0]
    return NO_ORIENTATION if found is None else found
