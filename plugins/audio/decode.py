"""Bounded decoding with libsndfile (through soundfile).

The header is parsed first; samples are then decoded in blocks of at most
``BLOCK_SAMPLES``, into a buffer never larger than the frame budget the
caller gives, so a file claiming hours of audio or thousands of channels
cannot exhaust memory. libsndfile clamps a WAV/AIFF data chunk that claims
more than the file holds, and stops at the frame count its header gives.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from any2ds import detect_media_type
from any2ds_plugins.audio.errors import failure, too_large

DECODING_ERROR = "audio decoding error"
BLOCK_SAMPLES = 2**18  # decoded per libsndfile call: 1 MiB of float32, whatever the channel count
SF_COUNT_MAX = 2**63 - 1  # what libsndfile reports as the frame count of a stream of unknown length
SF_ERR_UNRECOGNISED_FORMAT = 1  # sndfile.h's error code for bytes no libsndfile format claims
# libsndfile's text for its error 7 blames the file system; its MPEG decoder reports it for any stream
# mpg123 cannot open.
RENAMED_ERRORS = {7: "stream not decodable"}
DECODABLE_DETECTED = frozenset({"wav", "flac", "mp3", "ogg", "aiff"})  # detect_media_type's extensions
# A stream may end this much before its header's frame count without being called truncated
# (encoders round frame counts to their own frame sizes): 1%, and at least two MP3 frames' worth.
TRUNCATION_TOLERANCE, TRUNCATION_MIN_FRAMES = 0.01, 2304


@contextlib.contextmanager
def open_audio(body: bytes) -> Iterator[sf.SoundFile]:
    """Open ``body``: only the header is parsed. Unknown or broken formats fail the sample."""
    try:
        audio = sf.SoundFile(io.BytesIO(body))
    except Exception as exc:  # LibsndfileError mostly; soundfile raises others on odd headers
        raise _open_failure(body, exc) from exc
    with audio:
        if audio.samplerate <= 0 or audio.channels <= 0:
            raise failure(DECODING_ERROR, "decode")
        yield audio


def header_frames(audio: sf.SoundFile) -> int | None:
    """The frame count the header states, or None when libsndfile cannot tell it."""
    frames = audio.frames
    return frames if 0 <= frames < SF_COUNT_MAX else None


def codec_name(audio: sf.SoundFile) -> str:
    """The codec as soundfile names it (``VORBIS``, ``OPUS``, ``MPEG_LAYER_III``, ``PCM_16``);
    ``FLAC`` for FLAC, whose subtype only gives the sample width."""
    return "FLAC" if audio.format == "FLAC" else audio.subtype


def frames_to_read(audio: sf.SoundFile, cut: int | None) -> int | None:
    """The header's frame count, or ``cut`` if smaller; None when neither is known."""
    known = [n for n in (header_frames(audio), cut) if n is not None]
    return min(known) if known else None


def read_frames(audio: sf.SoundFile, wanted: int | None, budget: int, max_samples: int) -> np.ndarray:
    """Decode ``wanted`` frames (to the end when None) as float32 ``(frames, channels)``.

    Refuses (too_large) more than ``budget`` frames: before decoding when
    ``wanted`` is over it, while decoding when the length is unknown. A
    stream ending well before ``wanted`` is a decode failure ("truncated audio").
    """
    if budget < 1 or (wanted is not None and wanted > budget):
        raise too_large(max_samples)
    target = wanted if wanted is not None else budget + 1  # one frame over the budget proves it exceeded
    block = max(1, BLOCK_SAMPLES // audio.channels)
    buffer = np.empty((target if wanted is not None else min(target, block), audio.channels), np.float32)
    filled = 0
    try:
        while filled < target:
            if filled == len(buffer):  # unknown length: grow as the data comes
                buffer = _grown(buffer, filled, min(2 * len(buffer), target))
            step = min(block, len(buffer) - filled)
            got = len(audio.read(step, always_2d=True, out=buffer[filled:filled + step]))
            if got == 0:
                break
            filled += got
    except Exception as exc:  # libsndfile fails mid-stream on corrupt or cut compressed data
        raise _decode_failure(exc) from exc
    if filled > budget:
        raise too_large(max_samples)
    if wanted is not None and wanted - filled > max(TRUNCATION_MIN_FRAMES, TRUNCATION_TOLERANCE * wanted):
        raise failure("truncated audio", "decode")
    return buffer[:filled]


def _grown(buffer: np.ndarray, filled: int, frames: int) -> np.ndarray:
    grown = np.empty((frames, buffer.shape[1]), buffer.dtype)
    grown[:filled] = buffer[:filled]
    return grown


def _open_failure(body: bytes, exc: Exception) -> Exception:
    if getattr(exc, "code", None) != SF_ERR_UNRECOGNISED_FORMAT:
        return _decode_failure(exc)
    detected = detect_media_type(body)  # magic bytes only
    if detected.extension == "bin":
        return failure("unrecognised audio format", "audio.unsupported_format")
    if detected.extension in DECODABLE_DETECTED:  # the magic bytes of a format libsndfile reads, and nothing behind them
        return failure(f"{DECODING_ERROR} (malformed {detected.extension})", "decode")
    return failure(f"unsupported audio format ({detected.extension})", "audio.unsupported_format")


def _decode_failure(exc: Exception) -> Exception:
    """libsndfile's error text is fixed per error code; soundfile's message adds the object's address."""
    code = getattr(exc, "code", None)
    reason = RENAMED_ERRORS.get(code) or getattr(exc, "error_string", None)
    return failure(f"{DECODING_ERROR} ({reason.strip()})" if reason else DECODING_ERROR, "decode")
