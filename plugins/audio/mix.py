"""Channel conversion: downmix to mono, up- or downmix to stereo.

libsndfile does not report a channel layout, and containers order surround
channels differently (WAV: FL FR FC LFE BL BR; Vorbis: FL FC FR BL BR LFE),
so the stereo downmix is layout-agnostic: channels 0 and 1 are left and
right, every further channel goes to both at -3 dB, and each side is scaled
so that full-scale input cannot clip.
"""

from __future__ import annotations

import numpy as np

SIDE_GAIN = np.float32(1 / np.sqrt(2))  # -3 dB: a channel shared by both sides keeps its power


def to_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """``samples`` (frames, source channels) as (frames, ``channels``); ``channels`` is 1 or 2."""
    source = samples.shape[1]
    if source == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=1, keepdims=True, dtype=np.float32)
    if source == 1:
        return np.repeat(samples, 2, axis=1)
    return samples @ stereo_downmix_matrix(source)


def stereo_downmix_matrix(source: int) -> np.ndarray:
    """The (source, 2) matrix taking ``source`` > 2 channels to left and right."""
    matrix = np.zeros((source, 2), np.float32)
    matrix[0, 0] = matrix[1, 1] = 1
    matrix[2:, :] = SIDE_GAIN
    return matrix / matrix.sum(axis=0)
