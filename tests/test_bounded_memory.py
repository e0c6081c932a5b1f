"""No single input can take a worker down: each processor's worst known inputs, run end to end
under an address-space limit, fail as clean rows while the rows around them succeed.

Each run happens in a subprocess (so the limit applies only there) that imports everything,
warms up with one good row, measures its idle virtual size, sets ``RLIMIT_AS`` to that plus a
processor's headroom and downloads the rows from a real HTTP server in this process.
A processor's worst inputs are one :class:`ProcessorCase` in ``PROCESSOR_CASES``.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import tarfile
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image

from any2ds import TRUNCATION_MARK
from any2ds.testing import download_in_process, read_dataset, send_bytes, serve_directory
from tests.audio_files import encoded, flac_claiming, signal, wav_header
from tests.conftest import encode, gradient
from tests.fault_server import BOMB_SIDE, png_chunk, png_declaring, real_bomb_png

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
TRUNCATED_EXIF = '{"_truncated": true}'


# ----------------------------------------------------------------------------- worst inputs: images


def good_jpeg() -> bytes:
    return encode(Image.fromarray(gradient(200, 150)), "JPEG", quality=90)


def _with_jpeg_dimensions(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) claims width x height."""
    body = bytearray(good_jpeg())
    frame = body.index(b"\xff\xc0")
    struct.pack_into(">HH", body, frame + 5, height, width)
    return bytes(body)


def _with_gif_screen(width: int, height: int) -> bytes:
    """A real small GIF whose logical screen (Pillow's image size) claims width x height."""
    body = bytearray(encode(Image.fromarray(gradient(64, 48)), "GIF"))
    struct.pack_into("<HH", body, 6, width, height)
    return bytes(body)


def _with_webp_canvas(width: int, height: int) -> bytes:
    """A real small extended WebP (VP8X, as written with EXIF) whose canvas claims width x height."""
    body = bytearray(encode(Image.fromarray(gradient(64, 48)), "WEBP", exif=Image.Exif()))
    assert body[12:16] == b"VP8X"
    body[24:27] = (width - 1).to_bytes(3, "little")
    body[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(body)


@functools.cache
def legal_huge_png(side: int = 13_000) -> bytes:
    """side² RGB pixels, under the default max_image_pixels (~179 M): 507 MB decoded, 2 MB stored."""
    compressor = zlib.compressobj(1)
    rows = b"\x00" * (3 * side + 1) * 100  # 100 rows: filter byte, then black pixels
    idat = b"".join(compressor.compress(rows) for _ in range(side // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@functools.cache
def legal_huge_jpeg(side: int = 13_000) -> bytes:
    """side² RGB pixels (507 MB decoded); the processor decodes it at 1/8 scale (JPEG draft)."""
    return encode(Image.new("RGB", (side, side), (200, 100, 50)), "JPEG", quality=50)


def many_frame_gif(frames: int = 1000) -> bytes:
    images = [Image.fromarray(np.roll(gradient(100, 100, 1)[..., 0], i, axis=1)) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def many_frame_webp(frames: int = 200) -> bytes:
    images = [Image.fromarray(np.roll(gradient(128, 128), i, axis=1)) for i in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], duration=10, quality=10)


def huge_icc_jpeg() -> bytes:
    """The largest ICC profile a JPEG can carry: 255 APP2 segments, ~16 MB."""
    profile = np.random.default_rng(0).integers(0, 256, 255 * 65519, dtype=np.uint8).tobytes()
    return encode(Image.fromarray(gradient(64, 48)), "JPEG", icc_profile=profile)


def _png_with(chunks: list[bytes]) -> bytes:
    """A real small PNG with ``chunks`` inserted before its image data."""
    body = encode(Image.fromarray(gradient(64, 48)), "PNG")
    image_data = body.index(b"IDAT") - 4
    return body[:image_data] + b"".join(chunks) + body[image_data:]


def png_text(chunks: int, size: int = MiB - 1) -> bytes:
    """``chunks`` zTXt chunks of ``size`` bytes each once decompressed (~1 kB each stored)."""
    compressed = zlib.compress(b"t" * size, 9)
    return _png_with([png_chunk(b"zTXt", b"k%d\x00\x00" % i + compressed) for i in range(chunks)])


def png_icc_bomb() -> bytes:
    """An iCCP chunk inflating to 256 MB."""
    compressor = zlib.compressobj(9)
    zeros = b"".join(compressor.compress(b"\x00" * MiB) for _ in range(256)) + compressor.flush()
    return _png_with([png_chunk(b"iCCP", b"icc\x00\x00" + zeros)])


# ----------------------------------------------------------------------------- worst inputs: EXIF

ASCII, BYTE = 2, 1  # TIFF field types
TIFF_START = 12  # where the TIFF data of an APP1 put right after SOI begins: SOI, marker, length, "Exif\0\0"


def _tiff(entries: list[tuple[int, int, int, int]], data: bytes = b"") -> bytes:
    """Little-endian TIFF data: IFD0 of (tag, type, count, value or offset) entries, then ``data``."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def _ifd_size(entries: int) -> int:
    return 8 + 2 + 12 * entries + 4


def _jpeg_with_exif(tiff: bytes, trailer: bytes = b"") -> bytes:
    """A real JPEG with ``tiff`` as its EXIF segment, right after SOI, and ``trailer`` after its end."""
    payload = b"Exif\x00\x00" + tiff
    assert len(payload) + 2 <= 0xFFFF, "a JPEG segment holds at most 64 KiB"
    jpeg = good_jpeg()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:] + trailer


def exif_blob_outside_segment(tags: int = 300, blob: int = MiB) -> bytes:
    """300 ASCII tags all pointing at one 1 MiB blob after the image's end (exifread follows offsets
    anywhere in the file): 300 MiB of strings from a 1 MiB file."""
    jpeg_size = len(good_jpeg())
    blob_offset = 4 + 6 + _ifd_size(tags) + jpeg_size - TIFF_START  # from the TIFF start to the trailer
    entries = [(0xC000 + i, ASCII, blob, blob_offset) for i in range(tags)]
    return _jpeg_with_exif(_tiff(entries), trailer=b"A" * blob)


def exif_blob_inside_segment(tags: int = 2700) -> bytes:
    """2700 ASCII tags pointing at one 32 KB blob inside the 64 KiB segment: ~88 MB of strings."""
    blob = 0xFFFF - 2 - 6 - _ifd_size(tags)
    entries = [(0xC000 + i, ASCII, blob, _ifd_size(tags)) for i in range(tags)]
    return _jpeg_with_exif(_tiff(entries, b"B" * blob))


def exif_many_values(tags: int = 5000) -> bytes:
    """5000 tags of 999 single bytes each, all reading the same data: exifread reads them one by one."""
    entries = [(0xC000 + i, BYTE, 999, _ifd_size(tags)) for i in range(tags)]
    return _jpeg_with_exif(_tiff(entries, bytes(range(256)) * 4))


# ----------------------------------------------------------------------------- worst inputs: files

MAX_BODY_BYTES = 64 * MiB  # the http fetcher's default max_body_bytes


@functools.cache
def random_bytes(size: int) -> bytes:
    return np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()


@functools.cache
def gzip_of_zeros(size: int) -> bytes:
    return gzip.compress(b"\x00" * size, 6)


# ----------------------------------------------------------------------------- the harness


@attrs.frozen
class Input:
    """One row: the body served at ``/…/<name>`` (with ``headers``) and the row it must become."""

    name: str
    build: Callable[[], bytes]
    status: str = "success"
    error_type: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)  # fields the row must hold
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ProcessorCase:
    """A processor's worst inputs, each run between two good rows under ``headroom`` bytes
    of address space above the worker's idle size."""

    options: dict[str, Any]
    good: Input
    worst: tuple[Input, ...]
    headroom: int


IMAGE_FAILURE = "failed_to_resize"
IMAGE_CASE = ProcessorCase(
    options={"processors": ["image"], "image_size": 64},
    good=Input("good.jpg", good_jpeg),
    worst=(
        Input("bomb_header.png", lambda: png_declaring(BOMB_SIDE), IMAGE_FAILURE, "too_large"),
        Input("bomb.png", real_bomb_png, IMAGE_FAILURE, "too_large"),
        Input("bomb_header.jpg", lambda: _with_jpeg_dimensions(65_500, 65_500), IMAGE_FAILURE, "too_large"),
        Input("bomb_header.gif", lambda: _with_gif_screen(65_535, 65_535), IMAGE_FAILURE, "too_large"),
        Input("bomb_header.webp", lambda: _with_webp_canvas(16_384, 16_384), IMAGE_FAILURE, "too_large"),
        Input("legal_huge.png", legal_huge_png, IMAGE_FAILURE, "image.out_of_memory"),
        Input("legal_huge.jpg", legal_huge_jpeg, metadata={"original_width": 13_000}),
        Input("many_frames.gif", many_frame_gif),
        Input("many_frames.webp", many_frame_webp),
        Input("exif_blob_outside.jpg", exif_blob_outside_segment, metadata={"exif": TRUNCATED_EXIF}),
        Input("exif_blob_inside.jpg", exif_blob_inside_segment, metadata={"exif": TRUNCATED_EXIF}),
        Input("exif_many_values.jpg", exif_many_values, metadata={"exif": TRUNCATED_EXIF}),
        Input("huge_icc.jpg", huge_icc_jpeg),
        Input("text_60MB.png", lambda: png_text(60)),  # Pillow allows 64 MB of text per image ...
        Input("text_70MB.png", lambda: png_text(70), IMAGE_FAILURE, "decode"),  # ... and no more
        Input("text_chunk_2MB.png", lambda: png_text(1, 2 * MiB), IMAGE_FAILURE, "decode"),  # 1 MB a chunk
        Input("icc_bomb.png", png_icc_bomb, IMAGE_FAILURE, "decode"),
    ),
    headroom=300 * MiB,
)

MAX_BODY = Input("max_body.bin", lambda: random_bytes(MAX_BODY_BYTES), metadata={"size": MAX_BODY_BYTES})
FILE_CASE = ProcessorCase(
    options={"processors": ["file"]},
    good=Input("good.txt", lambda: b"a small file\n"),
    worst=(
        MAX_BODY,
        Input("max_body_gzip.bin", lambda: gzip_of_zeros(MAX_BODY_BYTES), metadata={"size": MAX_BODY_BYTES},
              headers={"Content-Encoding": "gzip"}),
        Input("over_max_body.bin", lambda: random_bytes(MAX_BODY_BYTES + 1), "failed_to_download", "too_large"),
        Input("gzip_bomb.bin", lambda: gzip_of_zeros(4 * MAX_BODY_BYTES), "failed_to_download", "too_large",
              headers={"Content-Encoding": "gzip"}),
    ),
    headroom=400 * MiB,
)

def flac_silence(rate: int, seconds: int) -> bytes:
    """A real FLAC of ``seconds`` of mono silence, written a block at a time (it compresses to almost nothing)."""
    out = io.BytesIO()
    with soundfile.SoundFile(out, "w", rate, 1, format="FLAC") as flac:
        block = np.zeros(rate * 60, np.int16)
        for _minute in range(seconds // 60):
            flac.write(block)
    return out.getvalue()


AUDIO_FAILURE = "failed_to_process"
AUDIO_CASE = ProcessorCase(
    options={"processors": ["audio"], "audio_preset": "laion"},
    good=Input("good.flac", lambda: encoded(signal(22050, 2, seconds=1.0), 22050, "FLAC")),
    worst=(
        # A FLAC header claiming 10 hours of stereo: refused from the header, before any decoding.
        Input("ten_hours.flac", lambda: flac_claiming(48000 * 3600 * 10, encoded(signal(48000, 2, 1.0), 48000, "FLAC")),
              AUDIO_FAILURE, "too_large"),
        Input("65535_channels.wav", lambda: wav_header(65535, 48000, 2**32 - 2) + bytes(100_000),
              AUDIO_FAILURE, "decode"),
        # A WAV header claiming 2 GiB over 30 s of real data: the real data is decoded, no more.
        Input("lying_length.wav", lambda: wav_header(2, 48000, 2**31) + bytes(48000 * 4 * 30),
              metadata={"original_duration": 30.0}),
        # Five honest hours of 8 kHz silence (a small FLAC): 144 M samples once resampled to 48 kHz.
        Input("five_hours.flac", lambda: flac_silence(8000, 5 * 3600), AUDIO_FAILURE, "too_large"),
        Input("truncated.mp3", lambda: encoded(signal(44100, 2, 4.0), 44100, "MP3")[:20_000], AUDIO_FAILURE,
              "decode"),
        Input("html_as.mp3", lambda: b"<!doctype html><html><body>not found</body></html>", AUDIO_FAILURE,
              "audio.unsupported_format"),
    ),
    headroom=400 * MiB,
)

# Adding a processor: one entry here (its options, a good input, its worst inputs, a headroom).
PROCESSOR_CASES = [pytest.param(IMAGE_CASE, id="image"), pytest.param(FILE_CASE, id="file"),
                   pytest.param(AUDIO_CASE, id="audio")]

# Run in a subprocess: warm up with the good row (thread pools, codecs, writers), measure the idle
# virtual size, then limit the address space and download the real rows. Prints one JSON line.
RUNNER = textwrap.dedent("""
    import json, resource, sys
    from any2ds.testing import download_in_process

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

    args = json.loads(sys.argv[1])
    download_in_process(url_list=args["warmup_urls"], output_folder=args["warmup_output"], **args["options"])
    idle = status("VmSize")
    if args["headroom"] is not None:
        resource.setrlimit(resource.RLIMIT_AS, (idle + args["headroom"], resource.RLIM_INFINITY))
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM, the peak resident size, to the current one
    resident = status("VmRSS")
    summary = download_in_process(url_list=args["urls"], output_folder=args["output"], **args["options"])
    print(json.dumps({"idle_virtual_size": idle, "peak_rss_growth": status("VmHWM") - resident,
                      "state": summary["state"]}))
""")


def run_limited(case: ProcessorCase, rows: list[Input], tmp_path: Path, headroom: int | None,
                **options: Any) -> dict[str, Any]:
    """Serve ``rows`` (and the good input) from ``tmp_path``, download them in a subprocess whose
    address space is limited to ``headroom`` above its idle size; return what the runner printed."""
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    for row in {row.name: row for row in (case.good, *rows)}.values():
        (media / row.name).write_bytes(row.build())
    with serve_directory(media) as server:
        def with_headers(request) -> None:
            row = next(r for r in rows if request.path.endswith("/" + r.name))
            send_bytes(request, (media / row.name).read_bytes(), headers=row.headers)

        server.route("/with_headers/", with_headers)
        (tmp_path / "warmup.txt").write_text(server.url(f"/allowed/{case.good.name}") + "\n")
        (tmp_path / "urls.txt").write_text("".join(
            server.url(f"/{'with_headers' if row.headers else 'allowed'}/{row.name}") + "\n" for row in rows))
        args = {"warmup_urls": str(tmp_path / "warmup.txt"), "warmup_output": str(tmp_path / "warmup"),
                "urls": str(tmp_path / "urls.txt"), "output": str(tmp_path / "out"), "headroom": headroom,
                "options": {"output_format": "webdataset", "thread_count": 1, "processing_threads": 1,
                            "number_sample_per_shard": 1000, "max_shard_retry": 0, "timeout": 60,
                            "sample_timeout": 120, "allow_private_networks": True, "observers": [],
                            **case.options, **options}}
        done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], capture_output=True, text=True,
                              timeout=600)
    assert done.returncode == 0, f"the worker died ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", PROCESSOR_CASES)
def test_worst_inputs_fail_cleanly_under_a_memory_limit(case: ProcessorCase, tmp_path):
    rows = [case.good]
    for worst in case.worst:
        rows += [worst, case.good]
    run = run_limited(case, rows, tmp_path, case.headroom)
    assert run["state"] == "done"

    dataset = read_dataset(tmp_path / "out")
    assert len(dataset.rows) == len(rows)  # the shard is written, every row in it
    for row, expected in zip(dataset.rows, rows):  # keys follow the input order
        outcome = {"url": row["url"].rsplit("/", 1)[1], "status": row["status"], "error_type": row["error_type"],
                   **{field: row[field] for field in expected.metadata}}
        assert outcome == {"url": expected.name, "status": expected.status, "error_type": expected.error_type,
                           **expected.metadata}, row["error_message"]
    failures = {row["error_message"] for row in dataset.rows if row["status"] != "success"}
    assert not any("0x" in message for message in failures)  # no object addresses in messages
    assert sorted(dataset.samples) == sorted(row["key"] for row in dataset.rows if row["status"] == "success")


@pytest.mark.parametrize("output_format", ["files", "webdataset"])
def test_a_body_at_max_body_bytes_is_held_at_most_twice(output_format, tmp_path):
    """The fetcher joins the chunks it read (two copies at its peak); hashing, the file processor
    and the writers add none."""
    run = run_limited(FILE_CASE, [MAX_BODY], tmp_path, headroom=None, output_format=output_format)
    assert run["state"] == "done"
    assert run["peak_rss_growth"] < 2.5 * MAX_BODY_BYTES


# The image processor on one body, in a fresh process: its exif column and the peak resident growth.
EXIF_RUNNER = textwrap.dedent("""
    import json, sys
    from any2ds.types import FetchResult, Sample, SampleResult
    from any2ds_plugins.image.processor import ImageOptions, ImageProcessor
    from tests import test_bounded_memory

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

    body = getattr(test_bounded_memory, sys.argv[1])()
    processor = ImageProcessor(ImageOptions(image_size=64))
    processor.process(FetchResult(body=test_bounded_memory.good_jpeg(), url="u"),
                      SampleResult(Sample(key="0", shard_id=0, index=0, url="u")))  # warm up
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    resident = status("VmRSS")
    result = SampleResult(Sample(key="0", shard_id=0, index=0, url="u"))
    processor.process(FetchResult(body=body, url="u"), result)
    print(json.dumps({"exif": result.metadata["exif"], "peak_rss_growth": status("VmHWM") - resident}))
""")


@pytest.mark.parametrize("build", [exif_blob_outside_segment, exif_blob_inside_segment, exif_many_values])
def test_exif_amplification_is_bounded_at_the_source(build):
    """Before the read budget, in the processor alone: a 300 MiB exif and 900 MiB peak (outside),
    85 MiB and 258 MiB (inside), 4 s of CPU (many values). Now exifread stops after 256 KiB."""
    done = subprocess.run([sys.executable, "-c", EXIF_RUNNER, build.__name__], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    measured = json.loads(done.stdout)
    assert measured["exif"] == TRUNCATED_EXIF
    assert len(done.stderr) < 1000  # not a warning per tag
    assert measured["peak_rss_growth"] < 16 * MiB


@pytest.mark.parametrize("output_format", ["webdataset", "tfrecord"])
def test_a_100_mb_caption_is_capped_in_every_output(output_format, tmp_path):
    """A 100 MB caption cell: every stored copy (parquet, json, txt, tfrecord) is cut to 64 KiB and marked."""
    if output_format == "tfrecord":
        tf = pytest.importorskip("tensorflow")
    media = tmp_path / "media"
    media.mkdir()
    (media / "good.jpg").write_bytes(good_jpeg())
    cap = 64 * 1024
    with serve_directory(media) as server:
        url = server.url("/allowed/good.jpg")
        captions = ["short", "\N{FOX FACE}" * (25 * MiB), "also short"]  # 4-byte characters: 100 MB of UTF-8
        pq.write_table(pa.table({"url": [url] * 3, "caption": captions, "extra": ["x" * (3 * MiB), "y", "z"]}),
                       tmp_path / "in.parquet")
        download_in_process(url_list=str(tmp_path / "in.parquet"), input_format="parquet", caption_col="caption",
                            save_additional_columns=["extra"], output_folder=str(tmp_path / "out"),
                            output_format=output_format, allow_private_networks=True, thread_count=2)
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    big = rows[1]
    assert big["caption"].endswith(TRUNCATION_MARK) and len(big["caption"].encode()) <= cap
    assert big["caption"].startswith("\N{FOX FACE}" * 100) and "\ufffd" not in big["caption"]
    assert rows[0]["extra"].endswith(TRUNCATION_MARK) and len(rows[0]["extra"]) <= cap
    assert (rows[0]["caption"], rows[2]["caption"]) == ("short", "also short")
    if output_format == "webdataset":
        with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert members[f"{big['key']}.txt"].decode() == big["caption"]
        assert json.loads(members[f"{big['key']}.json"])["caption"] == big["caption"]
        assert max(len(data) for name, data in members.items() if not name.endswith(".jpg")) <= 3 * cap
    else:
        features = {"key": tf.io.FixedLenFeature([], tf.string), "caption": tf.io.FixedLenFeature([], tf.string),
                    "txt": tf.io.FixedLenFeature([], tf.string)}
        records = {r["key"].numpy().decode(): r for r in (tf.io.parse_single_example(s, features) for s in
                                                          tf.data.TFRecordDataset(str(tmp_path / "out" / "00000.tfrecord")))}
        assert records[big["key"]]["caption"].numpy().decode() == big["caption"]
        assert records[big["key"]]["txt"].numpy().decode() == big["caption"]
