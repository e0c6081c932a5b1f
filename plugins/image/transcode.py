"""The image processor's work on one image: decode, filter, blur, resize, encode.

Imported by :meth:`ImageProcessor.process <any2ds_plugins.image.processor.ImageProcessor.process>`
on first use: OpenCV (16 MB, 30 ms to import) is loaded where images are processed, never by a
main process that only plans the run.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import ExifTags, Image

from any2ds import FetchResult, Media, ProcessError, SampleResult
from any2ds_plugins.image.blur import blur_boxes
from any2ds_plugins.image.errors import DECODING_ERROR, OUT_OF_MEMORY, failure, too_large
from any2ds_plugins.image.exif import JPEG_MAGIC, exif_json
from any2ds_plugins.image.geometry import ResizePlan, plan_resize
from any2ds_plugins.image.jpeg_header import JpegHeader, read_jpeg_header
from any2ds_plugins.image.options import ImageOptions
from any2ds_plugins.image.resize import crop_or_pad, scale

# This processor enforces its own pixel limit (max_image_pixels) before decoding;
# Pillow's fixed-limit warning would only repeat it, once per worker process.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow warns once per damaged EXIF tag ("Tag data larger than file. Skipping tag 49152"): one
# hostile file wrote thousands of lines to the worker's stderr, about that file alone.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

ENCODE_PARAMETERS = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "png": cv2.IMWRITE_PNG_COMPRESSION,
                     "webp": cv2.IMWRITE_WEBP_QUALITY}

# Pillow format name -> file extension, where the first one Pillow registers is not the usual one.
USUAL_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                    "TIFF": "tiff", "ICO": "ico", "AVIF": "avif", "JPEG2000": "jp2"}

ORIENTATION = ExifTags.Base.Orientation
REORIENTING_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations exif_transpose acts on
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # those that swap width and height
NATIVE_MODES = ("RGB", "L")  # stored as decoded: 3-channel colour, or 1-channel grayscale like img2dataset
# Grayscale kept as one channel when composited (a tRNS value). Not LA, gray with an alpha channel:
# img2dataset's OpenCV decodes that as BGRA, so it becomes RGB.
GRAY_MODES = ("1", "L")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# OpenCV's JPEG decoding at 1/f of the size: f -> (colour flag, grayscale flag).
JPEG_REDUCTIONS = {1: (cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE),
                   2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
                   4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                   8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8)}
JPEG_ONLY = ("JPEG",)
JPEG_FORMATS = ("JPEG", "MPO")  # Pillow's names for JPEG files (MPO: several images, the first shown)
CV2_ROTATIONS = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}

# Decoded pixels as stored, and the source's extent in them when a reduced decode left a partial
# last column and row (see :func:`~any2ds_plugins.image.resize.scale`), else None.
Decoded = tuple[np.ndarray, tuple[float, float] | None]


class Transcoder:
    """What :class:`~any2ds_plugins.image.processor.ImageProcessor` does to an image, with its options
    (thread-safe)."""

    def __init__(self, options: ImageOptions) -> None:
        self.options = options
        # One image per processing thread, as many threads as the cores a worker has: OpenCV's own
        # pool would only contend for the same cores (its threads spun on sched_yield for 3% of
        # a run's CPU). img2dataset sets the same.
        cv2.setNumThreads(1)

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        """See :meth:`ImageProcessor.process <any2ds_plugins.image.processor.ImageProcessor.process>`."""
        try:
            self._process(fetched, result)
        except (MemoryError, cv2.error) as exc:
            if not _is_out_of_memory(exc):
                raise
            raise failure(OUT_OF_MEMORY, "image.out_of_memory") from exc

    def _process(self, fetched: FetchResult, result: SampleResult) -> None:
        boxes = self._bounding_boxes(result)
        body = fetched.body
        jpeg = None if self.options.disable_all_reencoding else read_jpeg_header(body)
        if jpeg is not None:  # a plain JPEG's header, read without Pillow
            _check_pillow_limit(jpeg.size, self.options.max_image_pixels)
            self._check_source_size(*jpeg.size)
            media, output_size, original_size = self._transcode(jpeg, body, boxes)
        else:
            with _open_header(body, self.options.max_image_pixels) as image:
                self._check_source_size(*image.size)
                if self.options.disable_all_reencoding:
                    media = Media(body, _extension_of(image.format))
                    output_size = original_size = image.size
                else:
                    media, output_size, original_size = self._transcode(image, body, boxes)
        result.media[self.options.encode_format] = media
        result.metadata.update(width=output_size[0], height=output_size[1],
                               original_width=original_size[0], original_height=original_size[1])
        if self.options.extract_exif:
            result.metadata["exif"] = exif_json(body, self.options.max_exif_bytes,
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
            raise failure(message, "image.invalid_boxes") from exc

    def _check_source_size(self, width: int, height: int) -> None:
        """The bomb guard, then img2dataset's filters in its order (all invariant under rotation)."""
        options = self.options
        if width * height > options.max_image_pixels:
            raise too_large(options.max_image_pixels)
        if min(width, height) < options.min_image_size:
            raise failure("image too small", "filtered")
        if width * height > options.max_image_area:
            raise failure("image area too large", "filtered")
        if max(width, height) / max(min(width, height), 1) > options.max_aspect_ratio:
            raise failure("aspect ratio too large", "filtered")

    def _plan(self, width: int, height: int) -> ResizePlan:
        """img2dataset's geometry for a source of this displayed size, its output bounded by max_image_pixels."""
        options = self.options
        plan = plan_resize(width, height, image_size=options.image_size, resize_mode=options.resize_mode,
                           resize_only_if_bigger=options.resize_only_if_bigger,
                           downscale_interpolation=options.downscale_interpolation,
                           upscale_interpolation=options.upscale_interpolation)
        scaled_width, scaled_height = plan.scaled_size
        if scaled_width * scaled_height > options.max_image_pixels:
            raise failure(f"resized image too large (more than max_image_pixels={options.max_image_pixels} pixels)",
                          "too_large")
        return plan

    def _transcode(self, source: JpegHeader | Image.Image, body: bytes,
                   boxes: np.ndarray | None) -> tuple[Media, tuple[int, int], tuple[int, int]]:
        """Decode, blur, resize and encode; return the media, output size and displayed source size.
        ``source`` is the header of a plain JPEG, or the image Pillow opened."""
        options = self.options
        try:
            if isinstance(source, JpegHeader):
                source_format, orientation = "JPEG", source.orientation
            else:
                source_format, orientation = source.format, source.getexif().get(ORIENTATION, 1)
            stored_width, stored_height = source.size
            transposed = orientation in TRANSPOSING_ORIENTATIONS
            original_size = (stored_height, stored_width) if transposed else (stored_width, stored_height)
            plan = self._plan(*original_size)
            # The shortcuts (shrink-on-load, the area downscale through twice the target) were measured
            # on photographs, JPEG's usual content. PNG, GIF, BMP and lossless WebP more often hold text,
            # line art or dithering, which the two steps alias (a text screenshot: 29 dB against cv2's
            # area resize), and their decoding costs several times what exact resizing adds (a 500 px
            # photograph as PNG: 14-15 ms, 0.6-2 ms more resized exactly).
            exact = options.exact_resize or source_format not in JPEG_FORMATS
            shrink_to = None if exact else plan.shrink_on_load_size()
            stored_shrink = None if shrink_to is None else (shrink_to[::-1] if transposed else shrink_to)
            decoded = None
            if source_format == "JPEG" and source.mode in NATIVE_MODES:
                decoded = _decode_jpeg(body, source.size, source.mode == "L", stored_shrink)
            converted, bgr = False, decoded is not None
            if decoded is None and isinstance(source, JpegHeader):  # a JPEG OpenCV does not decode
                with _open_header(body, options.max_image_pixels) as image:
                    decoded, converted = _decode_with_pillow(image, stored_shrink)
            elif decoded is None:
                decoded, converted = _decode_with_pillow(source, stored_shrink)
        except ProcessError:
            raise
        except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
            raise _library_failure(exc, DECODING_ERROR, "decode") from exc

        pixels, extent = decoded
        # Scaled as stored, then turned upright: a reduced decode's partial last row and column are
        # still where scale expects them (see its extent).
        pixels = scale(pixels, plan.transposed() if transposed else plan, exact=exact, extent=extent)
        pixels = _upright(pixels, orientation)
        if boxes is not None:
            pixels = blur_boxes(pixels, boxes)
        pixels = crop_or_pad(pixels, plan)

        reoriented = orientation in REORIENTING_ORIENTATIONS
        unchanged = not (converted or reoriented or plan.changes_geometry or boxes is not None)
        if options.skip_reencode and unchanged and _extension_of(source_format) == options.encode_format:
            data = body
        else:
            data = _encode(pixels, options.encode_format, options.encode_quality, bgr)
        return Media(data, options.encode_format), plan.output_size, original_size


def _decode_jpeg(body: bytes, size: tuple[int, int], grayscale: bool,
                 shrink_to: tuple[int, int] | None) -> Decoded | None:
    """A JPEG of stored ``size`` (colour or grayscale, complete) decoded by OpenCV as stored (not
    turned upright): BGR (H, W, 3) or (H, W), and the source's extent in it (see :func:`scale`);
    None when OpenCV does not decode it, and Pillow then does.

    OpenCV decodes straight into the array the resize reads, in the channel order its encoder
    takes (no copy out of a Pillow image, no colour conversion before encoding), and reduces
    by 2, 4 or 8 while decoding (libjpeg's DCT scaling, as Pillow's ``draft``) down to
    ``shrink_to`` (stored width, height) at least. OpenCV would decode a truncated file, greying
    its missing part, where Pillow fails: a file without its end of image marker after its last
    scan goes to Pillow.
    """
    # A scan (SOS) after the last end of image (EOI); looked for from that EOI, at the end of a
    # complete file, rather than by a backward search for the last SOS through the whole body.
    if body.find(b"\xff\xda", max(body.rfind(b"\xff\xd9"), 0)) >= 0:
        return None
    width, height = size
    factor = 1
    if shrink_to is not None:
        factor = max((f for f in JPEG_REDUCTIONS if -(-width // f) >= shrink_to[0] and -(-height // f) >= shrink_to[1]),
                     default=1)
    pixels = cv2.imdecode(np.frombuffer(body, np.uint8), JPEG_REDUCTIONS[factor][grayscale]
                          | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        return None
    partial = width % factor or height % factor
    return pixels, (width / factor, height / factor) if partial else None


def _decode_with_pillow(image: Image.Image, shrink_to: tuple[int, int] | None) -> tuple[Decoded, bool]:
    """Pillow's decode of an image OpenCV does not decode, shrunk on load to ``shrink_to`` (given
    for JPEGs only), as stored (not turned upright), with the source's extent in it (see
    :func:`scale`); and whether its pixels were converted (see :func:`_to_array`)."""
    extent = None
    if shrink_to is not None:
        drafted = image.draft(image.mode, shrink_to)
        if drafted is not None and drafted[1][2:] != image.size:
            extent = drafted[1][2:]
    image.load()
    pixels, converted = _to_array(image)
    return (pixels, extent), converted


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
        raise too_large(max_image_pixels) from exc
    except Exception as exc:
        raise _library_failure(exc, DECODING_ERROR, "decode") from exc


def _check_pillow_limit(size: tuple[int, int], max_image_pixels: int) -> None:
    """Pillow's own hard limit, which :func:`_open_header` meets first, for a header read without
    Pillow: a file is refused alike whichever read its header."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max(1, size[0]) * max(1, size[1]) > 2 * limit:
        raise too_large(max_image_pixels)


def _library_failure(exc: Exception, message: str, error_type: str) -> ProcessError:
    """The failure for an exception from Pillow, numpy or OpenCV: out of memory, or the one given."""
    if _is_out_of_memory(exc):
        return failure(OUT_OF_MEMORY, "image.out_of_memory")
    return failure(message, error_type)


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError (Pillow, numpy) or OpenCV's allocation failure; their messages hold per-image sizes."""
    return isinstance(exc, MemoryError) or (isinstance(exc, cv2.error) and exc.code == cv2.Error.StsNoMem)


def _to_array(image: Image.Image) -> tuple[np.ndarray, bool]:
    """The decoded image as uint8 RGB (H, W, 3) or grayscale (H, W); and whether its pixels were converted.

    16-bit values are scaled to 8 bit (img2dataset saturated them to white);
    transparency of any kind (alpha channel, palette or tRNS) is composited
    on white, a gray image with an alpha channel (LA) into RGB as img2dataset;
    other modes (CMYK, P, YCbCr, ...) become RGB.
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
        raise failure("Image encoding error", "encode")
    return encoded.tobytes()


def _extension_of(pil_format: str) -> str:
    """The usual file extension of a format Pillow detected (``JPEG`` -> ``jpg``)."""
    if pil_format in USUAL_EXTENSIONS:
        return USUAL_EXTENSIONS[pil_format]
    registered = [ext for ext, fmt in Image.registered_extensions().items() if fmt == pil_format]
    return registered[0].lstrip(".") if registered else pil_format.lower()
