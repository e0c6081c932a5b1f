"""The audio processor on real files: every codec libsndfile decodes, at several rates and channel
counts, served on 127.0.0.1 and downloaded end to end; resampling, mixing, cutting, the bomb guard,
failures, every encode format and every output format read back with its own library."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
import webdataset as wds

from any2ds import ConfigError, FetchResult, ProcessError, Sample, SampleResult
from tests.audio_files import DURATION, encoded, flac_claiming, signal, wav_header
from any2ds.testing import download_in_process, read_dataset, send_bytes, serve_directory
from any2ds_plugins.audio.decode import open_audio, read_frames
from any2ds_plugins.audio.mix import stereo_downmix_matrix
from any2ds_plugins.audio.processor import AudioOptions, AudioProcessor
from any2ds_plugins.image.processor import ImageProcessor

RATES = (8000, 22050, 44100, 48000)
CHANNELS = (1, 2, 6)
LSB = 1 / 32768  # one step of 16-bit PCM


@attrs.frozen
class Codec:
    name: str
    format: str
    subtype: str
    extension: str
    codec_column: str  # what the processor reports in the `codec` column
    rates: tuple[int, ...] = RATES
    channels: tuple[int, ...] = CHANNELS


CODECS = [
    Codec("wav16", "WAV", "PCM_16", "wav", "PCM_16"),
    Codec("wav24", "WAV", "PCM_24", "wav", "PCM_24"),
    Codec("wavfloat", "WAV", "FLOAT", "wav", "FLOAT"),
    Codec("flac", "FLAC", "PCM_16", "flac", "FLAC"),
    Codec("vorbis", "OGG", "VORBIS", "ogg", "VORBIS"),
    Codec("opus", "OGG", "OPUS", "opus", "OPUS", rates=(8000, 16000, 24000, 48000)),  # the rates Opus has
    Codec("mp3", "MP3", "MPEG_LAYER_III", "mp3", "MPEG_LAYER_III", channels=(1, 2)),  # mp3 has at most 2
    Codec("aiff", "AIFF", "PCM_16", "aiff", "PCM_16"),
]


def tone(frequency: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def amplitude_at(samples: np.ndarray, rate: int, frequency: float) -> float:
    """The amplitude of the ``frequency`` component (a Hann-windowed DFT, scaled to a sine's amplitude)."""
    window = np.hanning(len(samples))
    t = np.arange(len(samples)) / rate
    return float(2 * abs(np.sum(samples * window * np.exp(-2j * np.pi * frequency * t))) / window.sum())


def run(body: bytes, **options) -> SampleResult:
    """Process ``body`` as the worker does; return the filled SampleResult."""
    result = SampleResult(Sample(key="000000000", shard_id=0, index=0, url="http://x/a", columns={}))
    AudioProcessor(AudioOptions(**options)).process(FetchResult(body=body, url="http://x/a"), result)
    return result


def decode_stream(result: SampleResult) -> tuple[np.ndarray, int]:
    (media,) = result.media.values()
    return sf.read(io.BytesIO(media.data), dtype="float32", always_2d=True)


def failure(body: bytes, **options) -> ProcessError:
    with pytest.raises(ProcessError) as caught:
        run(body, **options)
    assert caught.value.status == "failed_to_process"
    return caught.value


# ----------------------------------------------------------------------------- served corpus


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def corpus(audio_dir) -> dict[str, tuple[Codec, int, int]]:
    """Every codec at each of its rates and channel counts: file name -> (codec, rate, channels)."""
    files = {}
    for codec in CODECS:
        for rate in codec.rates:
            for channels in codec.channels:
                name = f"{codec.name}_{rate}_{channels}.{codec.extension}"
                samples = signal(rate, channels, seed=rate + channels)
                (audio_dir / name).write_bytes(encoded(samples, rate, codec.format, codec.subtype))
                files[name] = (codec, rate, channels)
    return files


@pytest.fixture(scope="module")
def audio_server(audio_dir, corpus):
    with serve_directory(audio_dir) as server:
        yield server


def download(tmp_path: Path, urls: list[str], output_format: str = "files", **options):
    """Run a download of ``urls`` with the audio processor; return (dataset, rows by url)."""
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    download_in_process(url_list=str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"),
                        processors=["audio"], output_format=output_format, allow_private_networks=True,
                        thread_count=8, observers=[], **options)
    dataset = read_dataset(tmp_path / "out")
    return dataset, {row["url"]: row for row in dataset.rows}


def shard_stats(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "00000_stats.json").read_text())


def source_samples(folder: Path, name: str) -> np.ndarray:
    """The served file decoded by soundfile, independently of the processor."""
    samples, _rate = sf.read(folder / name, dtype="float32", always_2d=True)
    return samples


def test_every_codec_rate_and_channel_count_becomes_48k_mono_flac_with_the_laion_preset(tmp_path, audio_dir, corpus,
                                                                                          audio_server):
    names = sorted(corpus)
    dataset, rows = download(tmp_path, [audio_server.url(f"/allowed/{n}") for n in names], audio_preset="laion")
    assert dataset.summary["successes"] == len(names), shard_stats(tmp_path)["status_dict"]
    for name in names:
        codec, rate, channels = corpus[name]
        row = rows[audio_server.url(f"/allowed/{name}")]
        assert row["status"] == "success"
        assert (row["sample_rate"], row["channels"], row["frames"]) == (48000, 1, DURATION * 48000), name
        assert row["duration"] == DURATION
        assert (row["original_sample_rate"], row["original_channels"]) == (rate, channels), name
        assert row["original_duration"] == pytest.approx(DURATION), name
        assert (row["container"], row["codec"]) == (codec.format, codec.codec_column), name
        output, output_rate = sf.read(io.BytesIO(dataset.samples[row["key"]]["flac"]), dtype="float32",
                                      always_2d=True)
        assert (output_rate, output.shape) == (48000, (DURATION * 48000, 1)), name
        # The same audio, decoded, averaged and resampled outside the processor, to one 16-bit step.
        expected = soxr.resample(source_samples(audio_dir, name).mean(axis=1), rate, 48000)
        assert np.abs(output[:, 0] - expected).max() <= 1.5 * LSB, name


def test_every_codec_keeps_its_rate_channels_and_samples_by_default(tmp_path, audio_dir, corpus, audio_server):
    names = sorted(corpus)
    dataset, rows = download(tmp_path, [audio_server.url(f"/allowed/{n}") for n in names], output_format="webdataset")
    assert dataset.summary["successes"] == len(names)
    for name in names:
        _codec, rate, channels = corpus[name]
        row = rows[audio_server.url(f"/allowed/{name}")]
        assert (row["sample_rate"], row["channels"], row["frames"]) == (rate, channels, DURATION * rate), name
        output, output_rate = sf.read(io.BytesIO(dataset.samples[row["key"]]["flac"]), dtype="float32",
                                      always_2d=True)
        assert output_rate == rate
        # flac stores 16-bit samples: the decoded source, to one rounding step.
        assert np.abs(output - source_samples(audio_dir, name)).max() <= LSB, name


# ----------------------------------------------------------------------------- resampling and mixing


def test_resampling_keeps_a_tones_frequency():
    result = run(encoded(tone(1000, 44100), 44100, "WAV"), sample_rate=48000)
    output, rate = decode_stream(result)
    assert (rate, len(output)) == (48000, 48000)
    assert abs(peak_frequency(output[:, 0], rate) - 1000) <= 1
    assert amplitude_at(output[:, 0], rate, 1000) == pytest.approx(0.5, abs=0.01)


def test_downsampling_filters_out_what_the_new_rate_cannot_hold():
    # At 48 kHz, 3 kHz plus 6 kHz; at 8 kHz, 6 kHz would fold onto 2 kHz unless filtered out first.
    samples = tone(3000, 48000) + tone(6000, 48000)
    output, rate = decode_stream(run(encoded(samples, 48000, "WAV"), sample_rate=8000))
    assert rate == 8000
    assert amplitude_at(output[:, 0], rate, 3000) == pytest.approx(0.5, abs=0.01)
    assert amplitude_at(output[:, 0], rate, 2000) < 0.001


def test_mono_is_the_mean_of_the_channels():
    stereo = np.stack([tone(440, 22050), tone(660, 22050, amplitude=0.3)], axis=1)
    output, _ = decode_stream(run(encoded(stereo, 22050, "FLAC"), channels=1))
    assert output.shape == (22050, 1)
    assert amplitude_at(output[:, 0], 22050, 440) == pytest.approx(0.25, abs=0.005)
    assert amplitude_at(output[:, 0], 22050, 660) == pytest.approx(0.15, abs=0.005)


def test_mono_becomes_stereo_by_duplication():
    output, _ = decode_stream(run(encoded(tone(440, 16000), 16000, "WAV"), channels=2))
    assert output.shape == (16000, 2)
    assert np.array_equal(output[:, 0], output[:, 1])


def test_surround_downmix_keeps_left_and_right_apart_and_shares_the_rest():
    frequencies = [300, 550, 800, 1050, 1300, 1550]
    six = np.stack([tone(f, 48000, amplitude=0.15) for f in frequencies], axis=1)
    output, _ = decode_stream(run(encoded(six, 48000, "FLAC"), channels=2))
    left, right = output[:, 0], output[:, 1]
    matrix = stereo_downmix_matrix(6)
    assert matrix.sum(axis=0) == pytest.approx([1, 1])  # full scale on every channel cannot clip
    assert amplitude_at(left, 48000, 300) == pytest.approx(0.15 * matrix[0, 0], abs=0.002)
    assert amplitude_at(right, 48000, 300) < 0.001
    assert amplitude_at(right, 48000, 550) == pytest.approx(0.15 * matrix[1, 1], abs=0.002)
    assert amplitude_at(left, 48000, 550) < 0.001
    for k, frequency in enumerate(frequencies[2:], start=2):
        assert amplitude_at(left, 48000, frequency) == pytest.approx(0.15 * matrix[k, 0], abs=0.002)
        assert amplitude_at(right, 48000, frequency) == pytest.approx(0.15 * matrix[k, 1], abs=0.002)


def test_resampling_overshoot_is_clipped_not_wrapped():
    # A full-scale square wave rings above 1 when resampled; 16-bit PCM would wrap it to -1.
    square = np.sign(tone(100, 44100)).astype(np.float32) * 0.999
    output, _ = decode_stream(run(encoded(square, 44100, "WAV", "FLOAT"), sample_rate=48000, encode_format="wav"))
    unclipped = soxr.resample(square, 44100, 48000)
    assert unclipped.max() > 1.02
    overshoot = unclipped > 1
    assert np.all(output[overshoot, 0] > 0.99)


# ----------------------------------------------------------------------------- durations and limits


def test_max_duration_cuts_and_reports_the_original_duration():
    result = run(encoded(signal(44100, 2, seconds=3.0), 44100, "FLAC"), max_duration=1.0, sample_rate=48000)
    output, rate = decode_stream(result)
    assert output.shape == (48000, 2)
    assert result.metadata["duration"] == 1.0 and result.metadata["original_duration"] == 3.0


def test_max_duration_decodes_only_what_it_keeps():
    # A flac cut after ~2 of its 4 seconds: decoding it fails, but not its first second.
    body = encoded(signal(48000, 1, seconds=4.0), 48000, "FLAC")
    cut_file = body[: len(body) // 2]
    assert failure(cut_file).error_type == "decode"
    result = run(cut_file, max_duration=1.0)
    assert result.metadata["frames"] == 48000 and result.metadata["original_duration"] == 4.0


def test_min_duration_refuses_short_audio_with_a_fixed_message():
    error = failure(encoded(signal(22050, 1, seconds=0.5), 22050, "WAV"), min_duration=1.0)
    assert (error.message, error.error_type) == ("audio too short", "filtered")
    assert run(encoded(signal(22050, 1, seconds=1.0), 22050, "WAV"), min_duration=1.0).metadata["duration"] == 1.0


def test_a_header_claiming_hours_is_refused_before_decoding():
    hours = flac_claiming(48000 * 3600 * 10, encoded(signal(48000, 2, seconds=1.0), 48000, "FLAC"))
    with open_audio(hours) as audio:
        assert audio.frames == 48000 * 3600 * 10
    error = failure(hours)
    assert error.error_type == "too_large"
    assert error.message == "audio too large to process (more than audio_max_samples=134217728 samples)"


def test_the_budget_counts_resampled_samples_too():
    # 1 s at 8 kHz mono is 8000 samples; resampled to 48 kHz stereo it is 96000.
    body = encoded(signal(8000, 1, seconds=1.0), 8000, "WAV")
    assert run(body, max_samples=8000).metadata["frames"] == 8000
    assert failure(body, max_samples=95999, sample_rate=48000, channels=2).error_type == "too_large"
    assert run(body, max_samples=96000, sample_rate=48000, channels=2).metadata["frames"] == 48000


def test_a_stream_of_unknown_length_is_decoded_within_the_budget():
    body = encoded(signal(16000, 2, seconds=2.0), 16000, "FLAC")
    with open_audio(body) as audio:  # as if the header gave no length: read to the end, in growing blocks
        assert read_frames(audio, None, budget=40000, max_samples=80000).shape == (32000, 2)
    with open_audio(body) as audio, pytest.raises(ProcessError) as caught:
        read_frames(audio, None, budget=20000, max_samples=40000)
    assert caught.value.error_type == "too_large"


def test_a_wav_header_claiming_more_than_its_data_gives_the_data():
    data = (signal(48000, 2, seconds=0.25) * 32767).astype("<i2").tobytes()
    result = run(wav_header(2, 48000, 2**31) + data)
    assert result.metadata["frames"] == 12000 and result.metadata["original_duration"] == 0.25


def test_a_wav_header_claiming_65535_channels_is_refused():
    error = failure(wav_header(65535, 48000, 2**32 - 2) + bytes(100_000))
    assert error.error_type == "decode" and "0x" not in error.message


def test_a_truncated_mp3_is_reported_as_truncated():
    body = encoded(signal(44100, 2, seconds=2.0), 44100, "MP3")
    error = failure(body[: len(body) // 2])
    assert (error.message, error.error_type) == ("truncated audio", "decode")


def test_an_empty_stream_is_refused():
    error = failure(wav_header(1, 8000, 0))
    assert (error.message, error.error_type) == ("empty audio", "audio.empty")


# ----------------------------------------------------------------------------- encode formats


@pytest.mark.parametrize("encode_format, rate, channels", [
    ("flac", 44100, 2), ("wav", 22050, 1), ("ogg", 48000, 2), ("opus", 48000, 2), ("mp3", 44100, 2),
    ("mp3", 16000, 1), ("opus", 16000, 1), ("ogg", 8000, 6),
])
def test_every_encode_format_stores_what_was_asked(encode_format, rate, channels):
    source = signal(44100, 6 if channels == 6 else 2, seconds=1.0)
    result = run(encoded(source, 44100, "WAV"), encode_format=encode_format, sample_rate=rate,
                 channels=None if channels == 6 else channels)
    (stream, media), = result.media.items()
    assert stream == media.extension == encode_format
    with sf.SoundFile(io.BytesIO(media.data)) as stored:
        assert (stored.samplerate, stored.channels) == (rate, channels)
        assert {"flac": "FLAC", "wav": "WAV", "ogg": "OGG", "opus": "OGG", "mp3": "MP3"}[encode_format] == stored.format
        assert stored.frames == pytest.approx(rate, abs=rate * 0.01)
        assert amplitude_at(stored.read(dtype="float32", always_2d=True)[:, 0], rate, 300) > 0.1


@pytest.mark.parametrize("encode_format", ["ogg", "opus", "mp3", "flac"])
def test_compression_level_trades_size(encode_format):
    body = encoded(signal(48000, 2, seconds=2.0), 48000, "WAV")
    sizes = [len(run(body, encode_format=encode_format, sample_rate=48000, compression_level=level)
                 .media[encode_format].data) for level in (0.0, 0.9)]
    assert sizes[0] > sizes[1]


def test_mp3_bitrate_mode_constant_gives_the_same_size_every_second():
    body = encoded(signal(44100, 2, seconds=2.0), 44100, "WAV")
    constant = run(body, encode_format="mp3", sample_rate=44100, compression_level=0.0, bitrate_mode="constant")
    variable = run(body, encode_format="mp3", sample_rate=44100, compression_level=0.0, bitrate_mode="variable")
    # 320 kbit/s over 2 s: about 80 kB, whatever the content.
    assert len(constant.media["mp3"].data) == pytest.approx(80_000, rel=0.05)
    assert len(variable.media["mp3"].data) != len(constant.media["mp3"].data)


def test_kept_channels_the_encoder_cannot_store_fail_the_sample_clearly():
    body = encoded(signal(44100, 6, seconds=0.1), 44100, "WAV")
    error = failure(body, encode_format="mp3", sample_rate=44100)
    assert (error.message, error.error_type) == (
        "mp3 stores at most 2 channels; set audio_channels", "audio.unsupported_by_encoder")


def test_mp3_keeps_the_rates_it_stores_and_fails_the_others_per_sample():
    """No audio_sample_rate needed for mp3 (opus requires one): a 44.1 kHz file keeps its rate, a
    96 kHz one fails alone."""
    kept = run(encoded(signal(44100, 2, seconds=0.2), 44100, "WAV"), encode_format="mp3")
    assert sf.info(io.BytesIO(kept.media["mp3"].data)).samplerate == 44100
    error = failure(encoded(signal(96000, 2, seconds=0.2), 96000, "WAV"), encode_format="mp3")
    assert (error.message, error.error_type) == (
        "mp3 stores sample rates 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000 Hz; "
        "set audio_sample_rate", "audio.unsupported_by_encoder")


# ----------------------------------------------------------------------------- options


def test_the_preset_fills_what_is_left_at_default_and_explicit_options_win():
    laion = AudioOptions(preset="laion").resolved()
    assert (laion.sample_rate, laion.channels, laion.encode_format) == (48000, 1, "flac")
    mine = AudioOptions(preset="laion", sample_rate=16000, encode_format="ogg").resolved()
    assert (mine.sample_rate, mine.channels, mine.encode_format) == (16000, 1, "ogg")
    assert AudioProcessor(AudioOptions(preset="laion", encode_format="mp3")).media_streams() == ["mp3"]


@pytest.mark.parametrize("options, message", [
    (dict(sample_rate=0), "audio_sample_rate must be greater than 0"),
    (dict(channels=6), "audio_channels must be one of 1, 2"),
    (dict(preset="clap"), "audio_preset must be one of laion"),
    (dict(encode_format="m4a"), "audio_encode_format must be one of flac, wav, ogg, opus, mp3"),
    (dict(compression_level=1.5), "audio_compression_level must be between 0 and 1"),
    (dict(min_duration=5, max_duration=2), "audio_min_duration is above audio_max_duration"),
    (dict(encode_format="wav", compression_level=0.5), "audio_compression_level does not apply to wav"),
    (dict(encode_format="mp3", sample_rate=44100, compression_level=1.0), "must be below 1 for mp3"),
    (dict(bitrate_mode="constant"), "audio_bitrate_mode applies to mp3 only, together with audio_compression_level"),
    (dict(encode_format="opus"), "opus stores only some sample rates: set audio_sample_rate to one of 8000"),
    (dict(encode_format="opus", sample_rate=44100), "opus stores sample rates 8000, 12000, 16000, 24000, 48000 Hz"),
    (dict(encode_format="ogg", sample_rate=384000), "ogg stores sample rates up to 192000 Hz"),
    (dict(preset="laion", encode_format="mp3", compression_level=1.0), "must be below 1 for mp3"),
])
def test_bad_options_are_refused_naming_the_flag(options, message):
    with pytest.raises(ValueError, match=message):
        AudioOptions(**options)


def test_a_bad_option_stops_the_run_at_startup(tmp_path):
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.wav\n")
    with pytest.raises(ConfigError, match="processor 'audio': audio_channels must be one of 1, 2; got 3"):
        download_in_process(url_list=str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"),
                            processors=["audio"], audio_channels=3)


def test_declares_audio_media_and_columns_apart_from_the_image_processors():
    processor = AudioProcessor(AudioOptions())
    assert AudioProcessor.media_types == ("audio/*",)
    assert processor.media_streams() == ["flac"]
    image_columns = {f.name for f in ImageProcessor(ImageProcessor.Options()).metadata_fields()}
    audio_columns = [f.name for f in processor.metadata_fields()]
    assert audio_columns == ["sample_rate", "channels", "frames", "duration", "original_sample_rate",
                             "original_channels", "original_duration", "container", "codec"]
    assert not image_columns & set(audio_columns)


def test_threads_give_the_same_bytes_as_one_thread(audio_dir, corpus):
    bodies = [(audio_dir / name).read_bytes() for name in sorted(corpus)[::3]]
    processor = AudioProcessor(AudioOptions(preset="laion"))

    def stored(body: bytes) -> bytes:
        result = SampleResult(Sample(key="0", shard_id=0, index=0, url="http://x/a", columns={}))
        processor.process(FetchResult(body=body, url="http://x/a"), result)
        return result.media["flac"].data

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(stored, bodies)) == [stored(body) for body in bodies]


# ----------------------------------------------------------------------------- failures end to end


def test_undecodable_bodies_become_failed_records_with_stable_messages(tmp_path, audio_server):
    good = encoded(signal(44100, 2, seconds=1.0), 44100, "MP3")
    flac = encoded(signal(44100, 2, seconds=2.0), 44100, "FLAC")
    m4a = struct.pack(">I", 24) + b"ftypM4A \x00\x00\x00\x00M4A mp42" + bytes(2000)
    webm = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d") + bytes(2000)
    noise = np.random.default_rng(0).bytes(5000)
    html = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>"
    bodies = {
        "truncated.mp3": (good[: len(good) // 2], "audio/mpeg"),
        "truncated.flac": (flac[: len(flac) // 3], "audio/flac"),
        "page.mp3": (html, "audio/mpeg"),
        "other-page.ogg": (html.replace(b"404", b"410 Gone"), "audio/ogg"),
        "noise.wav": (noise, "audio/wav"),
        "noise-after-id3.mp3": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + noise, "audio/mpeg"),
        "noise-after-sync.mp3": (b"\xff\xfb\x90\x64" + noise, "audio/mpeg"),
        "song.m4a": (m4a, "audio/mp4"),
        "clip.webm": (webm, "audio/webm"),
        "bomb.wav": (wav_header(65535, 48000, 2**32 - 2) + bytes(100_000), "audio/wav"),
        "hours.flac": (flac_claiming(48000 * 3600 * 10, flac), "audio/flac"),
        "ok.mp3": (good, "audio/mpeg"),
    }
    audio_server.route("/bodies/", lambda request: send_bytes(request, *bodies[request.path.rsplit("/", 1)[1]]))
    dataset, rows = download(tmp_path, [audio_server.url(f"/bodies/{name}") for name in bodies])
    by_name = {url.rsplit("/", 1)[1]: row for url, row in rows.items()}
    outcome = {name: (row["status"], row["error_type"]) for name, row in by_name.items()}
    assert outcome == {
        "truncated.mp3": ("failed_to_process", "decode"),
        "truncated.flac": ("failed_to_process", "decode"),
        "page.mp3": ("failed_to_process", "audio.unsupported_format"),
        "other-page.ogg": ("failed_to_process", "audio.unsupported_format"),
        "noise.wav": ("failed_to_process", "audio.unsupported_format"),
        "noise-after-id3.mp3": ("failed_to_process", "decode"),
        "noise-after-sync.mp3": ("failed_to_process", "decode"),
        "song.m4a": ("failed_to_process", "audio.unsupported_format"),
        "clip.webm": ("failed_to_process", "audio.unsupported_format"),
        "bomb.wav": ("failed_to_process", "decode"),
        "hours.flac": ("failed_to_process", "too_large"),
        "ok.mp3": ("success", None),
    }
    messages = shard_stats(tmp_path)["status_dict"]
    assert messages["unrecognised audio format"] == 3  # two different pages and noise: one key
    assert messages["unsupported audio format (m4a)"] == 1 and messages["unsupported audio format (webm)"] == 1
    assert messages["truncated audio"] == 1 and messages["success"] == 1
    assert messages["audio decoding error (malformed mp3)"] == 1
    assert messages["audio decoding error (stream not decodable)"] == 1
    assert messages["audio decoding error (Too many channels specified.)"] == 1
    for message in messages:
        assert "0x" not in message and " object at " not in message, message
    assert set(dataset.samples) == {by_name["ok.mp3"]["key"]}


# ----------------------------------------------------------------------------- output formats


@pytest.fixture(scope="module")
def three_files(corpus) -> list[str]:
    return ["wav16_44100_2.wav", "mp3_22050_1.mp3", "opus_48000_6.opus"]


def test_webdataset_output_reads_back_with_webdataset(tmp_path, three_files, audio_server):
    _dataset, rows = download(tmp_path, [audio_server.url(f"/allowed/{n}") for n in three_files],
                              output_format="webdataset", audio_preset="laion")
    samples = list(wds.WebDataset(str(tmp_path / "out" / "00000.tar"), shardshuffle=False))
    assert len(samples) == 3
    for sample in samples:
        record = json.loads(sample["json"])
        output, rate = sf.read(io.BytesIO(sample["flac"]), always_2d=True)
        assert (rate, output.shape) == (48000, (record["frames"], 1))
        assert record == rows[record["url"]]


def test_files_output_stores_flac_files_and_json_sidecars(tmp_path, three_files, audio_server):
    download(tmp_path, [audio_server.url(f"/allowed/{n}") for n in three_files], output_format="files",
             audio_preset="laion")
    folder = tmp_path / "out" / "00000"
    flacs = sorted(folder.glob("*.flac"))
    assert len(flacs) == 3
    for path in flacs:
        record = json.loads(path.with_suffix(".json").read_text())
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames) == (48000, 1, record["frames"])


def test_parquet_output_holds_the_audio_column(tmp_path, three_files, audio_server):
    download(tmp_path, [audio_server.url(f"/allowed/{n}") for n in three_files], output_format="parquet",
             audio_preset="laion", audio_encode_format="ogg")
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    assert {"ogg", "sample_rate", "codec", "original_duration"} <= set(table.column_names)
    for row in table.to_pylist():
        output, rate = sf.read(io.BytesIO(row["ogg"]), always_2d=True)
        assert (rate, output.shape[1]) == (48000, 1) and len(output) == row["frames"]


def test_tfrecord_output_reads_back_with_tensorflow(tmp_path, three_files, audio_server):
    tf = pytest.importorskip("tensorflow")
    download(tmp_path, [audio_server.url(f"/allowed/{n}") for n in three_files], output_format="tfrecord",
             audio_sample_rate=16000, audio_channels=2, audio_encode_format="wav")
    spec = {"wav": tf.io.FixedLenFeature([], tf.string), "sample_rate": tf.io.FixedLenFeature([], tf.int64),
            "frames": tf.io.FixedLenFeature([], tf.int64), "codec": tf.io.FixedLenFeature([], tf.string)}
    records = list(tf.data.TFRecordDataset(str(tmp_path / "out" / "00000.tfrecord")))
    assert len(records) == 3
    codecs = set()
    for raw in records:
        parsed = tf.io.parse_single_example(raw, spec)
        audio, rate = tf.audio.decode_wav(parsed["wav"])
        assert int(rate) == int(parsed["sample_rate"]) == 16000
        assert tuple(audio.shape) == (int(parsed["frames"]), 2)
        codecs.add(parsed["codec"].numpy().decode())
    assert codecs == {"PCM_16", "MPEG_LAYER_III", "OPUS"}


def test_the_command_line_downloads_audio(tmp_path, three_files, audio_server):
    (tmp_path / "urls.txt").write_text("".join(audio_server.url(f"/allowed/{n}") + "\n" for n in three_files))
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "any2ds", "download", "--url_list", str(tmp_path / "urls.txt"),
                    "--output_folder", str(out), "--processors", "[audio]", "--audio_preset", "laion",
                    "--audio_max_duration", "0.25", "--output_format", "webdataset", "--allow_private_networks",
                    "true", "--processes_count", "1", "--thread_count", "4", "--observers", "[]"],
                   check=True, capture_output=True, env={**os.environ, "ANY2DS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    with tarfile.open(out / "00000.tar") as tar:
        flacs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".flac")]
    assert len(flacs) == 3
    for data in flacs:
        info = sf.info(io.BytesIO(data))
        assert (info.samplerate, info.channels, info.frames) == (48000, 1, 12000)
