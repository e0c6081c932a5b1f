"""Resize geometry: img2dataset's exact output sizes, crop offsets and padding, then cv2 to apply them.

The plan is pure arithmetic on the source size, so it can be computed from an
image header before any pixel is decoded (for the bomb guard and for JPEG
shrink-on-load) and applied to whatever resolution the decoder returns.
"""

from __future__ import annotations

from typing import Literal, get_args

import attrs
import cv2
import numpy as np

ResizeMode = Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)

Interpolation = Literal["nearest", "linear", "bilinear", "cubic", "bicubic", "area", "lanczos", "lanczos4"]
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
SHRINK_ON_LOAD_GAP = 1.75
"""A shrink-on-load decode keeps at least this many times the target size: the
final resize then looks the same as one from the full-resolution decode. Measured
on the benchmark's 10,000 photographs (PSNR of 256 px outputs against full decodes,
over the images that differ): 2.0 gives a mean of 43.2 dB and a minimum of 30.4;
1.75 a mean of 42.5 and the same minimum, 5% less CPU; 1.5 drops the minimum to
29.8 dB, under the 30 dB bound (docs/performance.md)."""

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

DOUBLED_PIXEL_BUDGET = 2048 * 2048
"""The two-step area downscale's intermediate (twice the target on each side) holds at most this
many pixels, or as many as the source when that is more: 12 MB of RGB, every output up to 1024 x
1024. A larger output is resized in one step, so that a big target does not quadruple the memory
an image takes."""

Size = tuple[int, int]


@attrs.frozen
class ResizePlan:
    """What to do to an image of ``source_size`` (width, height): scale, then crop or pad.

    ``crop_offset`` is the (x, y) corner of the ``image_size`` square kept by
    center_crop; ``padding`` is (top, bottom, left, right) white rows/columns
    added by border. Both are None when there is nothing to crop or pad.
    """

    source_size: Size
    scaled_size: Size
    interpolation: int
    image_size: int
    crop_offset: Size | None = None
    padding: tuple[int, int, int, int] | None = None

    @property
    def output_size(self) -> Size:
        """(width, height) of the stored image."""
        if self.crop_offset is not None or self.padding is not None:
            return (self.image_size, self.image_size)
        return self.scaled_size

    @property
    def changes_geometry(self) -> bool:
        """Whether the stored pixels differ in size or placement from the source's."""
        return self.scaled_size != self.source_size or self.crop_offset is not None or self.padding is not None

    @property
    def shrinks(self) -> bool:
        """Whether the scale step makes both sides smaller (the case where shrink-on-load helps)."""
        return self.scaled_size[0] < self.source_size[0] and self.scaled_size[1] < self.source_size[1]

    def shrink_on_load_size(self) -> Size | None:
        """The smallest (width, height) a shrink-on-load decoder may return without hurting quality.

        None when the plan does not shrink. Decoders such as Pillow's JPEG
        ``draft`` reduce by powers of two and never go below the requested
        size, so the output geometry (computed from the source size) is unchanged.
        """
        if not self.shrinks:
            return None
        width, height = self.scaled_size
        return (width * SHRINK_ON_LOAD_GAP, height * SHRINK_ON_LOAD_GAP)


def plan_resize(
    width: int,
    height: int,
    *,
    image_size: int,
    resize_mode: str,
    resize_only_if_bigger: bool,
    downscale_interpolation: str,
    upscale_interpolation: str,
) -> ResizePlan:
    """img2dataset's geometry for a ``width`` x ``height`` source (see the reference, section 5).

    keep_ratio and center_crop fit the smallest side to ``image_size``;
    keep_ratio_largest and border fit the longest side. A scaled side is
    ``round(side * scale)`` (Python rounding, as albumentations does), at
    least 1 pixel. With ``resize_only_if_bigger`` an image whose fitted side
    is not larger than ``image_size`` is left completely untouched.
    """
    untouched = ResizePlan((width, height), (width, height), INTERPOLATION_FLAGS[downscale_interpolation], image_size)
    if resize_mode == "no":
        return untouched
    fitted_side = min(width, height) if resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    downscale = fitted_side > image_size
    if resize_only_if_bigger and not downscale:
        return untouched
    interpolation = INTERPOLATION_FLAGS[downscale_interpolation if downscale else upscale_interpolation]
    scale = image_size / float(fitted_side)
    scaled = (width, height) if scale == 1 else (max(1, round(width * scale)), max(1, round(height * scale)))
    crop_offset = padding = None
    if resize_mode == "center_crop" and scaled != (image_size, image_size):
        crop_offset = ((scaled[0] - image_size) // 2, (scaled[1] - image_size) // 2)
    if resize_mode == "border" and scaled != (image_size, image_size):
        pad_x, pad_y = image_size - scaled[0], image_size - scaled[1]
        padding = (pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2)
    return ResizePlan((width, height), scaled, interpolation, image_size, crop_offset, padding)


def scale(pixels: np.ndarray, plan: ResizePlan, exact: bool = False) -> np.ndarray:
    """Resize ``pixels`` (any resolution of the plan's source) to the plan's scaled size; no-op if already there.

    Unless ``exact``, an area downscale by at most :data:`AREA_BY_HALVING_MAX_RATIO` goes
    through twice the target size (see there), within :data:`DOUBLED_PIXEL_BUDGET`; any other
    resize is one cv2 resize at the plan's interpolation, as img2dataset's.
    """
    width, height = plan.scaled_size
    source_height, source_width = pixels.shape[:2]
    if source_width == width and source_height == height:
        return pixels
    if (not exact and plan.interpolation == cv2.INTER_AREA
            and width < source_width <= AREA_BY_HALVING_MAX_RATIO * width
            and height < source_height <= AREA_BY_HALVING_MAX_RATIO * height
            and 4 * width * height <= max(source_width * source_height, DOUBLED_PIXEL_BUDGET)):
        doubled = cv2.resize(pixels, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(doubled, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(pixels, (width, height), interpolation=plan.interpolation)


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
