"""The ``audio`` processor: decode, filter by duration, convert channels, resample, re-encode.

Decoding is libsndfile's (wav, flac, ogg Vorbis and Opus, mp3, aiff, ...),
bounded by ``max_samples`` (see ``decode.py``); resampling is soxr's (HQ).
Formats libsndfile cannot read (m4a/aac, webm) fail as `audio.unsupported_format`.

This module is what every process of a run loads (options, routing, metadata columns); the work
on samples is in ``transcode``, imported on the first sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional

import attrs
import pyarrow as pa
from attrs.validators import optional

from any2ds import (
    ConfigError, FetchResult, Processor, SampleResult, at_least, between, greater_than, hookimpl, one_of, option,
)
from any2ds_plugins.audio.encoders import BITRATE_MODES, ENCODERS
from any2ds_plugins.audio.errors import FAILED_TO_PROCESS

if TYPE_CHECKING:
    from any2ds_plugins.audio.transcode import Transcoder

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
        if encoder.rate_required and self.sample_rate is None:
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
        self._transcoder: Transcoder | None = None

    def check(self) -> None:
        encode_format = self.settings.encode_format
        if not ENCODERS[encode_format].available():
            import soundfile as sf

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
        if self._transcoder is None:
            # libsndfile and soxr are imported here, in the processes that process audio.
            from any2ds_plugins.audio.transcode import Transcoder
            self._transcoder = Transcoder(self.settings)
        self._transcoder.process(fetched, result)


@hookimpl
def any2ds_register_processors(register: Callable[[type[Processor]], None]) -> None:
    register(AudioProcessor)
