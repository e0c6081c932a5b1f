"""Resize geometry: img2dataset's exact output sizes, crop offsets and padding.

The plan is pure arithmetic on the source size, so it can be computed from an
image header before any pixel is decoded (for the bomb guard and for JPEG
shrink-on-load) and applied (by :mod:`~any2ds_plugins.image.resize`) to whatever
resolution the decoder returns.
"""

from __future__ import annotations

from typing import Literal, get_args

import attrs

ResizeMode = Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)

Interpolation = Literal["nearest", "linear", "bilinear", "cubic", "bicubic", "area", "lanczos", "lanczos4"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)

SHRINK_ON_LOAD_GAP = 1.5
"""A shrink-on-load decode keeps at least this many times the target size: the
final resize then looks the same as one from the full-resolution decode. The
smallest gap that keeps every size measured within the quality bounds of issue 14
(PSNR of outputs against full decodes, mean >= 40 dB, minimum >= 30; 3,000
photographs of the benchmark's corpus, 10,000 at 256 border; docs/performance.md):

- 1.5: 256 border 46.3 dB mean, 35.7 minimum; 64 keep_ratio 40.6 and 31.6;
  2.5-3% less CPU per image than 1.75 at 256 border;
- 1.25: 64 keep_ratio falls to 39.5 and 28.9, out of bounds;
- 1.75: 46.5 and 37.8 at 256 border, 41.4 and 33.0 at 64."""

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
    interpolation: str  # one of INTERPOLATIONS
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

    def transposed(self) -> ResizePlan:
        """The plan for this image with its width and height swapped: the one that applies to
        pixels still in their stored orientation when EXIF turns them a quarter (orientations 5 to 8)."""
        return ResizePlan(source_size=self.source_size[::-1], scaled_size=self.scaled_size[::-1],
                          interpolation=self.interpolation, image_size=self.image_size,
                          crop_offset=None if self.crop_offset is None else self.crop_offset[::-1],
                          padding=None if self.padding is None else (*self.padding[2:], *self.padding[:2]))

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
    untouched = ResizePlan((width, height), (width, height), downscale_interpolation, image_size)
    if resize_mode == "no":
        return untouched
    fitted_side = min(width, height) if resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    downscale = fitted_side > image_size
    if resize_only_if_bigger and not downscale:
        return untouched
    interpolation = downscale_interpolation if downscale else upscale_interpolation
    scale = image_size / float(fitted_side)
    scaled = (width, height) if scale == 1 else (max(1, round(width * scale)), max(1, round(height * scale)))
    crop_offset = padding = None
    if resize_mode == "center_crop" and scaled != (image_size, image_size):
        crop_offset = ((scaled[0] - image_size) // 2, (scaled[1] - image_size) // 2)
    if resize_mode == "border" and scaled != (image_size, image_size):
        pad_x, pad_y = image_size - scaled[0], image_size - scaled[1]
        padding = (pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2)
    return ResizePlan((width, height), scaled, interpolation, image_size, crop_offset, padding)

