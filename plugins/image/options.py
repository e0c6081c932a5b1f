"""The image processor's options: img2dataset's names and defaults, plus any2ds's own."""

from __future__ import annotations

import json
from typing import Literal, Optional, get_args

import attrs

from any2ds import at_least, greater_than, one_of, option
from any2ds_plugins.image.exif import DEFAULT_MAX_EXIF_BYTES, DEFAULT_MAX_EXIF_VALUE_BYTES, ELLIPSIS, MIN_EXIF_BYTES
from any2ds_plugins.image.geometry import INTERPOLATIONS, RESIZE_MODES, Interpolation, ResizeMode

EncodeFormat = Literal["jpg", "png", "webp"]
ENCODE_FORMATS: tuple[str, ...] = get_args(EncodeFormat)

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's default hard limit: 2 x PIL.Image.MAX_IMAGE_PIXELS


@attrs.frozen
class ImageOptions:
    """Options of the image processor (img2dataset's names and defaults, plus max_image_pixels)."""

    image_size: int = option(256, "Target size in pixels; what it means depends on resize_mode.", greater_than(0))
    resize_mode: ResizeMode = option(
        "border",
        "no: keep the size; keep_ratio: smallest side to image_size; keep_ratio_largest: longest side to "
        "image_size; center_crop: keep_ratio then a centred square crop; border: keep_ratio_largest then "
        "white padding to a square.",
        one_of(RESIZE_MODES),
    )
    resize_only_if_bigger: bool = option(
        False, "Resize only images whose fitted side is larger than image_size; leave smaller ones untouched."
    )
    upscale_interpolation: Interpolation = option(
        "lanczos", "Interpolation when enlarging: nearest, linear, cubic, area or lanczos.",
        one_of(INTERPOLATIONS),
    )
    downscale_interpolation: Interpolation = option(
        "area", "Interpolation when shrinking: nearest, linear, cubic, area or lanczos.",
        one_of(INTERPOLATIONS),
    )
    exact_resize: bool = option(
        False, "Decode at full resolution and resize in one step at the exact ratio, as img2dataset does. "
        "Off, large JPEGs are decoded at 1/2, 1/4 or 1/8 of their size (keeping at least 1.5 times the "
        "target) and their area downscales by up to 4 go through twice the target size (by up to 1.2, one "
        "bilinear resample): a quarter less CPU per image, the outputs within 53 dB of exact ones on "
        "average (docs/performance.md). Other formats (PNG, GIF, WebP...) are always resized exactly.",
    )
    encode_quality: int = option(
        95, "JPEG/WebP quality (0-100; WebP above 100 is lossless); for png the compression level 0-9."
    )
    encode_format: EncodeFormat = option(
        "jpg", "Stored format: jpg, png or webp; also the extension and the parquet column name.",
        one_of(ENCODE_FORMATS),
    )
    skip_reencode: bool = option(
        False, "Keep the original bytes when the image needs no change and is already in encode_format."
    )
    disable_all_reencoding: bool = option(
        False, "Store the downloaded bytes untouched (no resize, no blur) under their real extension."
    )
    min_image_size: int = option(0, "Refuse images whose smallest side is below this.", at_least(0))
    max_image_area: float = option(float("inf"), "Refuse images with more pixels (width x height) than this.",
                                   greater_than(0))
    max_aspect_ratio: float = option(float("inf"), "Refuse images whose longest/shortest side ratio exceeds this.",
                                     at_least(1))
    max_image_pixels: int = option(
        DEFAULT_MAX_IMAGE_PIXELS,
        "Decompression-bomb guard: refuse, before decoding, images (and resize outputs) with more pixels "
        "than this. Pillow itself refuses above 2 x PIL.Image.MAX_IMAGE_PIXELS.",
        greater_than(0),
    )
    bbox_col: Optional[str] = option(
        None, "Input column of [x0, y0, x1, y1] boxes (fractions of the image) to blur; saved in the metadata."
    )
    extract_exif: bool = option(True, "Add an exif column: the original image's EXIF tags as a JSON string.")
    max_exif_bytes: int = option(
        DEFAULT_MAX_EXIF_BYTES,
        "Largest exif JSON, in bytes: past it the longest values are left out first and the JSON gets "
        '"_truncated": true.',
        at_least(MIN_EXIF_BYTES),
    )
    max_exif_value_bytes: int = option(
        DEFAULT_MAX_EXIF_VALUE_BYTES,
        'Longest EXIF value in the exif JSON, in bytes: longer ones are cut, end with "...", and the JSON gets '
        '"_truncated": true.',
        at_least(len(json.dumps(ELLIPSIS))),
    )

    def __attrs_post_init__(self) -> None:
        """Checks that involve two options."""
        lowest, highest = {"jpg": (0, 100), "png": (0, 9), "webp": (1, None)}[self.encode_format]
        if self.encode_quality < lowest or (highest is not None and self.encode_quality > highest):
            allowed = f"{lowest}-{highest}" if highest is not None else f"{lowest} or more"
            what = "compression level" if self.encode_format == "png" else "quality"
            raise ValueError(
                f"encode_quality is the {self.encode_format} {what} and must be {allowed}, got {self.encode_quality}"
            )
        if self.bbox_col is not None and self.disable_all_reencoding:
            raise ValueError("bbox_col blurs images, which disable_all_reencoding forbids; unset one of them")

