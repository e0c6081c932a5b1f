"""A :class:`~any2ds_plugins.image.geometry.ResizePlan` applied to pixels, with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from any2ds_plugins.image.geometry import ResizePlan

INTERPOLATION_FLAGS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
    "lanczos4": cv2.INTER_LANCZOS4,
}

PAD_COLOR = 255  # img2dataset pads with white

AREA_BY_HALVING_MAX_RATIO = 4
"""An area downscale by at most this ratio (source / target, on each side) is a bilinear
resample to twice the target size, then the mean of each 2x2 block. cv2's INTER_AREA at a
fractional ratio runs a scalar loop over every source pixel: 1.0 ms for 500x375 to 256x192,
where the two steps take 0.3 ms (its 2x2 mean is vectorised). Up to a ratio of 4 the bilinear
step reads every source pixel (at 4 it is exactly a 2-pixel mean, so the result is cv2's area
resize up to rounding), and the 2x2 mean centres each output pixel on its footprint. Measured
on 3,000 of the benchmark's photographs after shrink-on-load: within 53.2 dB of cv2's INTER_AREA
on average, 38.9 dB at worst; the PSNR against full decodes kept its mean and minimum
(docs/performance.md). Beyond this ratio the bilinear step would skip pixels."""

AREA_AS_BILINEAR_MAX_RATIO = 1.2
"""An area downscale the two steps above would do, by at most this ratio on each side, is one
bilinear resample instead: at such ratios it is closer to cv2's INTER_AREA than the two steps,
whose doubling (a 1.7x enlargement here) blurs, in a third of their time. On the 2,659 of 3,000
of the benchmark's photographs that are downscaled after shrink-on-load, against cv2's
INTER_AREA of the same pixels: at ratios up to 1.15, 54.3 dB on average and 46.8 at worst, where
the two steps give 48.2 and 41.3; from 1.15 to 1.2, 50.1 and 42.5 against 48.5 and 38.9; from
1.25 up the two steps are closer. A 6-pixel band's centre moves by at most 0.075 pixel from
where cv2's area resize puts it."""

DOUBLED_PIXEL_BUDGET = 2048 * 2048
"""The two-step area downscale's intermediate (twice the target on each side) holds at most this
many pixels, or as many as the source when that is more: 12 MB of RGB, every output up to 1024 x
1024. A larger output is resized in one step, so that a big target does not quadruple the memory
an image takes."""


def scale(pixels: np.ndarray, plan: ResizePlan, exact: bool = False,
          extent: tuple[float, float] | None = None) -> np.ndarray:
    """Resize ``pixels`` (any resolution of the plan's source) to the plan's scaled size; no-op if already there.

    ``extent``: the (width, height) the source covers in the array, from its top-left corner, when
    its last column and row are only partly the source's: a JPEG reduced while decoding by 2, 4
    or 8, whose sides are not multiples of that (libjpeg fills the last block's pixels from the
    edge). Mapping the whole array instead would shift the far edge by up to half an output
    pixel: 1,500 pixels reduced by 8 to 188 (187.5 of the source) and resized to 64 came out at
    33 dB against cv2's area resize of the full decode, 43 dB mapped exactly (what Pillow's
    thumbnail does with draft's box). None: the whole array.

    Unless ``exact``, an area downscale by at most :data:`AREA_BY_HALVING_MAX_RATIO`, within
    :data:`DOUBLED_PIXEL_BUDGET`, goes through twice the target size, or is one bilinear resample
    when by at most :data:`AREA_AS_BILINEAR_MAX_RATIO` (see both); any other resize is one cv2
    resize at the plan's interpolation, as img2dataset's.
    """
    width, height = plan.scaled_size
    source_width, source_height = extent or (pixels.shape[1], pixels.shape[0])
    if extent is None and source_width == width and source_height == height:
        return pixels
    if (not exact and plan.interpolation == "area"
            and width < source_width <= AREA_BY_HALVING_MAX_RATIO * width
            and height < source_height <= AREA_BY_HALVING_MAX_RATIO * height
            and 4 * width * height <= max(source_width * source_height, DOUBLED_PIXEL_BUDGET)):
        if source_width <= AREA_AS_BILINEAR_MAX_RATIO * width and source_height <= AREA_AS_BILINEAR_MAX_RATIO * height:
            return _resize(pixels, (width, height), extent, cv2.INTER_LINEAR)
        doubled = _resize(pixels, (2 * width, 2 * height), extent, cv2.INTER_LINEAR)
        return cv2.resize(doubled, (width, height), interpolation=cv2.INTER_AREA)
    return _resize(pixels, (width, height), extent, INTERPOLATION_FLAGS[plan.interpolation])


def _resize(pixels: np.ndarray, size: tuple[int, int], extent: tuple[float, float] | None,
            interpolation: int) -> np.ndarray:
    """cv2's resize of the source ``extent`` covers in ``pixels`` (see :func:`scale`) to ``size``."""
    if extent is None:
        return cv2.resize(pixels, size, interpolation=interpolation)
    width, height = size
    # Given scale factors rather than a size, cv2 maps at exactly those factors: the array's
    # partial last column and row land past the output's edge (at most one pixel), cut off here.
    resized = cv2.resize(pixels, None, fx=width / extent[0], fy=height / extent[1], interpolation=interpolation)
    return resized[:height, :width]


def crop_or_pad(pixels: np.ndarray, plan: ResizePlan) -> np.ndarray:
    """Apply the plan's centre crop or white border to the scaled pixels."""
    size = plan.image_size
    if plan.crop_offset is not None:
        x, y = plan.crop_offset
        return pixels[y : y + size, x : x + size]
    if plan.padding is not None:
        top, bottom, left, right = plan.padding
        value = (PAD_COLOR,) * (pixels.shape[2] if pixels.ndim == 3 else 1)
        return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
    return pixels
