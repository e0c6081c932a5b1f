"""Encoding with libsndfile (through soundfile), in one of the formats of ``encoders``."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from any2ds_plugins.audio.encoders import ENCODERS
from any2ds_plugins.audio.errors import failure


def encode(samples: np.ndarray, sample_rate: int, encode_format: str, compression_level: float | None,
           bitrate_mode: str | None) -> bytes:
    """``samples`` (float32, frames x channels, clipped here in place) stored as ``encode_format``."""
    encoder = ENCODERS[encode_format]
    refusal = encoder.refusal(encode_format, sample_rate, samples.shape[1])
    if refusal is not None:
        rate_refused = encoder.refusal(encode_format, sample_rate, None) is not None
        raise failure(f"{refusal}; set {'audio_sample_rate' if rate_refused else 'audio_channels'}",
                      "audio.unsupported_by_encoder")
    # libsndfile wraps out-of-range floats around when it writes integer samples; resampling overshoots.
    np.clip(samples, -1.0, 1.0, out=samples)
    buffer = io.BytesIO()
    try:
        sf.write(buffer, samples, sample_rate, format=encoder.format, subtype=encoder.subtype,
                 compression_level=compression_level,
                 bitrate_mode=bitrate_mode.upper() if bitrate_mode is not None else None)
    except Exception as exc:
        raise failure(f"audio encoding error ({encode_format})", "encode") from exc
    return buffer.getvalue()
