"""any2ds-thumbnail: a processor that stores a small JPEG thumbnail and a perceptual hash per image.

Chained after the built-in ``image`` processor (``--processors '[image, thumbnail]'``),
it adds to every successful sample:

- a ``thumbnail`` stream: a JPEG whose longest side is ``thumbnail.size`` pixels, stored
  as ``<key>.thumb.jpg`` by the webdataset and files writers (a ``thumbnail`` column with
  ``output_format: parquet``);
- a ``dhash`` metadata field: the 64-bit difference hash of the picture as 16 hex digits.
  Near-duplicates (re-encoded, resized, lightly edited) differ in few bits.

Both are made from the picture the previous processor stored (``image``'s resized
output), or from the fetched bytes when ``thumbnail`` runs first.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import attrs
import numpy as np
import pyarrow as pa
from attrs import validators as v
from PIL import Image, ImageOps

from any2ds import FetchResult, Media, ProcessError, Processor, SampleResult, hookimpl, option

# The any2ds hook spec versions this plugin works with; checked when any2ds loads it.
ANY2DS_HOOKSPEC = ">=1,<2"

STREAM = "thumbnail"
EXTENSION = "thumb.jpg"
HASH_SIDE = 8  # 8 x 8 comparisons: 64 bits


def load_picture(data: bytes) -> Image.Image:
    """Decode ``data`` upright (EXIF orientation applied) as RGB, transparency composited on white."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def dhash(image: Image.Image) -> str:
    """The difference hash: on a 9 x 8 grayscale copy, whether each pixel is darker than its
    right neighbour; 64 bits, row by row, as 16 hex digits."""
    pixels = np.asarray(image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.LANCZOS), np.int16)
    return np.packbits(pixels[:, 1:] > pixels[:, :-1]).tobytes().hex()


def hamming(hash_a: str, hash_b: str) -> int:
    """How many of the 64 bits two dHashes differ in (0: same picture, over ~10: different)."""
    return (int(hash_a, 16) ^ int(hash_b, 16)).bit_count()


class ThumbnailProcessor(Processor):
    """Adds a JPEG thumbnail stream and a ``dhash`` field to every sample."""

    name = "thumbnail"

    @attrs.frozen
    class Options:
        size: int = option(64, "Longest side of the thumbnail, in pixels.", v.ge(HASH_SIDE + 1))
        quality: int = option(80, "JPEG quality of the thumbnail, 1 to 95.", v.and_(v.ge(1), v.le(95)))

    def media_streams(self) -> Sequence[str]:
        return (STREAM,)

    def metadata_fields(self) -> Sequence[pa.Field]:
        return [pa.field("dhash", pa.string())]

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        stored = next(iter(result.media.values()), None)
        try:
            picture = load_picture(fetched.body if stored is None else stored.data)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ProcessError(f"thumbnail: cannot decode the picture: {exc}", error_type="ThumbnailDecodeError") from exc
        result.metadata["dhash"] = dhash(picture)
        picture.thumbnail((self.options.size, self.options.size), Image.Resampling.LANCZOS)
        encoded = io.BytesIO()
        picture.save(encoded, format="JPEG", quality=self.options.quality)
        result.media[STREAM] = Media(encoded.getvalue(), EXTENSION)


@hookimpl
def any2ds_register_processors(register):
    register(ThumbnailProcessor)
