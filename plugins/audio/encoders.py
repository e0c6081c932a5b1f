"""The stored formats: libsndfile's format and subtype for each, what each can hold, and their quality setting.

``compression_level`` is soundfile's, from 0 to 1 (measured with libsndfile 1.2):

- flac: libFLAC's compression level scaled to 0-1: 0 = fastest and largest, 1 = smallest; lossless;
- ogg (Vorbis) and opus: 0 = highest bitrate, 1 = lowest;
- mp3: 0 = 320 kbit/s, less as the level rises, under ``bitrate_mode`` (constant, average, variable),
  which libsndfile applies only together with a level; libsndfile refuses level 1 for mp3;
- wav: uncompressed, no level.

Unset, libsndfile's defaults apply (flac level 5 of 8, Vorbis quality 0.4, variable-bitrate mp3).
flac and wav store 16-bit samples.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs


@attrs.frozen
class Encoder:
    """A stored format: libsndfile's format and subtype, and what it can hold."""

    format: str
    subtype: str
    max_channels: int
    max_sample_rate: int
    sample_rates: Collection[int] = ()  # when only these rates exist
    # No usual rate (44.1 kHz...) among them: keeping each file's rate would fail most files, so
    # audio_sample_rate must be set. mp3 stores every usual rate up to 48 kHz: it keeps them.
    rate_required: bool = False
    has_compression_level: bool = True
    has_bitrate_mode: bool = False

    def refusal(self, name: str, sample_rate: int | None, channels: int | None) -> str | None:
        """Why this format cannot store audio of this rate or channel count (None: it can)."""
        if sample_rate is not None and (sample_rate > self.max_sample_rate
                                        or (self.sample_rates and sample_rate not in self.sample_rates)):
            allowed = (", ".join(map(str, self.sample_rates)) if self.sample_rates
                       else f"up to {self.max_sample_rate}")
            return f"{name} stores sample rates {allowed} Hz"
        if channels is not None and channels > self.max_channels:
            return f"{name} stores at most {self.max_channels} channels"
        return None

    def available(self) -> bool:
        """Whether this process's libsndfile writes the format (asked at startup, when a run uses audio)."""
        import soundfile as sf

        return self.format in sf.available_formats() and self.subtype in sf.available_subtypes(self.format)


# Limits found by encoding with libsndfile 1.2: above them it refuses, or (Vorbis above ~200 kHz) crashes.
ENCODERS = {
    "flac": Encoder("FLAC", "PCM_16", max_channels=8, max_sample_rate=655_350),
    "wav": Encoder("WAV", "PCM_16", max_channels=1024, max_sample_rate=2**31 - 1, has_compression_level=False),
    "ogg": Encoder("OGG", "VORBIS", max_channels=255, max_sample_rate=192_000),
    "opus": Encoder("OGG", "OPUS", max_channels=255, max_sample_rate=48_000,
                    sample_rates=(8000, 12000, 16000, 24000, 48000), rate_required=True),
    "mp3": Encoder("MP3", "MPEG_LAYER_III", max_channels=2, max_sample_rate=48_000,
                   sample_rates=(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
                   has_bitrate_mode=True),
}
BITRATE_MODES = ("constant", "average", "variable")
