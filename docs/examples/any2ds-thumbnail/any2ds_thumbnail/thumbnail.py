"""A JPEG thumbnail (`<key>.thumb.jpg`) and a 64-bit difference hash (`dhash`) of every image."""

import io

import attrs
import pyarrow as pa
from attrs import validators
from PIL import Image, ImageOps

from any2ds import Media, ProcessError, Processor, option


def dhash(image):
    """Difference hash as 16 hex digits: on a 9x8 grey copy, whether each pixel is darker than its right neighbour."""
    pixels = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS).tobytes()
    bits = 0
    for row in range(8):
        for column in range(8):
            left = row * 9 + column
            bits = bits << 1 | (pixels[left + 1] > pixels[left])
    return f"{bits:016x}"


class Thumbnail(Processor):
    """Chain it after `image`, which rejects what cannot be decoded or is too large before this one decodes it again."""

    name = "thumbnail"

    @attrs.frozen
    class Options:  # annotated: the type parses the flag and YAML values
        size: int = option(128, "Longest side of the thumbnail, in pixels.", validators.ge(8))
        quality: int = option(85, "JPEG quality of the thumbnail, 1 to 95.", [validators.ge(1), validators.le(95)])

    def media_streams(self):
        return ["thumbnail"]

    def metadata_fields(self):
        return [pa.field("dhash", pa.string())]

    def process(self, fetched, result):
        size = self.options.size
        try:
            with Image.open(io.BytesIO(fetched.body)) as image:
                image.draft("RGB", (size, size))  # a JPEG decodes at the smallest scale still >= size
                picture = ImageOps.exif_transpose(image)
                if picture.has_transparency_data:  # on white, as the image processor does
                    picture = Image.alpha_composite(Image.new("RGBA", picture.size, "white"), picture.convert("RGBA"))
                picture = picture.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # not a picture, truncated, too large
            raise ProcessError("Image decoding error", error_type="decode") from error
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
        encoded = io.BytesIO()
        picture.save(encoded, "JPEG", quality=self.options.quality)
        result.media["thumbnail"] = Media(encoded.getvalue(), "thumb.jpg")
        result.metadata["dhash"] = dhash(picture)
