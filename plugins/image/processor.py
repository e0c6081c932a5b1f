"""The ``image`` processor: img2dataset's decode, filter, blur, resize and encode.

Output geometry, filters, messages and metadata match img2dataset (reference
section 5); the pixels are corrected where img2dataset is wrong:

- the header is read first, and images over ``max_image_pixels`` are refused
  before any pixel is decoded (decompression-bomb guard);
- large JPEGs are decoded at reduced resolution when the target is much
  smaller (libjpeg's DCT scaling); the output size is unchanged; an area
  downscale by up to 4 goes through twice the target size (``resize.scale``);
  ``exact_resize`` turns both shortcuts off;
- EXIF orientation is applied, 16-bit images are scaled to 8 bit, every kind
  of transparency is composited on white, truncated files are rejected;
- the bbox blur has its pre-1.46 strength (see ``blur.py``);
- ``disable_all_reencoding`` stores the bytes under their real extension;
- the exif column is bounded: exifread may read only so much of the file, and
  the JSON is capped (``max_exif_bytes``, ``max_exif_value_bytes``); a capped
  one says so with ``"_truncated": true``.

This module is what the main process loads (options, routing, metadata columns); the work on
pixels is in ``transcode``, imported on the first image, so that Pillow and OpenCV load only where
images are processed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from any2ds import FetchResult, Processor, SampleResult, hookimpl
from any2ds_plugins.image.errors import FAILED_TO_RESIZE
from any2ds_plugins.image.options import ImageOptions

if TYPE_CHECKING:
    from any2ds_plugins.image.transcode import Transcoder


@functools.cache
def _decodable_media_types() -> tuple[str, ...]:
    """What a run routing by type sends here: the image types Pillow registers (SVG, HEIC without a
    plugin, ... go elsewhere), and the registered name of ICO besides Pillow's."""
    from PIL import Image  # here: a main process that only plans loads no Pillow (2.2 MB, 10 ms)

    Image.init()
    return tuple(sorted({mime for mime in Image.MIME.values() if mime.startswith("image/")}
                        | {"image/vnd.microsoft.icon"}))


class _DecodableMediaTypes:
    """``ImageProcessor.media_types``, listed when first read: listing them imports every Pillow
    plugin (3.6 MB and 34 ms in each process), which a run not routing by type never reads."""

    def __get__(self, instance: object, owner: type) -> tuple[str, ...]:
        return _decodable_media_types()


class ImageProcessor(Processor):
    """Decodes an image, filters it, blurs its boxes, resizes and re-encodes it (thread-safe)."""

    name = "image"
    Options = ImageOptions
    failure_status = FAILED_TO_RESIZE  # also for unexpected errors (cv2, numpy), as img2dataset counts them
    media_types = _DecodableMediaTypes()

    options: ImageOptions

    def __init__(self, options: ImageOptions) -> None:
        super().__init__(options)
        self._transcoder: Transcoder | None = None

    def read_columns(self) -> Sequence[str]:
        return (self.options.bbox_col,) if self.options.bbox_col else ()

    def kept_columns(self) -> Sequence[str]:
        return self.read_columns()

    def media_streams(self) -> Sequence[str]:
        return [self.options.encode_format]

    def estimate_bytes(self) -> tuple[int, str] | None:
        """From the output's pixels and typical compression of photos; None when the output keeps
        the original sizes (resize_mode no, no re-encoding)."""
        options = self.options
        if options.disable_all_reencoding or options.resize_mode == "no":
            return None
        side = options.image_size
        # keep_ratio* give one side image_size: count a 4:3 picture.
        pixels = {"keep_ratio": side * side * 4 // 3, "keep_ratio_largest": side * side * 3 // 4}.get(
            options.resize_mode, side * side)
        per_pixel = _BYTES_PER_PIXEL[options.encode_format](options.encode_quality)
        return int(pixels * per_pixel), (f"{options.encode_format} of {pixels:,} pixels (image_size {side}, "
                                         f"{options.resize_mode}) at about {per_pixel:.2f} bytes per pixel, "
                                         f"typical of photos")

    def metadata_fields(self) -> Sequence[pa.Field]:
        fields = [pa.field(name, pa.int32()) for name in ("width", "height", "original_width", "original_height")]
        if self.options.extract_exif:
            fields.append(pa.field("exif", pa.string()))
        return fields

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        """Store the processed image under ``encode_format`` with its sizes (and EXIF); raise ProcessError.

        An image legal by its size whose pixels do not fit in the memory left
        fails as ``image.out_of_memory``, with one fixed message.
        """
        if self._transcoder is None:
            # OpenCV is imported here, in the processes that process images: the main process only plans.
            from any2ds_plugins.image.transcode import Transcoder
            self._transcoder = Transcoder(self.options)
        self._transcoder.process(fetched, result)


# Bytes per pixel of photos by format and encode_quality, for estimates (``any2ds plan``): JPEG
# is about 0.15 at quality 75 and 0.4 at 95; WebP about 60% of that; PNG does not shrink photos much.
_BYTES_PER_PIXEL = {
    "jpg": lambda quality: 0.08 + 0.35 * (quality / 100) ** 3,
    "webp": lambda quality: 0.6 * (0.08 + 0.35 * (min(quality, 100) / 100) ** 3) if quality <= 100 else 1.2,
    "png": lambda level: 1.8,
}


@hookimpl
def any2ds_register_processors(register: Callable[[type[Processor]], None]) -> None:
    register(ImageProcessor)
