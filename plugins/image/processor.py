"""The ``image`` processor: img2dataset's decode, filter, blur, resize and encode.

Output geometry, filters, messages and metadata match img2dataset (reference
section 5); the pixels are corrected where img2dataset is wrong:

- the header is read first, and images over ``max_image_pixels`` are refused
  before any pixel is decoded (decompression-bomb guard);
- large JPEGs are decoded at reduced resolution when the target is much
  smaller (libjpeg's DCT scaling); the output size is unchanged; an area
  downscale by up to 4 goes through twice the target size (``geometry.scale``);
  ``exact_resize`` turns both shortcuts off;
- EXIF orientation is applied, 16-bit images are scaled to 8 bit, every kind
  of transparency is composited on white, truncated files are rejected;
- the bbox blur has its pre-1.46 strength (see ``blur.py``);
- ``disable_all_reencoding`` stores the bytes under their real extension;
- the exif column is bounded: exifread may read only so much of the file, and
  the JSON is capped (``max_exif_bytes``, ``max_exif_value_bytes``); a capped
  one says so with ``"_truncated": true``.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, Optional, get_args

import attrs
import cv2
import exifread
import numpy as np
import pyarrow as pa
from PIL import ExifTags, Image, ImageOps

from any2ds import (
    FetchResult, Media, ProcessError, Processor, SampleResult, at_least, greater_than, hookimpl, one_of, option,
)
from any2ds_plugins.image.blur import blur_boxes
from any2ds_plugins.image.geometry import (
    INTERPOLATION_FLAGS,
    RESIZE_MODES,
    Interpolation,
    ResizeMode,
    ResizePlan,
    crop_or_pad,
    plan_resize,
    scale,
)

# This processor enforces its own pixel limit (max_image_pixels) before decoding;
# Pillow's fixed-limit warning would only repeat it, once per worker process.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# exifread logs a warning for every image without EXIF (every PNG and WebP): noise at dataset scale.
logging.getLogger("exifread").setLevel(logging.ERROR)
# Pillow warns once per damaged EXIF tag ("Tag data larger than file. Skipping tag 49152"): one
# hostile file wrote thousands of lines to the worker's stderr, about that file alone.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

EncodeFormat = Literal["jpg", "png", "webp"]
ENCODE_FORMATS: tuple[str, ...] = get_args(EncodeFormat)

FAILED_TO_RESIZE = "failed_to_resize"
DECODING_ERROR = "Image decoding error"
OUT_OF_MEMORY = "not enough memory to process the image"
ENCODE_PARAMETERS = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "png": cv2.IMWRITE_PNG_COMPRESSION,
                     "webp": cv2.IMWRITE_WEBP_QUALITY}

# What a run routing by type sends here: the image types Pillow registers (SVG, HEIC without a
# plugin, ... go elsewhere), and the registered name of ICO besides Pillow's.
Image.init()
DECODABLE_MEDIA_TYPES = tuple(sorted({mime for mime in Image.MIME.values() if mime.startswith("image/")}
                                     | {"image/vnd.microsoft.icon"}))

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's default hard limit: 2 x PIL.Image.MAX_IMAGE_PIXELS

# Pillow format name -> file extension, where the first one Pillow registers is not the usual one.
USUAL_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                    "TIFF": "tiff", "ICO": "ico", "AVIF": "avif", "JPEG2000": "jp2"}

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

ORIENTATION = ExifTags.Base.Orientation
REORIENTING_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations exif_transpose acts on
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # those that swap width and height
NATIVE_MODES = ("RGB", "L")  # stored as decoded: 3-channel colour, or 1-channel grayscale like img2dataset
GRAY_MODES = ("1", "L", "LA", "La")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# OpenCV's JPEG decoding at 1/f of the size: f -> (colour flag, grayscale flag).
JPEG_REDUCTIONS = {1: (cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE),
                   2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
                   4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                   8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8)}
JPEG_MAGIC, JPEG_ONLY = b"\xff\xd8\xff", ("JPEG",)
CV2_ROTATIONS = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}


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
        one_of(tuple(INTERPOLATION_FLAGS)),
    )
    downscale_interpolation: Interpolation = option(
        "area", "Interpolation when shrinking: nearest, linear, cubic, area or lanczos.",
        one_of(tuple(INTERPOLATION_FLAGS)),
    )
    exact_resize: bool = option(
        False, "Decode at full resolution and resize in one step at the exact ratio, as img2dataset does. "
        "Off, large JPEGs are decoded at 1/2, 1/4 or 1/8 of their size (keeping at least 1.75 times the "
        "target) and area downscales by up to 4 go through twice the target size: a quarter less CPU per "
        "image, the outputs within 53 dB of exact ones on average (docs/performance.md).",
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


class ImageProcessor(Processor):
    """Decodes an image, filters it, blurs its boxes, resizes and re-encodes it (thread-safe)."""

    name = "image"
    Options = ImageOptions
    failure_status = FAILED_TO_RESIZE  # also for unexpected errors (cv2, numpy), as img2dataset counts them
    media_types = DECODABLE_MEDIA_TYPES

    options: ImageOptions

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
        try:
            self._process(fetched, result)
        except (MemoryError, cv2.error) as exc:
            if not _is_out_of_memory(exc):
                raise
            raise _failure(OUT_OF_MEMORY, "image.out_of_memory") from exc

    def _process(self, fetched: FetchResult, result: SampleResult) -> None:
        boxes = self._bounding_boxes(result)
        with _open_header(fetched.body, self.options.max_image_pixels) as image:
            self._check_source_size(*image.size)
            if self.options.disable_all_reencoding:
                media = Media(fetched.body, _extension_of(image.format))
                output_size = original_size = image.size
            else:
                media, output_size, original_size = self._transcode(image, fetched.body, boxes)
        result.media[self.options.encode_format] = media
        result.metadata.update(width=output_size[0], height=output_size[1],
                               original_width=original_size[0], original_height=original_size[1])
        if self.options.extract_exif:
            result.metadata["exif"] = _exif_json(fetched.body, self.options.max_exif_bytes,
                                                 self.options.max_exif_value_bytes)

    def _bounding_boxes(self, result: SampleResult) -> np.ndarray | None:
        """The sample's boxes as an (N, 4) float array, or None when there is nothing to blur."""
        if not self.options.bbox_col:
            return None
        value = result.sample.columns.get(self.options.bbox_col)
        if value is None or len(value) == 0:
            return None
        try:
            return np.asarray(value, dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError) as exc:
            message = f"bbox_col {self.options.bbox_col!r} must hold [x0, y0, x1, y1] boxes"
            raise _failure(message, "image.invalid_boxes") from exc

    def _check_source_size(self, width: int, height: int) -> None:
        """The bomb guard, then img2dataset's filters in its order (all invariant under rotation)."""
        options = self.options
        if width * height > options.max_image_pixels:
            raise _too_large(options.max_image_pixels)
        if min(width, height) < options.min_image_size:
            raise _failure("image too small", "filtered")
        if width * height > options.max_image_area:
            raise _failure("image area too large", "filtered")
        if max(width, height) / max(min(width, height), 1) > options.max_aspect_ratio:
            raise _failure("aspect ratio too large", "filtered")

    def _plan(self, width: int, height: int) -> ResizePlan:
        """img2dataset's geometry for a source of this displayed size, its output bounded by max_image_pixels."""
        options = self.options
        plan = plan_resize(width, height, image_size=options.image_size, resize_mode=options.resize_mode,
                           resize_only_if_bigger=options.resize_only_if_bigger,
                           downscale_interpolation=options.downscale_interpolation,
                           upscale_interpolation=options.upscale_interpolation)
        scaled_width, scaled_height = plan.scaled_size
        if scaled_width * scaled_height > options.max_image_pixels:
            raise _failure(f"resized image too large (more than max_image_pixels={options.max_image_pixels} pixels)",
                           "too_large")
        return plan

    def _transcode(self, image: Image.Image, body: bytes,
                   boxes: np.ndarray | None) -> tuple[Media, tuple[int, int], tuple[int, int]]:
        """Decode, blur, resize and encode; return the media, output size and displayed source size."""
        options = self.options
        try:
            orientation = image.getexif().get(ORIENTATION, 1)
            stored_width, stored_height = image.size
            transposed = orientation in TRANSPOSING_ORIENTATIONS
            original_size = (stored_height, stored_width) if transposed else (stored_width, stored_height)
            plan = self._plan(*original_size)
            shrink_to = None if options.exact_resize else plan.shrink_on_load_size()
            stored_shrink = None if shrink_to is None else (shrink_to[::-1] if transposed else shrink_to)
            pixels = _decode_jpeg(image, body, stored_shrink, orientation)
            converted, bgr = False, pixels is not None
            if pixels is None:  # not a plain JPEG: Pillow, shrinking on load where it can
                if stored_shrink is not None and image.format in ("JPEG", "MPO"):
                    image.draft(image.mode, stored_shrink)
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                pixels, converted = _to_array(image)
        except ProcessError:
            raise
        except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
            raise _library_failure(exc, DECODING_ERROR, "decode") from exc

        pixels = scale(pixels, plan, exact=options.exact_resize)
        if boxes is not None:
            pixels = blur_boxes(pixels, boxes)
        pixels = crop_or_pad(pixels, plan)

        reoriented = orientation in REORIENTING_ORIENTATIONS
        unchanged = not (converted or reoriented or plan.changes_geometry or boxes is not None)
        if options.skip_reencode and unchanged and _extension_of(image.format) == options.encode_format:
            data = body
        else:
            data = _encode(pixels, options.encode_format, options.encode_quality, bgr)
        return Media(data, options.encode_format), plan.output_size, original_size


def _decode_jpeg(image: Image.Image, body: bytes, shrink_to: tuple[int, int] | None,
                 orientation: int) -> np.ndarray | None:
    """A plain JPEG (colour or grayscale, complete) decoded by OpenCV, upright: BGR (H, W, 3) or
    (H, W); None for anything else, which Pillow decodes.

    OpenCV decodes straight into the array the resize reads, in the channel order its encoder
    takes (no copy out of a Pillow image, no colour conversion before encoding), and reduces
    by 2, 4 or 8 while decoding (libjpeg's DCT scaling, as Pillow's ``draft``) down to
    ``shrink_to`` (stored width, height) at least. EXIF orientation is applied to the reduced
    pixels. OpenCV would decode a truncated file, greying its missing part, where Pillow fails:
    a file without its end of image marker after its last scan goes to Pillow.
    """
    if image.format != "JPEG" or image.mode not in NATIVE_MODES:
        return None
    if body.rfind(b"\xff\xd9") < body.rfind(b"\xff\xda"):
        return None
    factor = 1
    if shrink_to is not None:
        width, height = image.size
        factor = max((f for f in JPEG_REDUCTIONS if -(-width // f) >= shrink_to[0] and -(-height // f) >= shrink_to[1]),
                     default=1)
    pixels = cv2.imdecode(np.frombuffer(body, np.uint8), JPEG_REDUCTIONS[factor][image.mode == "L"]
                          | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        return None
    return _upright(pixels, orientation)


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` as EXIF ``orientation`` says to show them (what Pillow's exif_transpose does)."""
    if orientation in CV2_ROTATIONS:
        return cv2.rotate(pixels, CV2_ROTATIONS[orientation])
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    return pixels


def _open_header(body: bytes, max_image_pixels: int) -> Image.Image:
    """Open ``body`` lazily: only the header is parsed, no pixel is decoded.

    Pillow's own hard limit applies here, before ours; report it like ours.
    """
    try:
        # A JPEG's magic bytes: Pillow then builds the JPEG reader alone, not each reader whose
        # check the bytes pass before JPEG's (0.3 ms a JPEG).
        return Image.open(io.BytesIO(body), formats=JPEG_ONLY if body[:3] == JPEG_MAGIC else None)
    except Image.DecompressionBombError as exc:
        raise _too_large(max_image_pixels) from exc
    except Exception as exc:
        raise _library_failure(exc, DECODING_ERROR, "decode") from exc


# Bytes per pixel of photos by format and encode_quality, for estimates (``any2ds plan``): JPEG
# is about 0.15 at quality 75 and 0.4 at 95; WebP about 60% of that; PNG does not shrink photos much.
_BYTES_PER_PIXEL = {
    "jpg": lambda quality: 0.08 + 0.35 * (quality / 100) ** 3,
    "webp": lambda quality: 0.6 * (0.08 + 0.35 * (min(quality, 100) / 100) ** 3) if quality <= 100 else 1.2,
    "png": lambda level: 1.8,
}


def _failure(message: str, error_type: str) -> ProcessError:
    """A failed sample: img2dataset's status and message, plus an error class for any2ds's stats."""
    return ProcessError(message, status=FAILED_TO_RESIZE, error_type=error_type)


def _library_failure(exc: Exception, message: str, error_type: str) -> ProcessError:
    """The failure for an exception from Pillow, numpy or OpenCV: out of memory, or the one given."""
    if _is_out_of_memory(exc):
        return _failure(OUT_OF_MEMORY, "image.out_of_memory")
    return _failure(message, error_type)


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError (Pillow, numpy) or OpenCV's allocation failure; their messages hold per-image sizes."""
    return isinstance(exc, MemoryError) or (isinstance(exc, cv2.error) and exc.code == cv2.Error.StsNoMem)


def _too_large(limit: int) -> ProcessError:
    """The bomb-guard failure; one fixed message per run, so status counters stay small."""
    return _failure(f"image too large to decode (more than max_image_pixels={limit} pixels)", "too_large")


def _to_array(image: Image.Image) -> tuple[np.ndarray, bool]:
    """The decoded image as uint8 RGB (H, W, 3) or grayscale (H, W); and whether its pixels were converted.

    16-bit values are scaled to 8 bit (img2dataset saturated them to white);
    transparency of any kind (alpha channel, palette or tRNS) is composited
    on white; other modes (CMYK, P, YCbCr, ...) become RGB.
    """
    mode = image.mode
    if mode in NATIVE_MODES and "transparency" not in image.info:
        return np.asarray(image), False
    if mode in SIXTEEN_BIT_MODES:  # round(v / 257) in integers: 65535 -> 255
        values = np.asarray(image).clip(0, 65535).astype(np.uint32)
        return ((values + 128) // 257).astype(np.uint8), True
    if mode in ALPHA_MODES or "transparency" in image.info:
        gray = mode in GRAY_MODES
        with_alpha = np.asarray(image.convert("LA" if gray else "RGBA")).astype(np.uint16)
        colour, alpha = with_alpha[..., :-1], with_alpha[..., -1:]
        # img2dataset's rint(colour * alpha / 255 + 255 - alpha), exactly, in 16-bit integers.
        composited = ((colour * alpha + 127) // 255 + 255 - alpha).astype(np.uint8)
        return (composited[..., 0] if gray else composited), True
    if mode == "1":
        return np.asarray(image.convert("L")), True
    return np.asarray(image.convert("RGB")), True


def _encode(pixels: np.ndarray, encode_format: str, quality: int, bgr: bool = False) -> bytes:
    """cv2-encode RGB (or, with ``bgr``, BGR) or grayscale pixels with only the quality/compression
    parameter, like img2dataset."""
    if pixels.ndim == 3 and not bgr:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(f".{encode_format}", pixels, [ENCODE_PARAMETERS[encode_format], quality])
    except cv2.error as exc:  # e.g. WebP's 16383-pixel side limit
        raise _library_failure(exc, "Image encoding error", "encode") from exc
    if not ok:
        raise _failure("Image encoding error", "encode")
    return encoded.tobytes()


def _extension_of(pil_format: str) -> str:
    """The usual file extension of a format Pillow detected (``JPEG`` -> ``jpg``)."""
    if pil_format in USUAL_EXTENSIONS:
        return USUAL_EXTENSIONS[pil_format]
    registered = [ext for ext, fmt in Image.registered_extensions().items() if fmt == pil_format]
    return registered[0].lstrip(".") if registered else pil_format.lower()


def _exif_json(body: bytes, max_bytes: int, max_value_bytes: int) -> str | None:
    """img2dataset's exif column: the original bytes' EXIF tags as JSON, ``"{}"`` if none, None if unreadable.

    Bounded: see EXIF_READ_BUDGET and :func:`_capped_json`. A JPEG whose header segments hold no
    ``Exif`` APP1 has none: exifread is not run (most web JPEGs; it costs 0.1-0.2 ms each).
    """
    if body[:3] == JPEG_MAGIC and body.find(b"Exif\x00", 0, max(body.find(b"\xff\xda"), 0)) < 0:
        return "{}"
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


@hookimpl
def any2ds_register_processors(register: Callable[[type[Processor]], None]) -> None:
    register(ImageProcessor)
