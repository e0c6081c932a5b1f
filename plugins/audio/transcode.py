"""The audio processor's work on one sample: decode, filter, convert channels, resample, encode.

Imported by :meth:`AudioProcessor.process <any2ds_plugins.audio.processor.AudioProcessor.process>`
on first use: libsndfile (through soundfile) and soxr load where audio is processed, not in every
process of a run that loads the plugin (1.7 MB and 12 ms each).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import soxr

from any2ds import FetchResult, Media, SampleResult
from any2ds_plugins.audio.decode import codec_name, frames_to_read, header_frames, open_audio, read_frames
from any2ds_plugins.audio.encode import encode
from any2ds_plugins.audio.errors import failure
from any2ds_plugins.audio.mix import to_channels

if TYPE_CHECKING:
    from any2ds_plugins.audio.processor import AudioOptions


class Transcoder:
    """What :class:`~any2ds_plugins.audio.processor.AudioProcessor` does to a sample, with its resolved
    options (thread-safe)."""

    def __init__(self, settings: AudioOptions) -> None:
        self.settings = settings

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        """See :meth:`AudioProcessor.process <any2ds_plugins.audio.processor.AudioProcessor.process>`."""
        settings = self.settings
        with open_audio(fetched.body) as audio:
            rate, channels = audio.samplerate, audio.channels
            out_rate, out_channels = settings.sample_rate or rate, settings.channels or channels
            cut = math.ceil(settings.max_duration * rate) if settings.max_duration is not None else None
            samples = read_frames(audio, frames_to_read(audio, cut),
                                  self._frame_budget(rate, channels, out_rate, out_channels), settings.max_samples)
            # Read to the end: the decoded length is the truth; cut short: only the header knows the rest.
            original_frames = header_frames(audio) if cut is not None and len(samples) == cut else len(samples)
            container, codec = audio.format, codec_name(audio)
        if len(samples) == 0:
            raise failure("empty audio", "audio.empty")
        if len(samples) / rate < settings.min_duration:
            raise failure("audio too short", "filtered")
        samples = self._convert(samples, rate, out_rate, out_channels)
        if settings.max_duration is not None:  # exact at the output rate, whatever the resampling ratio
            samples = samples[:round(settings.max_duration * out_rate)]
        data = encode(samples, out_rate, settings.encode_format, settings.compression_level, settings.bitrate_mode)
        result.media[settings.encode_format] = Media(data, settings.encode_format)
        result.metadata.update(
            sample_rate=out_rate, channels=out_channels, frames=len(samples), duration=len(samples) / out_rate,
            original_sample_rate=rate, original_channels=channels,
            original_duration=original_frames / rate if original_frames is not None else None,
            container=container, codec=codec)

    def _frame_budget(self, rate: int, channels: int, out_rate: int, out_channels: int) -> int:
        """Input frames allowed: their decoded samples and their resampled samples both within max_samples."""
        samples_per_frame = max(channels, out_channels * out_rate / rate)
        return math.floor(self.settings.max_samples / samples_per_frame)

    def _convert(self, samples: np.ndarray, rate: int, out_rate: int, out_channels: int) -> np.ndarray:
        """Mix channels (before resampling when that means fewer channels to resample) and resample."""
        if out_channels < samples.shape[1]:
            samples = to_channels(samples, out_channels)
        if out_rate != rate:
            try:
                samples = soxr.resample(samples, rate, out_rate)
            except Exception as exc:  # soxr refuses ratios it cannot handle
                raise failure("audio resampling error", "audio.resample") from exc
        return to_channels(samples, out_channels)
