"""A plain JPEG's header read without Pillow: what Pillow reads, or None and Pillow reads it."""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
from PIL import Image

from any2ds.errors import ProcessError
from any2ds.types import FetchResult, Sample, SampleResult
from any2ds_plugins.image import transcode
from any2ds_plugins.image.jpeg_header import JpegHeader, read_jpeg_header
from any2ds_plugins.image.processor import ImageOptions, ImageProcessor


def jpeg(mode: str = "RGB", size: tuple[int, int] = (48, 32), **save) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, save.pop("format", "JPEG"), **save)
    return out.getvalue()


def exif(orientation: int | None = None, endian: str = "<") -> Image.Exif:
    data = Image.Exif()
    data.endian = endian
    data[0x010F] = "camera"  # Make, an ASCII entry before the orientation
    if orientation is not None:
        data[0x0112] = orientation
    return data


def pillows(body: bytes) -> JpegHeader:
    with Image.open(io.BytesIO(body)) as image:
        return JpegHeader(image.size, image.mode, image.getexif().get(0x0112, 1))


def with_segment(body: bytes, marker: int, payload: bytes) -> bytes:
    """``body`` with one more segment right after its start of image."""
    return body[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + body[2:]


def tiff(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF APP1 payload of one directory of (tag, type, count, 4 value bytes)."""
    directory = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI4s", *entry) for entry in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0)


@pytest.mark.parametrize("body", [
    pytest.param(jpeg(), id="rgb"),
    pytest.param(jpeg("L"), id="grayscale"),
    pytest.param(jpeg(progressive=True), id="progressive"),
    pytest.param(jpeg(size=(1, 70)), id="one-pixel-wide"),
    pytest.param(jpeg(exif=exif()), id="exif-without-orientation"),
    *(pytest.param(jpeg(exif=exif(o)), id=f"orientation-{o}") for o in range(1, 9)),
    pytest.param(jpeg(exif=exif(6, ">")), id="big-endian-exif"),
    pytest.param(with_segment(jpeg(), 0xE1, tiff([(0x0112, 4, 1, struct.pack("<I", 8))])), id="orientation-as-long"),
    pytest.param(jpeg(exif=exif(3), icc_profile=b"\x00" * 4000, dpi=(300, 300)), id="with-icc-and-dpi"),
])
def test_reads_what_pillow_reads(body):
    assert read_jpeg_header(body) == pillows(body)


XMP = b'<x:xmpmeta><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
TWO_EXIFS = with_segment(jpeg(exif=exif(6)), 0xE1, tiff([(0x0112, 3, 1, struct.pack("<H", 3) + b"\0\0")]))


@pytest.mark.parametrize("body", [
    pytest.param(jpeg("CMYK"), id="cmyk"),
    pytest.param(jpeg(format="MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))]), id="multi-picture"),
    pytest.param(jpeg(xmp=XMP), id="orientation-in-xmp"),
    pytest.param(TWO_EXIFS, id="two-exif-segments"),
    pytest.param(with_segment(jpeg(), 0xE1, tiff([(0x0112, 3, 2, b"\x06\0\x06\0")])), id="two-orientation-values"),
    pytest.param(with_segment(jpeg(), 0xE1, tiff([(0x0112, 5, 1, struct.pack("<I", 8))])),
                 id="orientation-as-rational"),
    pytest.param(with_segment(jpeg(), 0xE1, tiff([(0x010F, 2, 64, struct.pack("<I", 4000)),
                                                  (0x0112, 3, 1, b"\x06\0\0\0")])), id="data-past-the-end"),
    pytest.param(with_segment(jpeg(), 0xE1, tiff([(0x010F, 99, 1, b"\0" * 4),
                                                  (0x0112, 3, 1, b"\x06\0\0\0")])), id="unknown-type"),
    pytest.param(with_segment(jpeg(), 0xE1, b"Exif\x00\x00XX*\x00" + b"\0" * 16), id="not-tiff"),
    pytest.param(jpeg()[:2] + b"\x00\x00" + jpeg()[2:], id="junk-before-a-marker"),
    pytest.param(jpeg()[:2] + b"\xff" + jpeg()[2:], id="fill-byte"),
    pytest.param(jpeg()[:jpeg().find(b"\xff\xda")], id="no-scan"),
    pytest.param(jpeg()[:jpeg().find(b"\xff\xc0") + 6], id="cut-in-the-frame-header"),
    pytest.param(jpeg(format="PNG"), id="png"),
    pytest.param(b"", id="empty"),
])
def test_leaves_to_pillow_what_it_does_not_read_without_doubt(body):
    assert read_jpeg_header(body) is None


def test_pillow_reads_orientation_where_the_header_reader_declines():
    """The declined cases above matter: Pillow reads an orientation there, or joins segments."""
    with Image.open(io.BytesIO(jpeg(xmp=XMP))) as image:
        assert image.getexif().get(0x0112) == 3
    with Image.open(io.BytesIO(TWO_EXIFS)) as image:  # the first segment's, with the second appended
        assert image.getexif().get(0x0112) == 3


def outcome(body: bytes, options: ImageOptions) -> tuple:
    result = SampleResult(Sample(key="0", shard_id=0, index=0, url="http://x/img"))
    try:
        ImageProcessor(options).process(FetchResult(body, "http://x/img"), result)
    except ProcessError as error:
        return ("failed", error.error_type, error.message)
    return ("ok", {stream: media.data for stream, media in result.media.items()}, result.metadata)


def test_a_file_turns_out_the_same_whichever_reads_its_header(monkeypatch):
    """Headers damaged at random (bytes changed in the header or in the EXIF, cut short): the
    processor's outcome with the header read without Pillow is the outcome with Pillow reading it."""
    rng = random.Random(0)
    sources = [jpeg(exif=exif(o, endian)) for o in (1, 3, 6, 8) for endian in "<>"] + [jpeg("L"), jpeg()]
    bodies = []
    for source in sources:
        scan = source.find(b"\xff\xda")
        start = source.find(b"Exif")
        for _ in range(25):
            damaged = bytearray(source)
            low = start if start > 0 and rng.random() < 0.6 else 2
            for _ in range(rng.choice((1, 2, 3))):
                damaged[rng.randrange(low, scan + 8)] = rng.choice((0, 1, 3, 4, 0xFF, rng.randrange(256)))
            bodies.append(bytes(damaged))
        bodies.append(source[:rng.randrange(2, scan + 16)])
    options = ImageOptions(image_size=32, resize_mode="border", encode_format="png", encode_quality=1)
    read_without_pillow = sum(read_jpeg_header(body) is not None for body in bodies)
    assert read_without_pillow > len(bodies) // 3  # the comparison covers the reader, not only Pillow
    without_pillow = [outcome(body, options) for body in bodies]
    monkeypatch.setattr(transcode, "read_jpeg_header", lambda body: None)
    assert [outcome(body, options) for body in bodies] == without_pillow


def test_pillows_own_pixel_limit_holds_for_a_header_read_without_pillow(monkeypatch):
    """Pillow's hard limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, a setting of its users) refuses a
    JPEG whose header Pillow did not read, as it refuses one it read."""
    body = jpeg(size=(48, 32))
    options = ImageOptions(image_size=16)
    assert outcome(body, options)[0] == "ok"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1,536 pixels > 2 x 700
    refused = outcome(body, options)
    assert refused[:2] == ("failed", "too_large")
    monkeypatch.setattr(transcode, "read_jpeg_header", lambda body: None)
    assert outcome(body, options) == refused
