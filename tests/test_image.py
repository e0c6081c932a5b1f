"""The image processor on real images: geometry, encoding, filters, pixel fixes, bomb guard, blur, EXIF."""

from __future__ import annotations

import io
import json
import math
import resource
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import attrs
import cv2
import exifread
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from any2ds.errors import ProcessError
from any2ds.types import FetchResult, Sample, SampleResult
from any2ds_plugins.image.blur import blur_boxes, kernel_size
from any2ds_plugins.image.geometry import INTERPOLATIONS, plan_resize
from any2ds_plugins.image.processor import ImageOptions, ImageProcessor, any2ds_register_processors
from any2ds_plugins.image.resize import (AREA_AS_BILINEAR_MAX_RATIO, AREA_BY_HALVING_MAX_RATIO, DOUBLED_PIXEL_BUDGET,
                                         INTERPOLATION_FLAGS, scale)
from benchmarks.quality import psnr
from tests.conftest import encode, gradient


def run(body: bytes, columns: dict | None = None, **options) -> SampleResult:
    """Process ``body`` with the given options; return the filled SampleResult."""
    processor = ImageProcessor(ImageOptions(**options))
    result = SampleResult(Sample(key="000000000", shard_id=0, index=0, url="http://x/img", columns=columns or {}))
    processor.process(FetchResult(body=body, url="http://x/img"), result)
    return result


def failure(body: bytes, **options) -> ProcessError:
    with pytest.raises(ProcessError) as caught:
        run(body, **options)
    assert caught.value.status == "failed_to_resize"
    return caught.value


def decoded(result: SampleResult, stream: str = "png") -> Image.Image:
    return Image.open(io.BytesIO(result.media[stream].data))


def pixels_of(result: SampleResult, stream: str = "png") -> np.ndarray:
    return np.asarray(decoded(result, stream))


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    return encode(Image.fromarray(array, mode), "PNG")


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("name", "mode", "size", "only_if_bigger", "expected"),
    [
        ("300_500.jpg", "keep_ratio", 100, False, (100, 167)),
        ("500_300.jpg", "keep_ratio", 100, False, (167, 100)),
        ("123_456.jpg", "keep_ratio", 256, False, (256, 949)),
        ("64_64.jpg", "keep_ratio", 100, False, (100, 100)),
        ("500_300.jpg", "keep_ratio_largest", 101, False, (101, 61)),
        ("123_456.jpg", "keep_ratio_largest", 100, False, (27, 100)),
        ("1000_100.jpg", "keep_ratio_largest", 256, False, (256, 26)),
        ("800_600.jpg", "center_crop", 100, False, (100, 100)),
        ("123_456.jpg", "center_crop", 64, False, (64, 64)),
        ("64_64.jpg", "center_crop", 100, False, (100, 100)),
        ("1000_100.jpg", "border", 101, False, (101, 101)),
        ("123_456.jpg", "border", 256, False, (256, 256)),
        ("800_600.jpg", "no", 100, False, (800, 600)),
        # resize_only_if_bigger leaves small images untouched, so border/center_crop outputs are not square.
        ("64_64.jpg", "border", 100, True, (64, 64)),
        ("456_123.jpg", "border", 500, True, (456, 123)),
        ("123_456.jpg", "center_crop", 200, True, (123, 456)),
        ("300_500.jpg", "keep_ratio", 300, True, (300, 500)),
        ("1000_100.jpg", "border", 200, True, (200, 200)),
        ("800_600.jpg", "keep_ratio", 100, True, (133, 100)),
    ],
)
def test_resize_mode_output_size(image_dir, image_sizes, name, mode, size, only_if_bigger, expected):
    result = run((image_dir / name).read_bytes(), image_size=size, resize_mode=mode,
                 resize_only_if_bigger=only_if_bigger)
    assert decoded(result, "jpg").size == expected
    assert (result.metadata["width"], result.metadata["height"]) == expected
    assert (result.metadata["original_width"], result.metadata["original_height"]) == image_sizes[name]


def test_border_pads_white_with_floor_half_on_top(image_dir):
    result = run((image_dir / "1000_100.jpg").read_bytes(), image_size=101, resize_mode="border",
                 encode_format="png", encode_quality=9)
    pixels = pixels_of(result)
    assert pixels.shape == (101, 101, 3)
    content_rows = np.flatnonzero((pixels != 255).any(axis=(1, 2)))
    assert (content_rows.min(), content_rows.max()) == (45, 54)  # 10 content rows: 45 white above, 46 below
    assert (pixels[:45] == 255).all() and (pixels[55:] == 255).all()


def test_center_crop_keeps_the_middle():
    # Columns coloured by x: the crop of a 300x100 image at 100 keeps columns 100..199.
    columns = np.repeat(np.arange(300, dtype=np.uint8)[None, :, None] // 3 * 3, 100, axis=0).repeat(3, axis=2)
    result = run(png(columns), image_size=100, resize_mode="center_crop", encode_format="png", encode_quality=9)
    pixels = pixels_of(result)
    assert pixels.shape == (100, 100, 3)
    np.testing.assert_array_equal(pixels, columns[:, 100:200])


def test_every_interpolation_option_has_its_opencv_flag():
    assert set(INTERPOLATION_FLAGS) == set(INTERPOLATIONS)


def test_plan_picks_interpolation_and_skips_identity_resize():
    common = {"resize_only_if_bigger": False, "downscale_interpolation": "area", "upscale_interpolation": "lanczos"}
    shrink = plan_resize(800, 600, image_size=100, resize_mode="keep_ratio", **common)
    assert shrink.interpolation == "area" and shrink.scaled_size == (133, 100) and shrink.shrinks
    grow = plan_resize(64, 32, image_size=100, resize_mode="keep_ratio_largest", **common)
    assert grow.interpolation == "lanczos" and grow.scaled_size == (100, 50) and not grow.shrinks
    same = plan_resize(256, 100, image_size=256, resize_mode="keep_ratio_largest", **common)
    assert same.scaled_size == (256, 100) and not same.changes_geometry
    square = plan_resize(256, 256, image_size=256, resize_mode="border", **common)
    assert square.output_size == (256, 256) and not square.changes_geometry
    # A side never rounds to 0 pixels.
    assert plan_resize(5000, 1, image_size=100, resize_mode="keep_ratio_largest", **common).scaled_size == (100, 1)


def test_shrink_on_load_keeps_geometry_and_quality():
    width, height = 2400, 1800
    body = encode(Image.fromarray(gradient(width, height)), "JPEG", quality=95)
    result = run(body, image_size=100, resize_mode="keep_ratio", encode_format="png", encode_quality=1)
    shrunk = pixels_of(result).astype(np.int16)
    assert shrunk.shape == (100, 133, 3)
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    reference = cv2.resize(full, (133, 100), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(shrunk - reference).mean() < 1.5


def test_shrink_on_load_with_exif_rotation():
    exif = Image.Exif()
    exif[0x0112] = 6
    body = encode(Image.fromarray(gradient(1600, 900)), "JPEG", exif=exif)
    result = run(body, image_size=100, resize_mode="keep_ratio_largest")
    assert decoded(result, "jpg").size == (56, 100)
    assert (result.metadata["original_width"], result.metadata["original_height"]) == (900, 1600)


def area_plan(width: int, height: int, image_size: int):
    return plan_resize(width, height, image_size=image_size, resize_mode="keep_ratio_largest",
                       resize_only_if_bigger=False, downscale_interpolation="area", upscale_interpolation="lanczos")


def photo_like(width: int, height: int) -> np.ndarray:
    """Smooth shapes under sensor-like grain: the kind of pixels shrink-on-load leaves to the resize."""
    rows, columns = np.mgrid[0:height, 0:width]
    grain = np.random.default_rng(1).normal(0, 12, rows.shape)
    plane = np.clip(128 + 100 * np.sin(columns / 37.0) * np.cos(rows / 23.0) + grain, 0, 255).astype(np.uint8)
    return np.dstack([plane, np.roll(plane, 5, axis=1), 255 - plane])


@pytest.mark.parametrize("image_size", [1000, 700, 512, 400, 372])  # ratios 1.3, 1.86, 2.54, 3.25, 3.49
def test_area_downscale_through_twice_the_target_stays_close_to_cv2s(image_size):
    pixels = photo_like(1300, 1000)
    plan = area_plan(1300, 1000, image_size)
    exact = cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_AREA)
    fast = scale(pixels, plan)
    assert fast.shape == exact.shape
    assert psnr(fast, exact) >= 40
    np.testing.assert_array_equal(scale(pixels, plan, exact=True), exact)


@pytest.mark.parametrize("ratio", [2, 4])
def test_area_downscale_by_two_or_four_is_cv2s_up_to_rounding(ratio):
    pixels = noise(1024, 768)
    plan = area_plan(1024, 768, 1024 // ratio)
    exact = cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(scale(pixels, plan).astype(np.int16) - exact).max() <= 1


@pytest.mark.parametrize("ratio", [1.1, 1.2, 1.3, 1.9, 2.6, 3.3])
def test_area_downscale_keeps_pixels_in_place(ratio):
    # A bright band 6 pixels wide: its centre of mass in an output row is where cv2's area resize
    # puts it, within the rounding of 8-bit pixels (up to 0.06) at ratios the two steps take, and
    # 0.075 at those one bilinear resample takes (up to 1.2); half a source pixel off in any step
    # would move it by 0.17 or more at these ratios.
    width, height = 1000, 200
    pixels = np.zeros((height, width), np.uint8)
    plan = area_plan(width, height, round(width / ratio))
    positions = np.arange(plan.scaled_size[0])
    for column in (137, 500, 861):
        pixels[:] = 0
        pixels[:, column:column + 6] = 255
        exact = cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_AREA)[10]
        fast = scale(pixels, plan)[10]
        assert abs(positions @ fast / fast.sum() - positions @ exact / exact.sum()) < 0.1


@pytest.mark.parametrize("target_width", [591, 560, 542])  # ratios 1.1, 1.16, 1.2
def test_a_slight_area_downscale_is_one_bilinear_resample_closer_to_cv2s_than_two_steps(target_width):
    pixels = photo_like(650, 500)
    plan = area_plan(650, 500, target_width)
    width, height = plan.scaled_size
    assert 650 <= AREA_AS_BILINEAR_MAX_RATIO * width and 500 <= AREA_AS_BILINEAR_MAX_RATIO * height
    exact = cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_AREA)
    two_steps = cv2.resize(cv2.resize(pixels, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR),
                           plan.scaled_size, interpolation=cv2.INTER_AREA)
    fast = scale(pixels, plan)
    np.testing.assert_array_equal(fast, cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_LINEAR))
    assert psnr(fast, exact) > psnr(two_steps, exact)


def test_area_downscale_beyond_the_ratio_bound_is_cv2s():
    pixels = noise(1300, 1000)
    plan = area_plan(1300, 1000, 1300 // (AREA_BY_HALVING_MAX_RATIO + 1))
    np.testing.assert_array_equal(scale(pixels, plan),
                                  cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_AREA))


def test_area_downscale_to_a_large_target_takes_one_step():
    # Twice this target would hold more pixels than the source and than the budget: one cv2 resize.
    side = 1100
    assert 4 * side * side > max(1300 * 1300, DOUBLED_PIXEL_BUDGET)
    pixels = noise(1300, 1300)
    plan = area_plan(1300, 1300, side)
    np.testing.assert_array_equal(scale(pixels, plan),
                                  cv2.resize(pixels, plan.scaled_size, interpolation=cv2.INTER_AREA))


def test_exact_resize_decodes_at_full_resolution_and_resizes_at_the_exact_ratio():
    body = encode(Image.fromarray(photo_like(2400, 1800)), "JPEG", quality=90)
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    exact = cv2.resize(full, (133, 100), interpolation=cv2.INTER_AREA)
    options = {"image_size": 100, "resize_mode": "keep_ratio", "encode_format": "png", "encode_quality": 1}
    np.testing.assert_array_equal(pixels_of(run(body, exact_resize=True, **options)), exact)
    shortcut = pixels_of(run(body, **options))
    assert shortcut.shape == exact.shape and not np.array_equal(shortcut, exact) and psnr(shortcut, exact) >= 35


def test_images_other_than_jpeg_are_resized_exactly():
    # One-pixel stripes, as in text and line art: the area downscale through twice the target
    # would alias them (below 25 dB against cv2's area resize). A JPEG still takes the shortcut.
    stripes = np.zeros((600, 800, 3), np.uint8)
    stripes[:, ::3] = 255
    options = {"image_size": 256, "resize_mode": "keep_ratio_largest", "encode_format": "png", "encode_quality": 1}
    exact = cv2.resize(stripes, (256, 192), interpolation=cv2.INTER_AREA)
    for fmt in ("PNG", "GIF", "BMP", "WEBP"):
        body = encode(Image.fromarray(stripes), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        np.testing.assert_array_equal(pixels_of(run(body, **options)), exact)
    shortcut = pixels_of(run(encode(Image.fromarray(stripes), "JPEG", quality=100), **options))
    assert shortcut.shape == exact.shape and psnr(shortcut, exact) < 35


def band_centre(pixels: np.ndarray, axis: int) -> float:
    """Where a bright band across ``pixels`` lies, as the brightness-weighted mean position on ``axis``."""
    profile = (pixels if pixels.ndim == 2 else pixels.mean(axis=2)).astype(np.float64).sum(axis=1 - axis)
    return float(np.arange(profile.size) @ profile / profile.sum())


@pytest.mark.parametrize("orientation", [1, 2, 3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "CMYK"])  # decoded by OpenCV, or by Pillow (draft)
def test_a_reduced_decode_maps_a_partial_last_block_exactly(orientation, fmt):
    # 1500 x 1004 reduced by 8 while decoding is 188 x 126 pixels, of which the source covers
    # 187.5 x 125.5: mapped as if it covered the whole array, bands near the far edges moved by
    # 0.24 of an output pixel (and a turned image's near edges: its partial pixels are there).
    width, height = 1500, 1004
    shown = np.zeros((height, width), np.uint8)
    shown[:, 1400:1448] = 255
    shown[40:80, :] = 255
    shown[900:940, :] = 255
    shown[:, 60:108] = 255
    undo = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1),
            8: lambda a: np.rot90(a, -1)}[orientation]  # the stored pixels that orientation turns back into shown
    stored = Image.fromarray(np.ascontiguousarray(undo(shown))).convert("RGB" if fmt == "JPEG" else "CMYK")
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    options = {"image_size": 64, "resize_mode": "keep_ratio", "encode_format": "png", "encode_quality": 1}
    exact = pixels_of(run(body, exact_resize=True, **options))
    fast = pixels_of(run(body, **options))
    assert fast.shape == exact.shape == (64, 96, 3)
    for axis, (start, stop) in ((1, (80, 96)), (1, (0, 16)), (0, (0, 16)), (0, (48, 64))):
        window = (slice(None), slice(start, stop)) if axis == 1 else (slice(start, stop), slice(None))
        assert abs(band_centre(fast[window], axis) - band_centre(exact[window], axis)) < 0.05


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(("encode_format", "quality", "pil_format"),
                         [("jpg", 95, "JPEG"), ("png", 9, "PNG"), ("webp", 90, "WEBP"), ("webp", 101, "WEBP")])
def test_encode_formats(image_dir, encode_format, quality, pil_format):
    processor = ImageProcessor(ImageOptions(encode_format=encode_format, encode_quality=quality))
    assert processor.media_streams() == [encode_format]
    result = run((image_dir / "300_500.jpg").read_bytes(), image_size=64, encode_format=encode_format,
                 encode_quality=quality)
    media = result.media[encode_format]
    assert media.extension == encode_format
    image = Image.open(io.BytesIO(media.data))
    assert image.format == pil_format and image.size == (64, 64) and image.mode == "RGB"


def test_grayscale_stays_one_channel(image_dir):
    result = run((image_dir / "gray.jpg").read_bytes(), resize_mode="no")
    assert decoded(result, "jpg").mode == "L"


def test_skip_reencode_keeps_bytes_only_when_nothing_changes(image_dir):
    square = (image_dir / "64_64.jpg").read_bytes()
    assert run(square, image_size=64, skip_reencode=True).media["jpg"].data == square
    assert run(square, image_size=100, resize_mode="border", resize_only_if_bigger=True,
               skip_reencode=True).media["jpg"].data == square
    assert run(square, image_size=64).media["jpg"].data != square  # skip_reencode off
    assert run(square, image_size=32, skip_reencode=True).media["jpg"].data != square  # resized
    webp = (image_dir / "image.webp").read_bytes()
    assert run(webp, resize_mode="no", skip_reencode=True).media["jpg"].data != webp  # other format
    assert run(webp, resize_mode="no", skip_reencode=True, encode_format="webp").media["webp"].data == webp
    rotated = (image_dir / "rotated.jpg").read_bytes()
    assert run(rotated, resize_mode="no", skip_reencode=True).media["jpg"].data != rotated  # reoriented
    alpha = (image_dir / "alpha.png").read_bytes()
    assert run(alpha, resize_mode="no", skip_reencode=True, encode_format="png",
               encode_quality=9).media["png"].data != alpha  # composited


def test_disable_all_reencoding_keeps_bytes_with_real_extension(image_dir):
    body = (image_dir / "alpha.png").read_bytes()
    result = run(body, disable_all_reencoding=True, encode_format="jpg", image_size=32)
    media = result.media["jpg"]  # stream (parquet column) named after encode_format ...
    assert media.data == body and media.extension == "png"  # ... extension from the bytes
    assert {k: result.metadata[k] for k in ("width", "height", "original_width", "original_height")} == {
        "width": 200, "height": 100, "original_width": 200, "original_height": 100}
    gif = encode(Image.fromarray(gradient(30, 20)), "GIF")
    assert run(gif, disable_all_reencoding=True).media["jpg"].extension == "gif"
    assert failure((image_dir / "not_an_image.jpg").read_bytes(), disable_all_reencoding=True).message == \
        "Image decoding error"
    assert failure(body, disable_all_reencoding=True, min_image_size=150).message == "image too small"


# ----------------------------------------------------------------------------- filters and errors


@pytest.mark.parametrize(("name", "options", "message", "error_type"), [
    ("64_64.jpg", {"min_image_size": 65}, "image too small", "filtered"),
    ("800_600.jpg", {"max_image_area": 800 * 600 - 1}, "image area too large", "filtered"),
    ("1000_100.jpg", {"max_aspect_ratio": 9.9}, "aspect ratio too large", "filtered"),
    ("not_an_image.jpg", {}, "Image decoding error", "decode"),
])
def test_filters_and_decoding_errors(image_dir, name, options, message, error_type):
    error = failure((image_dir / name).read_bytes(), **options)
    assert (error.message, error.error_type) == (message, error_type)


def test_filters_pass_at_their_limits(image_dir):
    run((image_dir / "64_64.jpg").read_bytes(), min_image_size=64)
    run((image_dir / "800_600.jpg").read_bytes(), max_image_area=800 * 600)
    run((image_dir / "1000_100.jpg").read_bytes(), max_aspect_ratio=10)


def test_truncated_jpeg_is_a_decoding_error(image_dir):
    body = (image_dir / "800_600.jpg").read_bytes()
    assert failure(body[: len(body) // 2]).message == "Image decoding error"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _black_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, built row by row so the test never holds the pixels."""
    compressor = zlib.compressobj(9)
    rows = b"\x00" * (width + 1) * 100  # 100 rows of filter byte + pixels
    idat = b"".join(compressor.compress(rows) for _ in range(height // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_header_bomb_fails_fast():
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))
    error = failure(bomb)
    assert error.error_type == "too_large"
    message = error.message
    assert message.startswith("image too large to decode") and "max_image_pixels" in message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets the module's filter
def test_large_compressible_png_refused_before_decoding():
    body = _black_png(10_000, 10_000)  # 100 MB of pixels in ~100 kB
    assert len(body) < 1_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    message = failure(body, max_image_pixels=1_000_000).message
    assert time.perf_counter() - start < 0.25
    assert message == "image too large to decode (more than max_image_pixels=1000000 pixels)"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50_000  # kB: nothing decoded
    ok = run(_black_png(1000, 1000), max_image_pixels=1_000_000, image_size=10)  # at the limit: allowed
    assert ok.metadata["original_width"] == 1000


def test_resize_output_bounded_by_max_image_pixels():
    thin = png(gradient(1000, 1))  # keep_ratio at 256 would make 256000 x 256
    assert failure(thin, resize_mode="keep_ratio", max_image_pixels=10_000_000).message.startswith(
        "resized image too large")


# ----------------------------------------------------------------------------- pixel fixes


def test_exif_orientation_is_applied(image_dir):
    result = run((image_dir / "rotated.jpg").read_bytes(), resize_mode="no", encode_format="png",
                 encode_quality=1)
    pixels = pixels_of(result).astype(int)
    assert pixels.shape == (160, 90, 3)  # stored 160x90, displayed 90x160
    assert (result.metadata["original_width"], result.metadata["original_height"]) == (90, 160)
    # Rotating 90 degrees clockwise puts the stored bottom-left corner (x=0: red 0; y=max: green 255) top-left.
    red, green, _ = pixels[0, 0]
    assert red < 20 and green > 235


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decoded_by_opencv_matches_pillow_upright(orientation, mode):
    """Plain JPEGs are decoded by OpenCV, oriented by the processor: the same pixels as Pillow's decode
    with exif_transpose, for every orientation, colour and grayscale."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    source = Image.fromarray(noise(64, 48)).convert(mode)
    body = encode(source, "JPEG", quality=90, exif=exif)
    result = run(body, resize_mode="no", encode_format="png", encode_quality=1)
    with Image.open(io.BytesIO(body)) as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened))
    assert np.array_equal(pixels_of(result), expected)


def test_sixteen_bit_gray_is_scaled_not_saturated(image_dir):
    result = run((image_dir / "gray16.png").read_bytes(), resize_mode="no", encode_format="png",
                 encode_quality=1)
    pixels = pixels_of(result)
    assert pixels.ndim == 2 and (pixels == round(40000 / 257)).all()


def test_alpha_composited_on_white(image_dir):
    result = run((image_dir / "alpha.png").read_bytes(), resize_mode="no", encode_format="png", encode_quality=1)
    pixels = pixels_of(result)
    assert pixels.shape == (100, 200, 3)
    assert (pixels[:, :100] == 255).all()
    np.testing.assert_array_equal(pixels[:, 100:], gradient(200, 100)[:, 100:])


def test_gray_with_alpha_becomes_rgb_and_gray_with_trns_stays_gray():
    """As img2dataset, whose OpenCV decodes a gray+alpha PNG as BGRA and a gray PNG with a tRNS
    value as gray: the channel count a dataset reader sees is the same."""
    gray = gradient(40, 20)[..., 0]
    alpha = np.full_like(gray, 255)
    alpha[:, :10] = 0
    result = run(encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"), resize_mode="no",
                 encode_format="png", encode_quality=1)
    pixels = pixels_of(result)
    assert pixels.shape == (20, 40, 3)
    assert (pixels[:, :10] == 255).all()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[:, 10:, 0], gray[:, 10:])
    with_trns = run(encode(Image.fromarray(gray, "L"), "PNG", transparency=int(gray[0, 0])), resize_mode="no",
                    encode_format="png", encode_quality=1)
    assert pixels_of(with_trns).shape == (20, 40)


def test_palette_transparency_and_cmyk_become_rgb():
    palette = Image.fromarray(gradient(40, 20)).convert("P")
    transparent_index = palette.getpixel((0, 0))
    result = run(encode(palette, "GIF", transparency=transparent_index), resize_mode="no",
                 encode_format="png", encode_quality=1)
    pixels = pixels_of(result)
    assert pixels.shape == (20, 40, 3) and tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 39]) != (255, 255, 255)  # an opaque pixel keeps its colour
    cmyk = Image.fromarray(gradient(40, 20)).convert("CMYK")
    result = run(encode(cmyk, "JPEG"), resize_mode="no")
    assert decoded(result, "jpg").mode == "RGB"


# ----------------------------------------------------------------------------- blur


def reference_blur(pixels: np.ndarray, box_pixels: tuple[int, int, int, int], diagonal: int) -> np.ndarray:
    """The pre-1.46 ImageNet recipe, computed directly: mask grown by 0.1 x diagonal, sigma 0.1 x diagonal."""
    sigma = 0.1 * diagonal
    ksize = 2 * math.ceil(4 * sigma) + 1
    left, top, right, bottom = box_pixels
    mask = np.zeros(pixels.shape[:2], np.float32)
    mask[top:bottom, left:right] = 1
    image = pixels.astype(np.float32)
    blurred = cv2.GaussianBlur(image, (ksize, ksize), sigma)
    soft = cv2.GaussianBlur(mask, (ksize, ksize), sigma)[..., None]
    return (image * (1 - soft) + blurred * soft).astype(np.uint8)


def test_blur_inside_box_only_and_at_full_strength():
    source = noise(200, 200)
    boxes = [[0.4, 0.4, 0.6, 0.6]]  # pixels 80..120, diagonal 40, grown by 4
    result = run(png(source), columns={"faces": boxes}, bbox_col="faces", resize_mode="no",
                 encode_format="png", encode_quality=1)
    blurred = pixels_of(result)
    np.testing.assert_array_equal(blurred, reference_blur(source, (76, 76, 124, 124), 40))
    changed = (blurred != source).any(axis=2)
    assert changed[80:120, 80:120].all()
    radius = kernel_size(4.0) // 2  # the blurred mask reaches at most one kernel radius beyond the grown box
    assert not changed[: 76 - radius].any() and not changed[124 + radius :].any()
    # img2dataset >= 1.46: kernel max(3, 2*ceil(sigma)+1) = 9 with sigma derived by OpenCV (~1.7): much weaker.
    weak = cv2.GaussianBlur(source, (9, 9), 0)[80:120, 80:120]
    assert blurred[90:110, 90:110].std() < weak[10:30, 10:30].std() / 2


def test_blur_runs_before_padding_and_ignores_empty_boxes():
    body = png(noise(200, 100))
    plain = run(body, image_size=100, resize_mode="border", encode_format="png", encode_quality=1)
    for empty in (None, []):
        same = run(body, columns={"faces": empty}, bbox_col="faces", image_size=100, resize_mode="border",
                   encode_format="png", encode_quality=1)
        assert same.media["png"].data == plain.media["png"].data
    blurred = pixels_of(run(body, columns={"faces": [[0.0, 0.0, 1.0, 1.0]]}, bbox_col="faces", image_size=100,
                            resize_mode="border", encode_format="png", encode_quality=1))
    assert (blurred[:25] == 255).all() and (blurred[75:] == 255).all()  # the padding stays white
    assert blurred[25:75].std() < pixels_of(plain)[25:75].std() / 2


def test_blur_on_grayscale_and_bad_boxes(image_dir):
    gray = (image_dir / "gray.jpg").read_bytes()
    result = run(gray, columns={"b": [[0.1, 0.1, 0.9, 0.9]]}, bbox_col="b", resize_mode="no")
    assert decoded(result, "jpg").mode == "L"
    assert failure(gray, columns={"b": [[0.1, 0.2, 0.3]]}, bbox_col="b").message == \
        "bbox_col 'b' must hold [x0, y0, x1, y1] boxes"


def test_blur_boxes_handles_degenerate_and_edge_boxes():
    pixels = noise(50, 10)
    assert blur_boxes(pixels, np.array([[0.5, 0.5, 0.5, 0.5]])) is pixels  # zero-size box: nothing to blur
    out = blur_boxes(pixels, np.array([[-0.5, -0.5, 1.5, 1.5]]))  # larger than a thin image
    assert out.shape == pixels.shape and out.dtype == np.uint8


# ----------------------------------------------------------------------------- exif, columns, options, threads


def test_exif_column(image_dir):
    assert run((image_dir / "64_64.jpg").read_bytes()).metadata["exif"] == "{}"
    assert run((image_dir / "alpha.png").read_bytes()).metadata["exif"] == "{}"
    tags = json.loads(run((image_dir / "rotated.jpg").read_bytes()).metadata["exif"])
    assert tags == {"Image Orientation": "Rotated 90 CW"}
    assert "exif" not in run((image_dir / "64_64.jpg").read_bytes(), extract_exif=False).metadata


def camera_jpeg(description: str | None = None) -> bytes:
    """A JPEG as a camera writes it: IFD0, the EXIF IFD and IFD1 with a 160x120 JPEG thumbnail."""
    photo = Image.fromarray(noise(640, 480))
    exif = Image.Exif()
    exif.update({0x010F: "Canon", 0x0110: "Canon EOS 5D Mark IV", 0x0112: 1, 0x011A: 72.0, 0x011B: 72.0,
                 0x0128: 2, 0x0132: "2023:05:04 12:00:00", 0x8298: "Copyright 2023 Jane Photographer"})
    if description is not None:
        exif[0x010E] = description
    exif.get_ifd(ExifTags.IFD.Exif).update({0x829A: 1 / 200, 0x829D: 5.6, 0x8827: 400, 0x9003: "2023:05:04 12:00:00",
                                            0x920A: 50.0, 0xA002: 640, 0xA003: 480, 0xA434: "EF24-70mm f/2.8L"})
    tiff = bytearray(exif.tobytes()[len(b"Exif\x00\x00"):])
    # Pillow writes no IFD1: append one holding the thumbnail, and point IFD0's next-IFD offset at it.
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
    (entries,) = struct.unpack_from(order + "H", tiff, ifd0)
    struct.pack_into(order + "I", tiff, ifd0 + 2 + 12 * entries, len(tiff))
    thumbnail = encode(photo.resize((160, 120)), "JPEG", quality=90)
    thumbnail_offset = len(tiff) + 2 + 3 * 12 + 4
    tiff += struct.pack(order + "H", 3) + struct.pack(order + "HHIHH", 0x0103, 3, 1, 6, 0)  # compression: JPEG
    tiff += struct.pack(order + "HHII", 0x0201, 4, 1, thumbnail_offset)  # JPEGInterchangeFormat
    tiff += struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))  # JPEGInterchangeFormatLength
    tiff += struct.pack(order + "I", 0) + thumbnail
    return encode(photo, "JPEG", exif=b"Exif\x00\x00" + bytes(tiff))


def test_camera_exif_is_img2dataset_s_whole():
    body = camera_jpeg()
    tags = exifread.process_file(io.BytesIO(body), details=False)
    unbounded = json.dumps({tag: str(value).strip() for tag, value in tags.items() if value is not None})
    exif = run(body).metadata["exif"]
    assert exif == unbounded
    parsed = json.loads(exif)
    assert parsed["Image Model"] == "Canon EOS 5D Mark IV" and parsed["EXIF ISOSpeedRatings"] == "400"
    assert parsed["JPEGThumbnail"].startswith("b'\\xff\\xd8")  # the thumbnail's repr, as img2dataset stores it
    assert 10_000 < len(parsed["JPEGThumbnail"]) < 64 * 1024


def test_exif_values_are_cut_then_the_longest_left_out():
    body = camera_jpeg(description="d" * 3000)
    whole = json.loads(run(body).metadata["exif"])
    assert whole["Image ImageDescription"] == "d" * 3000 and "_truncated" not in whole

    cut = json.loads(run(body, max_exif_value_bytes=1000).metadata["exif"])
    assert cut["Image ImageDescription"] == "d" * 995 + "..."  # 1000 bytes with its quotes
    assert cut["JPEGThumbnail"].endswith("...") and len(json.dumps(cut["JPEGThumbnail"])) <= 1000
    assert cut.pop("_truncated") is True
    assert cut.keys() == whole.keys()
    assert {tag for tag in cut if cut[tag] != whole[tag]} == {"Image ImageDescription", "JPEGThumbnail"}

    small = run(body, max_exif_bytes=1500).metadata["exif"]
    assert len(small) <= 1500
    kept = json.loads(small)
    assert kept.pop("_truncated") is True
    assert "JPEGThumbnail" not in kept and "Image ImageDescription" not in kept  # the longest go first
    assert kept["Image Make"] == "Canon" and kept == {tag: whole[tag] for tag in kept}
    assert run(body, max_exif_bytes=20).metadata["exif"] == '{"_truncated": true}'


def test_declared_columns_and_fields():
    processor = ImageProcessor(ImageOptions(bbox_col="faces"))
    assert tuple(processor.read_columns()) == ("faces",) and tuple(processor.kept_columns()) == ("faces",)
    assert [f.name for f in processor.metadata_fields()] == [
        "width", "height", "original_width", "original_height", "exif"]
    assert str(processor.metadata_fields()[0].type) == "int32"
    plain = ImageProcessor(ImageOptions(extract_exif=False))
    assert tuple(plain.read_columns()) == () and tuple(plain.kept_columns()) == ()
    assert [f.name for f in plain.metadata_fields()][-1] == "original_height"
    registered = []
    any2ds_register_processors(registered.append)
    assert registered == [ImageProcessor] and ImageProcessor.name == "image"


@pytest.mark.parametrize(("options", "fragment"), [
    ({"encode_format": "png", "encode_quality": 10}, "png compression level and must be 0-9"),
    ({"encode_format": "png"}, "must be 0-9, got 95"),
    ({"encode_quality": 101}, "jpg quality and must be 0-100"),
    ({"encode_format": "webp", "encode_quality": 0}, "webp quality"),
    ({"resize_mode": "stretch"}, "resize_mode must be one of"),
    ({"downscale_interpolation": "magic"}, "downscale_interpolation must be one of"),
    ({"image_size": 0}, "image_size must be greater than 0"),
    ({"max_aspect_ratio": 0.5}, "max_aspect_ratio must be at least 1"),
    ({"bbox_col": "faces", "disable_all_reencoding": True}, "disable_all_reencoding"),
    ({"max_exif_bytes": 19}, "max_exif_bytes must be at least 20"),
    ({"max_exif_value_bytes": 4}, "max_exif_value_bytes must be at least 5"),
])
def test_option_validation(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        ImageOptions(**options)


def test_options_are_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ImageOptions().image_size = 3


def test_concurrent_processing_matches_serial(image_dir, image_sizes):
    processor = ImageProcessor(ImageOptions(image_size=64, resize_mode="center_crop"))
    bodies = [(image_dir / name).read_bytes() for name in image_sizes] * 4

    def process(body: bytes) -> bytes:
        result = SampleResult(Sample(key="0", shard_id=0, index=0, url="u"))
        processor.process(FetchResult(body=body, url="u"), result)
        return result.media["jpg"].data

    serial = [process(body) for body in bodies]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(process, bodies)) == serial


def test_processing_images_starts_no_opencv_threads():
    """A worker runs one image per processing thread, as many as its cores: OpenCV's own thread pool
    would only contend for the same cores. Counted in a fresh interpreter, where nothing else has
    used OpenCV yet (its pool starts with the first parallel call, a resize of a large image)."""
    script = textwrap.dedent("""
        import io, os
        import numpy as np
        from PIL import Image
        from any2ds import FetchResult, Sample, SampleResult
        from any2ds_plugins.image.processor import ImageOptions, ImageProcessor
        import any2ds_plugins.image.transcode  # OpenCV imported: its import starts a thread of its own

        pixels = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
        body = io.BytesIO()
        Image.fromarray(pixels).save(body, "JPEG")
        threads = len(os.listdir("/proc/self/task"))
        result = SampleResult(Sample(key="0", shard_id=0, index=0, url="u"))
        ImageProcessor(ImageOptions(image_size=256)).process(FetchResult(body.getvalue(), "u"), result)
        assert result.metadata["width"] == 256
        print(threads, len(os.listdir("/proc/self/task")))
    """)
    before, after = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                   timeout=120).stdout.split()
    assert after == before
