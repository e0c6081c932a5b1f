"""How the image processor fails a sample: img2dataset's status, a stable error type, a fixed message.

Messages become ``status_dict`` keys, so they never hold a per-image size or an object address.
"""

from __future__ import annotations

from any2ds import ProcessError

FAILED_TO_RESIZE = "failed_to_resize"
DECODING_ERROR = "Image decoding error"
OUT_OF_MEMORY = "not enough memory to process the image"


def failure(message: str, error_type: str) -> ProcessError:
    """A failed sample: img2dataset's status and message, plus an error class for any2ds's stats."""
    return ProcessError(message, status=FAILED_TO_RESIZE, error_type=error_type)


def too_large(limit: int) -> ProcessError:
    """The bomb-guard failure; one fixed message per run, so status counters stay small."""
    return failure(f"image too large to decode (more than max_image_pixels={limit} pixels)", "too_large")
