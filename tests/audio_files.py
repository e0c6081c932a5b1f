"""Audio files for the tests, real ones and lying ones."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

DURATION = 0.5  # seconds of the generated clips


def signal(rate: int, channels: int, seconds: float = DURATION, seed: int = 0) -> np.ndarray:
    """float32 (frames, channels): a tone per channel (300 Hz, 550 Hz, ...), a shared sine sweep and noise."""
    t = np.arange(round(seconds * rate)) / rate
    sweep = np.sin(2 * np.pi * (100 + (rate / 4 - 100) * t / (2 * seconds)) * t)
    noise = np.random.default_rng(seed).standard_normal((len(t), channels))
    tones = np.stack([np.sin(2 * np.pi * (300 + 250 * k) * t) for k in range(channels)], axis=1)
    return (0.3 * tones + 0.1 * sweep[:, None] + 0.02 * noise).astype(np.float32)


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_header(channels: int, rate: int, data_bytes: int, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header that says what we want it to say."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    return (b"RIFF" + struct.pack("<I", min(36 + data_bytes, 0xFFFFFFFF)) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
            + fmt + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def flac_claiming(total_frames: int, body: bytes) -> bytes:
    """``body`` (a FLAC file) with its STREAMINFO's total-samples field (36 bits) set to ``total_frames``."""
    info = bytearray(body)
    at = body.index(b"fLaC") + 8 + 13  # after the marker, the block header and 13 bytes of STREAMINFO
    info[at] = (info[at] & 0xF0) | (total_frames >> 32)
    info[at + 1: at + 5] = struct.pack(">I", total_frames & 0xFFFFFFFF)
    return bytes(info)
