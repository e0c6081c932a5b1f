"""The ``audio`` processor: decode, filter by duration, convert channels, resample, re-encode.

Decoding is libsndfile's (wav, flac, ogg Vorbis and Opus, mp3, aiff, ...),
bounded by ``max_samples`` (see ``decode.py``); resampling is soxr's (HQ).
Formats libsndfile cannot read (m4a/aac, webm) fail as `audio.unsupported_format`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Optional

import attrs
import numpy as np
import pyarrow as pa
import soundfile as sf
import soxr
from attrs.validators import optional

from any2ds import (
    ConfigError, FetchResult, Media, Processor, SampleResult, at_least, between, greater_than, hookimpl, one_of, option,
)
from any2ds_plugins.audio.decode import codec_name, frames_to_read, header_frames, open_audio, read_frames
from any2ds_plugins.audio.encode import BITRATE_MODES, ENCODERS, encode
from any2ds_plugins.audio.errors import FAILED_TO_PROCESS, failure
from any2ds_plugins.audio.mix import to_channels

EncodeFormat = Literal["flac", "wav", "ogg", "opus", "mp3"]
Preset = Literal["laion"]
BitrateMode = Literal["constant", "average", "variable"]

# A preset fills the options left at their defaults; options set to anything else win.
PRESETS: dict[str, dict[str, Any]] = {
    "laion": {"sample_rate": 48_000, "channels": 1, "encode_format": "flac"},  # LAION-audio / CLAP
}
# 512 MiB of float32, the bytes of image's max_image_pixels in RGB; about 23 minutes of 48 kHz stereo.
DEFAULT_MAX_SAMPLES = 2**27







@attrs.frozen
class AudioOptions:
    """Options of the audio processor; flags are ``--audio_<name>``."""

    preset: Optional[Preset] = option(
        None, "laion: 48000 Hz, mono, flac (the LAION-audio / CLAP convention). The preset fills the audio "
        "options left at their defaults; any audio option you set wins.", optional(one_of(tuple(PRESETS))),
        flat="audio_preset")
    sample_rate: Optional[int] = option(
        None, "Output sample rate in Hz, resampled with soxr; default: keep the original.", optional(greater_than(0)),
        flat="audio_sample_rate")
    channels: Optional[int] = option(
        None, "1: downmix to mono; 2: stereo (mono duplicated, more channels downmixed); default: keep.",
        optional(one_of((1, 2))), flat="audio_channels")
    max_duration: Optional[float] = option(
        None, "Cut audio to this many seconds; only that much is decoded.", optional(greater_than(0)),
        flat="audio_max_duration")
    min_duration: float = option(
        0.0, "Refuse audio shorter than this many seconds ('audio too short').", at_least(0),
        flat="audio_min_duration")
    encode_format: EncodeFormat = option(
        "flac", "Stored format: flac, wav (16-bit), ogg (Vorbis), opus (in ogg) or mp3; also the extension and "
        "the parquet column name.", one_of(tuple(ENCODERS)), flat="audio_encode_format")
    compression_level: Optional[float] = option(
        None, "0-1: flac: 0 fastest, 1 smallest (lossless); ogg, opus, mp3: 0 highest bitrate, 1 lowest "
        "(below 1 for mp3); not for wav. Default: libsndfile's.", optional(between(0, 1)),
        flat="audio_compression_level")
    bitrate_mode: Optional[BitrateMode] = option(
        None, "mp3 only, with audio_compression_level: constant, average or variable.",
        optional(one_of(BITRATE_MODES)), flat="audio_bitrate_mode")
    max_samples: int = option(
        DEFAULT_MAX_SAMPLES,
        "Decompression-bomb guard: refuse audio that would decode or resample to more samples (frames x channels) "
        "than this; checked on the header before decoding, and while decoding.", greater_than(0),
        flat="audio_max_samples")

    def __attrs_post_init__(self) -> None:
        if self.preset is None:
            self._check_combination()
        else:
            self.resolved()  # the resolved options check their combination

    def resolved(self) -> AudioOptions:
        """These options with the preset's values in place of the options left at their defaults."""
        if self.preset is None:
            return self
        defaults = {field.name: field.default for field in attrs.fields(AudioOptions)}
        chosen = {name: value for name, value in PRESETS[self.preset].items() if getattr(self, name) == defaults[name]}
        return attrs.evolve(self, preset=None, **chosen)

    def _check_combination(self) -> None:
        encoder = ENCODERS[self.encode_format]
        if self.max_duration is not None and self.min_duration > self.max_duration:
            raise ValueError("audio_min_duration is above audio_max_duration: every sample would be refused")
        if self.compression_level is not None and not encoder.has_compression_level:
            raise ValueError(f"audio_compression_level does not apply to {self.encode_format}")
        if self.compression_level == 1 and self.encode_format == "mp3":
            raise ValueError("audio_compression_level must be below 1 for mp3 (libsndfile refuses 1)")
        if self.bitrate_mode is not None and not (encoder.has_bitrate_mode and self.compression_level is not None):
            raise ValueError("audio_bitrate_mode applies to mp3 only, together with audio_compression_level")
        if encoder.sample_rates and self.sample_rate is None:
            raise ValueError(f"{self.encode_format} stores only some sample rates: set audio_sample_rate to one of "
                             f"{', '.join(map(str, encoder.sample_rates))}")
        refusal = encoder.refusal(self.encode_format, self.sample_rate, self.channels)
        if refusal is not None:
            raise ValueError(refusal)


class AudioProcessor(Processor):
    """Decodes audio, filters it by duration, converts its channels and rate, and re-encodes it (thread-safe)."""

    name = "audio"
    Options = AudioOptions
    failure_status = FAILED_TO_PROCESS
    media_types = ("audio/*",)

    options: AudioOptions

    def __init__(self, options: AudioOptions) -> None:
        super().__init__(options)
        self.settings = options.resolved()

    def check(self) -> None:
        encode_format = self.settings.encode_format
        if not ENCODERS[encode_format].available():
            raise ConfigError(f"audio_encode_format {encode_format} needs a libsndfile that writes it "
                              f"(this one is {sf.__libsndfile_version__}; mp3 needs 1.1 or later)")

    def media_streams(self) -> Sequence[str]:
        return [self.settings.encode_format]

    def metadata_fields(self) -> Sequence[pa.Field]:
        return [
            pa.field("sample_rate", pa.int32()), pa.field("channels", pa.int32()), pa.field("frames", pa.int64()),
            pa.field("duration", pa.float64()), pa.field("original_sample_rate", pa.int32()),
            pa.field("original_channels", pa.int32()), pa.field("original_duration", pa.float64()),
            pa.field("container", pa.string()), pa.field("codec", pa.string()),
        ]

    def process(self, fetched: FetchResult, result: SampleResult) -> None:
        """Store the processed audio under ``encode_format`` with its metadata; raise ProcessError."""
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


@hookimpl
def any2ds_register_processors(register: Callable[[type[Processor]], None]) -> None:
    register(AudioProcessor)
