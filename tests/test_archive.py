"""``input_format: archive``: tar, tar.gz/tgz and zip archives built here, read alone and end to end."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc
import wave
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from any2ds_plugins.readers.archive import ArchiveReader
from any2ds_plugins.readers.archive_members import ArchiveError, split_member_name
from PIL import Image
from webdataset import TarWriter

import any2ds
from any2ds import ConfigError, KeyFormat, Shard
from any2ds.cli import main
from any2ds.testing import read_dataset
from tests.conftest import encode, gradient
from tests.fault_server import FaultServer

KEYS = KeyFormat(number_sample_per_shard=10, oom_shard_count=5)


def jpeg(width: int, height: int) -> bytes:
    return encode(Image.fromarray(gradient(width, height)), "JPEG", quality=90)


def wav(seconds: float = 0.1, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(rate * seconds)) / 5) * 10000).astype("<i2").tobytes())
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def samples_of(prefix: str, count: int, first_width: int = 40) -> list[dict]:
    """webdataset samples: a jpg, a caption and a json with a url and extra fields."""
    return [{"__key__": f"{prefix}{i:04d}", "jpg": jpeg(first_width + i, 30), "txt": f"caption {prefix}{i}",
             "json": {"url": f"https://example.com/{prefix}{i}.jpg", "score": 0.5 + i, "n": i, "label": f"l{i}"}}
            for i in range(count)]


def members_of(samples: list[dict]) -> list[tuple[str, bytes]]:
    """(member name, bytes) in webdataset order."""
    members = []
    for sample in samples:
        for extension, value in sample.items():
            if extension == "__key__":
                continue
            if isinstance(value, dict):
                value = json.dumps(value).encode()
            elif isinstance(value, str):
                value = value.encode()
            members.append((f"{sample['__key__']}.{extension}", value))
    return members


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A webdataset tar, written by webdataset's own TarWriter."""
    with TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write({k: json.dumps(v).encode() if isinstance(v, dict) else v for k, v in sample.items()})
    return path


def write_tar_members(path: Path, members: list[tuple[str, bytes]], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def write_archive(path: Path, samples: list[dict]) -> Path:
    """``samples`` as the archive ``path``'s suffix says: tar, tar.gz, tgz or zip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        return write_zip(path, members_of(samples))
    if path.name.endswith((".tar.gz", ".tgz")):
        return write_tar_members(path, members_of(samples), gz=True)
    return write_tar(path, samples)


def reader(**options) -> ArchiveReader:
    return ArchiveReader(ArchiveReader.Options(**options))


def read_samples(archive_reader: ArchiveReader, url_list: str, columns=("source_archive", "source_key"),
                 keys: KeyFormat = KEYS) -> list[any2ds.Sample]:
    """Every sample of every planned shard, as a worker would read them."""
    sources = archive_reader.input_files(url_list, "archive")
    schema = archive_reader.column_schema(sources, list(columns))
    return [sample for shard_id, work in archive_reader.plan(sources)
            for sample in archive_reader.samples(Shard(shard_id, work=work, schema=schema), keys, list(columns))]


def download(*args: str) -> int:
    return main(["download", *args])


# --------------------------------------------------------------------------
# the reader alone
# --------------------------------------------------------------------------


def test_member_names_split_at_the_first_dot_of_the_base_name():
    assert split_member_name("00001.jpg") == ("00001", "jpg")
    assert split_member_name("a.b/00001.seg.png") == ("a.b/00001", "seg.png")
    assert split_member_name("README") == ("README", "")
    assert split_member_name("dir/.DS_Store") == ("dir/.DS_Store", "")


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz", "a.tgz", "a.zip"])
def test_samples_from_every_archive_format(tmp_path, name):
    path = write_archive(tmp_path / name, samples_of("k", 3))
    samples = read_samples(reader(), str(path), columns=["source_archive", "source_key", "score", "label"])
    assert [s.key for s in samples] == ["000000", "000001", "000002"]
    assert [s.columns["source_key"] for s in samples] == ["k0000", "k0001", "k0002"]
    assert {s.columns["source_archive"] for s in samples} == {str(path)}
    assert [s.caption for s in samples] == ["caption k0", "caption k1", "caption k2"]
    assert [s.url for s in samples] == [f"https://example.com/k{i}.jpg" for i in range(3)]
    assert [s.columns["score"] for s in samples] == [0.5, 1.5, 2.5]
    assert [s.columns["label"] for s in samples] == ["l0", "l1", "l2"]
    assert [Image.open(io.BytesIO(s.data)).size for s in samples] == [(40, 30), (41, 30), (42, 30)]
    assert [s.filename for s in samples] == ["k0000.jpg", "k0001.jpg", "k0002.jpg"]
    assert all(s.error is None for s in samples)


def test_members_missing_their_pair_and_other_groups(tmp_path):
    members = [
        ("./a.txt", b"a caption without media"),     # ./ prefix of `tar -C dir .`
        ("b.jpg", jpeg(10, 10)),                      # media without caption or json
        ("c.png", encode(Image.fromarray(gradient(5, 5)), "PNG")),
        ("c.jpg", jpeg(12, 12)),                      # jpg comes first in media_extensions
        ("c.txt", b"c"),
        ("d.json", b"{not json"),
        ("d.jpg", jpeg(8, 8)),
        ("e.txt", b"\xff\xfe not utf-8"),
        ("e.jpg", jpeg(8, 8)),
        ("README", b"not a sample"),
        ("f.bin", b"\x00" * 10),
    ]
    samples = read_samples(reader(), str(write_tar_members(tmp_path / "x.tar", members)))
    by_key = {s.columns["source_key"]: s for s in samples}
    assert list(by_key) == ["a", "b", "c", "d", "e", "README", "f"]  # every group is a row, in archive order
    assert by_key["a"].error.error_type == "missing"
    assert by_key["a"].error.message == "no media member (found: txt)" and by_key["a"].data is None
    assert by_key["a"].caption == "a caption without media"
    assert by_key["b"].error is None and by_key["b"].caption is None and by_key["b"].url is None
    assert by_key["c"].filename == "c.jpg" and Image.open(io.BytesIO(by_key["c"].data)).size == (12, 12)
    assert by_key["d"].error.error_type == "archive.invalid_json" and "d.json" in by_key["d"].error.message
    assert by_key["e"].error.error_type == "archive.invalid_caption"
    assert by_key["README"].error.message == "no media member (found: README)"
    assert by_key["f"].error.message == "no media member (found: bin)"
    # With bin as a media extension the last group is a sample; without captions nothing reads txt.
    samples = read_samples(reader(media_extensions=["bin"], caption_extension=None),
                           str(tmp_path / "x.tar"))
    assert samples[-1].error is None and samples[-1].data == b"\x00" * 10
    assert all(s.caption is None for s in samples)


@pytest.mark.parametrize("name", ["x.tar", "x.zip"])
def test_a_member_name_met_twice_in_a_sample_fails_it_as_ambiguous(tmp_path, name):
    """Which copy belongs to the sample cannot be told: none is kept (webdataset refuses such tars)."""
    members = [("s1.jpg", jpeg(10, 10)), ("s1.jpg", jpeg(20, 20)), ("s1.txt", b"one"), ("s1.txt", b"two"),
               ("s2.jpg", jpeg(8, 8)), ("s2.cls", b"1"), ("s2.cls", b"2"),  # not needed: skipped as ever
               ("s3.json", b"{}"), ("s3.json", b"{}"), ("s3.jpg", jpeg(6, 6)), ("s3.txt", b"three")]
    path = tmp_path / name
    if name.endswith(".zip"):
        with pytest.warns(UserWarning, match="Duplicate name"):
            write_zip(path, members)
    else:
        write_tar_members(path, members)
    samples = read_samples(reader(), str(path))
    assert [(s.columns["source_key"], s.error and s.error.error_type) for s in samples] == [
        ("s1", "archive.duplicate_member"), ("s2", None), ("s3", "archive.duplicate_member")]
    assert samples[0].error.message == "member s1.jpg appears twice: which copy belongs to the sample is ambiguous"
    assert samples[2].error.message == "member s3.json appears twice: which copy belongs to the sample is ambiguous"
    assert samples[0].data is None and samples[2].data is None
    assert Image.open(io.BytesIO(samples[1].data)).size == (8, 8)


def test_json_columns_are_typed_by_their_first_values(tmp_path):
    first = [{"__key__": "a", "jpg": jpeg(8, 8), "json": {"n": None, "score": 1.5, "tags": []}},
             {"__key__": "b", "jpg": jpeg(8, 8), "json": {"n": 7, "score": 2, "tags": ["x"]}}]
    path = write_tar(tmp_path / "00000.tar", first)
    archive_reader = reader()
    sources = archive_reader.input_files(str(tmp_path), "archive")
    schema = archive_reader.column_schema(sources, ["source_archive", "source_key", "n", "score", "tags", "absent"])
    assert schema == pa.schema([("source_archive", pa.string()), ("source_key", pa.string()), ("n", pa.int64()),
                                ("score", pa.float64()), ("tags", pa.list_(pa.string())), ("absent", pa.string())])
    samples = read_samples(archive_reader, str(path), columns=["n", "score", "absent"])
    assert [s.columns for s in samples] == [{"source_archive": str(path), "source_key": "a", "n": None, "score": 1.5,
                                             "absent": None},
                                            {"source_archive": str(path), "source_key": "b", "n": 7, "score": 2,
                                             "absent": None}]


def test_a_later_value_that_does_not_fit_fails_the_shard_naming_it(tmp_path):
    rows = [{"__key__": f"s{i}", "jpg": jpeg(8, 8), "json": {"n": i}} for i in range(3)]
    rows[2]["json"]["n"] = 2.5  # pyarrow would silently store 2 in an int64 column
    path = write_tar(tmp_path / "00000.tar", rows)
    with pytest.raises(ArchiveError) as raised:
        read_samples(reader(), str(path), columns=["n"])
    assert str(raised.value) == (f"archive {path}: member s2.json: column 'n' holds 2.5, which does not fit its "
                                 "type int64 (typed from the first samples)")


def test_input_files_folder_glob_brace_and_errors(tmp_path):
    for name in ["00002.zip", "00000.tar", "00001.tgz", "00003.tar.gz"]:
        write_archive(tmp_path / name, samples_of("k", 1))
    (tmp_path / "00000.parquet").write_bytes(b"not an archive")
    (tmp_path / "sub.tar").mkdir()
    archive_reader = reader()

    def paths(url_list):
        return [Path(s.path).name for s in archive_reader.input_files(url_list, "archive")]

    assert paths(str(tmp_path)) == ["00000.tar", "00001.tgz", "00002.zip", "00003.tar.gz"]
    assert paths(f"{tmp_path}/*.t*") == ["00000.tar", "00001.tgz", "00003.tar.gz"]
    assert paths(str(tmp_path / "00002.zip")) == ["00002.zip"]
    # A brace pattern is taken as listed: a missing archive keeps its place (and fails its shard).
    assert paths(f"{tmp_path}/{{00000..00001}}.tar") == ["00000.tar", "00001.tar"]
    assert paths(f"{tmp_path}/{{00000.tar,00002.zip,00000.tar}}") == ["00000.tar", "00002.zip"]
    for url_list, message in [
        (str(tmp_path / "missing.tar"), "does not exist"),
        (str(tmp_path / "00000.parquet"), "is not a .tar, .tar.gz, .tgz or .zip archive"),
        (f"{tmp_path}/*.rar", "matches no archive"),
        (str(tmp_path / "sub.tar"), "is a folder with no .tar, .tar.gz, .tgz or .zip archive"),
        (f"{tmp_path}/{{00000", "Unbalanced braces"),
    ]:
        with pytest.raises(ConfigError, match=message):
            archive_reader.input_files(url_list, "archive")
    with pytest.raises(ConfigError, match="use input_format archive"):
        archive_reader.input_files(str(tmp_path), "archive.gz")
    with pytest.raises(ConfigError, match="min_offset 4 is past the last archive"):
        reader(min_offset=4).input_files(str(tmp_path), "archive")


def test_offsets_select_archives_by_their_index_in_the_sorted_list(tmp_path):
    for i in range(5):
        write_archive(tmp_path / f"{i:05d}.tar", samples_of("k", 1))
    sources = reader().input_files(str(tmp_path), "archive")
    assert [i for i, _ in reader().plan(sources)] == [0, 1, 2, 3, 4]
    assert [(i, Path(url).name) for i, url in reader(min_offset=1, max_offset=3).plan(sources)] == [
        (1, "00001.tar"), (2, "00002.tar")]
    assert [i for i, _ in reader(min_offset=3, max_offset=99).plan(sources)] == [3, 4]
    with pytest.raises(ValueError, match="must be more than min_offset"):
        reader(min_offset=2, max_offset=2)


def test_keys_generated_or_kept_and_unsafe_source_keys(tmp_path):
    members = [(f"{name}.jpg", jpeg(8, 8)) for name in ["ok_1-A", "../evil", "/abs/path", "bad key", "ünï",
                                                         "sub/x", "ok_1-A"]]
    path = write_tar_members(tmp_path / "x.tar", members)
    generated = read_samples(reader(), str(path))
    assert [s.key for s in generated] == [f"00000{i}" for i in range(7)]  # shard 0, key width 1 + 5
    assert all(s.error is None for s in generated)
    kept = read_samples(reader(keep_source_keys=True), str(path))
    assert [s.key for s in kept] == ["ok_1-A", "../evil", "/abs/path", "bad key", "ünï", "sub/x", "ok_1-A"]
    assert [s.error.error_type if s.error else None for s in kept] == [
        None, "unsafe_key", "unsafe_key", "unsafe_key", "unsafe_key", "unsafe_key", "archive.duplicate_key"]
    assert kept[1].data is None and "letters, digits, _ and -" in kept[1].error.message


def test_more_samples_than_keys_fails_the_shard_unless_source_keys_are_kept(tmp_path):
    path = write_tar(tmp_path / "00000.tar", samples_of("k", 11))
    with pytest.raises(ArchiveError, match=r"holds more than number_sample_per_shard=10 samples.*raise "
                                           r"number_sample_per_shard or set keep_source_keys"):
        read_samples(reader(), str(path))
    assert len(read_samples(reader(keep_source_keys=True), str(path))) == 11


def test_a_member_over_the_cap_is_a_failed_row_and_is_not_read(tmp_path):
    big = np.random.default_rng(0).integers(0, 255, 40 * 2**20, dtype=np.uint8).tobytes()
    members = [("a.jpg", jpeg(8, 8)), ("b.npy", big), ("b.txt", b"big"), ("c.jpg", jpeg(8, 8))]
    for path in [write_tar_members(tmp_path / "x.tar", members),
                 write_zip(tmp_path / "x.zip", members, compression=zipfile.ZIP_STORED)]:
        archive_reader = reader(max_member_bytes=2**20)
        tracemalloc.start()
        samples = read_samples(archive_reader, str(path))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert [s.error.error_type if s.error else None for s in samples] == [None, "too_large", None]
        assert samples[1].error.message == f"member b.npy holds {len(big)} bytes, more than max_member_bytes=1048576"
        assert peak < 8 * 2**20, peak  # the 40 MiB member was skipped, not read


def test_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    path = write_zip(tmp_path / "bomb.zip", [("a.jpg", b"\x00" * (64 * 2**20)), ("b.jpg", jpeg(8, 8))])
    assert path.stat().st_size < 2**20
    samples = read_samples(reader(max_member_bytes=2**20), str(path))
    assert [s.error.error_type if s.error else None for s in samples] == ["too_large", None]


def test_links_are_failed_rows_not_followed(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("a.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # directories are not samples: skipped
        data = jpeg(8, 8)
        info = tarfile.TarInfo("b.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    samples = read_samples(reader(), str(path))
    assert samples[0].error.error_type == "archive.not_a_file" and "symbolic link" in samples[0].error.message
    assert samples[1].error is None


# --- truncated and corrupt archives: the shard fails, naming the archive ----------------------


def complete_tar(tmp_path: Path) -> tuple[bytes, list[int]]:
    """A tar's bytes and the offsets where each member's header starts (and where the end marker starts)."""
    path = write_tar_members(tmp_path / "whole.tar", [(f"{i}.jpg", jpeg(20 + i, 20)) for i in range(4)])
    with tarfile.open(path) as tar:
        offsets = [m.offset for m in tar.getmembers()]
        end = tar.offset
    return path.read_bytes(), [*offsets, end]


def cut_archives(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, the message's expected part)."""
    data, offsets = complete_tar(tmp_path)
    cases = {}

    def add(name: str, content: bytes, message: str) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        cases[name] = (path, message)

    add("mid_member.tar", data[:offsets[2] + 512 + 100], "truncated or corrupt: unexpected end of data")
    add("at_boundary.tar", data[:offsets[2]],
        "truncated: the tar ends after 2 member(s), at byte %d without its end-of-archive marker" % offsets[2])
    add("mid_header.tar", data[:offsets[2] + 200], "truncated: the tar ends after 2 member(s)")
    add("bad_header.tar", data[:offsets[1]] + b"\x07" * 512 + data[offsets[1] + 512:], "corrupt: ")
    add("cut_gzip.tar.gz", gzip.compress(data)[:-100], "truncated: Compressed file ended")
    add("cut_gzip_trailer.tgz", gzip.compress(data)[:-4], "truncated: Compressed file ended")
    members = [(f"{i}.jpg", jpeg(20 + i, 20)) for i in range(3)]
    whole_zip = write_zip(tmp_path / "whole.zip", members).read_bytes()
    directory = whole_zip.rfind(b"PK\x01\x02", 0, whole_zip.rfind(b"PK\x05\x06"))
    add("bad_directory.zip", whole_zip[:directory] + b"\x00" * 30 + whole_zip[directory + 30:],
        "truncated or corrupt: ")
    add("cut.zip", whole_zip[: len(whole_zip) // 2], "truncated or corrupt: File is not a zip file")
    stored = write_zip(tmp_path / "stored.zip", members, compression=zipfile.ZIP_STORED).read_bytes()
    data_start = stored.find(b"\xff\xd8\xff", stored.find(b"1.jpg"))  # the second member's JPEG bytes
    add("bad_crc.zip", stored[:data_start + 100] + bytes([stored[data_start + 100] ^ 0xFF]) + stored[data_start + 101:],
        "truncated or corrupt: Bad CRC-32 for file '1.jpg'")
    return cases


def test_truncated_and_corrupt_archives_fail_naming_the_archive(tmp_path):
    cases = cut_archives(tmp_path)
    assert len(read_samples(reader(), str(tmp_path / "whole.tar"))) == 4
    # Python's tarfile itself accepts a tar cut at a member boundary as complete.
    with tarfile.open(cases["at_boundary.tar"][0]) as tar:
        assert len(tar.getmembers()) == 2
    for name, (path, message) in cases.items():
        with pytest.raises(ArchiveError) as raised:
            read_samples(reader(), str(path))
        assert str(raised.value).startswith(f"archive {path}: ") and message in str(raised.value), name


def test_a_brace_listed_archive_that_does_not_exist_fails_its_shard(tmp_path):
    write_tar(tmp_path / "00000.tar", samples_of("k", 1))
    archive_reader = reader()
    sources = archive_reader.input_files(f"{tmp_path}/{{00000..00001}}.tar", "archive")
    schema = archive_reader.column_schema(sources, ["source_key"])
    (_, first), (second_id, second) = list(archive_reader.plan(sources))
    assert len(list(archive_reader.samples(Shard(0, work=first, schema=schema), KEYS, ["source_key"]))) == 1
    with pytest.raises(ArchiveError, match=f"archive {tmp_path}/00001.tar does not exist"):
        list(archive_reader.samples(Shard(second_id, work=second, schema=schema), KEYS, ["source_key"]))


# --- archives over http: every wait bounded by archive_read_timeout ---------------------------


@pytest.fixture(scope="module")
def fault_server():
    server = FaultServer(jpeg(20, 10))
    yield server
    server.close()


@pytest.fixture
def _no_proxy(monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.mark.usefixtures("_no_proxy")
def test_an_http_archive_whose_body_stalls_fails_its_shard_within_archive_read_timeout(fault_server):
    url = fault_server.url("/stall_body/a.tar")
    archive_reader = reader(archive_read_timeout=1)
    sources = archive_reader.input_files(url, "archive")  # the head arrives: start-up reads no body
    started = time.monotonic()
    with pytest.raises(ArchiveError) as raised:
        read_samples(archive_reader, url)
    assert time.monotonic() - started < 10, "aiohttp's default (300 s, or the server's 30) applied"
    assert str(raised.value) == f"archive {url}: timed out: no answer for 1 s (archive_read_timeout)"
    assert [Path(s.path).name for s in sources] == ["a.tar"]


@pytest.mark.usefixtures("_no_proxy")
def test_an_http_url_list_that_cannot_be_read_stops_the_start_in_one_line(fault_server):
    archive_reader = reader(archive_read_timeout=1)
    stalled = fault_server.url("/stall_headers/a.tar")
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        archive_reader.input_files(stalled, "archive")
    assert time.monotonic() - started < 10
    assert str(raised.value) == (f"url_list {stalled!r} cannot be read: timed out: no answer for 1 s "
                                 "(archive_read_timeout)")
    # Not an archive's name: looked at as a folder (a page of links), whose body is cut short.
    cut = fault_server.url(fault_server.script(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                                               b"Content-Length: 1000\r\n\r\n<a href=", keep_alive=False))
    with pytest.raises(ConfigError) as raised:
        archive_reader.input_files(cut, "archive")
    assert str(raised.value).startswith(f"url_list {cut!r} cannot be read: ClientPayloadError: ")
    assert "\n" not in str(raised.value)


@pytest.mark.usefixtures("_no_proxy")
def test_an_http_archive_cut_short_fails_its_shard_not_the_start(fault_server, tmp_path):
    url = fault_server.url("/short_body/a.tar")
    started = time.monotonic()
    assert download("--url_list", url, "--input_format", "archive", "--output_folder", str(tmp_path / "out"),
                    "--processes_count", "1", "--thread_count", "2", "--archive_read_timeout", "5") == 1
    assert time.monotonic() - started < 30
    summary = json.loads((tmp_path / "out" / "_any2ds" / "run_summary.json").read_text())
    assert summary["shards_failed"] == [0], summary


# --- memory: flat whatever the archive's size ------------------------------------------------

# Peak RSS over a block: Linux resets the peak (VmHWM) when "5" is written to clear_refs.
PEAK_RSS = textwrap.dedent("""
    def rss(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

    def start_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss("VmRSS")
""")

MEMORY_SCRIPT = PEAK_RSS + textwrap.dedent("""
    import sys
    from any2ds import KeyFormat, Shard
    from any2ds_plugins.readers.archive import ArchiveReader

    reader = ArchiveReader(ArchiveReader.Options())
    sources = reader.input_files(sys.argv[1], "archive")
    schema = reader.column_schema(sources, ["source_key"])
    before = start_peak()
    count = total = 0
    for shard_id, work in reader.plan(sources):
        for sample in reader.samples(Shard(shard_id, work=work, schema=schema), KeyFormat(1000, 5), ["source_key"]):
            count += 1
            total += len(sample.data)
    print(count, total, rss("VmHWM") - before)
""")

DOWNLOAD_MEMORY_SCRIPT = PEAK_RSS + textwrap.dedent("""
    import sys
    import any2ds

    def run(url_list, out):
        return any2ds.download(url_list=url_list, input_format="archive", output_folder=out, output_format="dummy",
                               processors=["file"], distributor="inprocess", thread_count=32,
                               max_bytes_in_flight=16 * 2**20, number_sample_per_shard=1000, observers=[])

    run(sys.argv[2], sys.argv[3] + "-warmup")  # every plugin and thread pool built once
    before = start_peak()
    summary = run(sys.argv[1], sys.argv[3])
    print(summary["successes"], rss("VmHWM") - before)
""")

MEMBER_BYTES = 2 * 2**20
MEMBERS = 100


@pytest.fixture(scope="module")
def big_archives(tmp_path_factory) -> Path:
    """A 200 MiB tar and zip of 2 MiB members (random, so nothing compresses)."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(1)
    members = [(f"{i:05d}.npy", rng.integers(0, 255, MEMBER_BYTES, dtype=np.uint8).tobytes()) for i in range(MEMBERS)]
    write_tar_members(root / "big.tar", members)
    write_zip(root / "big.zip", members, compression=zipfile.ZIP_STORED)
    write_tar_members(root / "small.tar", members[:2])
    return root


needs_peak_reset = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS reset")


@needs_peak_reset
@pytest.mark.parametrize("name", ["big.tar", "big.zip"])
def test_reading_memory_stays_flat_whatever_the_archive_size(big_archives, name):
    path = big_archives / name
    assert path.stat().st_size > MEMBERS * MEMBER_BYTES
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    count, total, growth = map(int, out.stdout.split())
    assert (count, total) == (MEMBERS, MEMBERS * MEMBER_BYTES)
    assert growth < 24 * 2**20, f"peak RSS grew by {growth >> 20} MiB reading a {path.stat().st_size >> 20} MiB archive"


@needs_peak_reset
def test_download_memory_is_bounded_by_max_bytes_in_flight(big_archives, tmp_path):
    """32 threads would hold 64 samples (128 MiB) in flight; the byte budget holds it to ~16 MiB."""
    out = subprocess.run([sys.executable, "-c", DOWNLOAD_MEMORY_SCRIPT, str(big_archives / "big.tar"),
                          str(big_archives / "small.tar"), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    successes, growth = map(int, out.stdout.split())
    assert successes == MEMBERS
    assert growth < 64 * 2**20, f"peak RSS grew by {growth >> 20} MiB for a {MEMBERS * MEMBER_BYTES >> 20} MiB archive"


# --------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------


def read_back(out: Path) -> tuple[list[dict], dict[str, dict[str, bytes]]]:
    """Metadata rows and, per successful key, its stored files, read by the writer that made them."""
    dataset = read_dataset(out)
    return dataset.rows, dataset.samples


@pytest.mark.parametrize("output_format", ["files", "webdataset", "parquet", "tfrecord", "dummy"])
def test_every_output_format(tmp_path, output_format):
    write_archive(tmp_path / "in" / "00000.tar", samples_of("a", 3))
    write_archive(tmp_path / "in" / "00001.zip", samples_of("b", 2) + [{"__key__": "b9", "txt": "no image"}])
    out = tmp_path / "out"
    summary = any2ds.download(url_list=str(tmp_path / "in"), input_format="archive", output_folder=str(out),
                              output_format=output_format, image_size=16, number_sample_per_shard=10,
                              save_additional_columns=["label"], distributor="inprocess", thread_count=4)
    assert (summary["count"], summary["successes"], summary["shards_failed"]) == (6, 5, [])
    if output_format == "dummy":
        assert sorted(p.name for p in out.glob("*_stats.json")) == ["00000_stats.json", "00001_stats.json"]
        return
    rows, stored = read_back(out)
    assert [(r["key"], r["source_key"], r["status"]) for r in rows] == [
        ("000000", "a0000", "success"), ("000001", "a0001", "success"), ("000002", "a0002", "success"),
        ("000010", "b0000", "success"), ("000011", "b0001", "success"), ("000012", "b9", "failed_to_download")]
    assert rows[-1]["error_message"] == "no media member (found: txt)" and rows[-1]["caption"] == "no image"
    assert [r["label"] for r in rows] == ["l0", "l1", "l2", "l0", "l1", None]
    assert [r["caption"] for r in rows[:2]] == ["caption a0", "caption a1"]
    assert rows[0]["source_archive"] == str(tmp_path / "in" / "00000.tar")
    assert sorted(stored) == [r["key"] for r in rows if r["status"] == "success"]
    for row in rows[:-1]:
        assert Image.open(io.BytesIO(stored[row["key"]]["jpg"])).size == (16, 16)
        assert (row["width"], row["height"]) == (16, 16)


def test_cli_mixed_media_with_the_file_processor(tmp_path):
    png = encode(Image.fromarray(gradient(9, 7)), "PNG")
    members = [("0.jpg", jpeg(10, 10)), ("0.txt", b"a photo"), ("1.png", png), ("2.wav", wav()), ("2.txt", b"a beep"),
               ("3.npy", npy(np.arange(6))), ("4.bin", b"\x01\x02"), ("5.pdf", b"%PDF-1.4 ...")]
    write_tar_members(tmp_path / "in" / "mixed.tgz", members, gz=True)
    out = tmp_path / "out"
    assert download("--url_list", str(tmp_path / "in"), "--input_format", "archive", "--output_folder", str(out),
                    "--output_format", "webdataset", "--processors", "[file]", "--distributor", "inprocess",
                    "--thread_count", "4") == 0
    rows, stored = read_back(out)
    assert [(r["source_key"], r["status"], r["mime_type"]) for r in rows] == [
        ("0", "success", "image/jpeg"), ("1", "success", "image/png"), ("2", "success", "audio/wav"),
        ("3", "success", "application/octet-stream"), ("4", "failed_to_download", None),
        ("5", "failed_to_download", None)]
    assert [r["caption"] for r in rows] == ["a photo", None, "a beep", None, None, None]
    keys = [r["key"] for r in rows]
    assert stored[keys[2]]["wav"] == wav() and stored[keys[2]]["txt"] == b"a beep"
    assert np.load(io.BytesIO(stored[keys[3]]["npy"])).tolist() == list(range(6))
    assert rows[4]["error_message"] == "no media member (found: bin)"
    # Media extensions are an option: the pdf and the bin become samples too.
    out2 = tmp_path / "out2"
    assert download("--url_list", str(tmp_path / "in" / "mixed.tgz"), "--input_format", "archive",
                    "--output_folder", str(out2), "--output_format", "files", "--processors", "[file]",
                    "--media_extensions", "[jpg, png, wav, npy, pdf, bin]", "--distributor", "inprocess",
                    "--thread_count", "4") == 0
    rows2, stored2 = read_back(out2)
    assert [r["status"] for r in rows2] == ["success"] * 6
    assert stored2[rows2[5]["key"]]["pdf"] == b"%PDF-1.4 ..."


def test_corrupt_archives_fail_their_shard_and_the_others_are_committed(tmp_path):
    (tmp_path / "cases").mkdir()
    cases = cut_archives(tmp_path / "cases")
    folder = tmp_path / "in"
    folder.mkdir()
    write_archive(folder / "00000.tar", samples_of("a", 2))
    (folder / "00001.tar").write_bytes(cases["at_boundary.tar"][0].read_bytes())
    (folder / "00002.zip").write_bytes(cases["bad_crc.zip"][0].read_bytes())
    write_archive(folder / "00003.tgz", samples_of("d", 2))
    out = tmp_path / "out"
    summary = any2ds.download(url_list=str(folder), input_format="archive", output_folder=str(out),
                              output_format="webdataset", image_size=16, distributor="inprocess", thread_count=4,
                              number_sample_per_shard=10)
    assert summary["state"] == "failed_shards" and summary["shards_failed"] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                     "00003.parquet", "00003.tar", "00003_stats.json", "_any2ds"]
    assert summary["count"] == summary["successes"] == 4


def test_reprocessing_an_any2ds_output_matches_row_for_row(tmp_path, http_server):
    """Download into webdataset with captions and extra columns, then re-encode that folder."""
    names = ["123_456.jpg", "456_123.jpg", "300_500.jpg", "500_300.jpg", "1000_100.jpg", "64_64.jpg", "800_600.jpg",
             "alpha.png", "gray.jpg", "rotated.jpg", "missing.jpg"]
    rows = [{"url": http_server.url(f"/allowed/{n}"), "caption": f"caption\n{i} 😀", "extra": i, "label": f"l{i}"}
            for i, n in enumerate(names)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    first = tmp_path / "first"
    assert download("--url_list", str(tmp_path / "urls.parquet"), "--input_format", "parquet", "--caption_col",
                    "caption", "--save_additional_columns", "[extra, label]", "--output_folder", str(first),
                    "--output_format", "webdataset", "--number_sample_per_shard", "4", "--image_size", "64",
                    "--thread_count", "4", "--allow_private_networks", "true", "--distributor", "inprocess") == 0
    before = [r for r in read_dataset(first).rows if r["status"] == "success"]
    assert len(before) == len(names) - 1

    second = tmp_path / "second"
    assert download("--url_list", str(first), "--input_format", "archive", "--keep_source_keys", "true",
                    "--save_additional_columns", "[extra, label]", "--output_folder", str(second),
                    "--output_format", "webdataset", "--number_sample_per_shard", "4", "--image_size", "32",
                    "--compute_hash", "md5", "--thread_count", "4", "--processes_count", "2") == 0
    after = read_dataset(second)
    assert [r["key"] for r in after.rows] == [r["key"] for r in before]  # one row per stored sample
    same = ["key", "url", "caption", "extra", "label"]
    assert [{c: r[c] for c in same} for r in after.rows] == [{c: r[c] for c in same} for r in before]
    for row in after.rows:
        assert row["status"] == "success" and (row["width"], row["height"]) == (32, 32)
        assert (row["original_width"], row["original_height"]) == (64, 64) and len(row["md5"]) == 32
        shard = row["key"][:5]  # a sample stays in the shard of the same id
        assert (row["source_archive"], row["source_key"]) == (str(first / f"{shard}.tar"), row["key"])
        assert Image.open(io.BytesIO(after.samples[row["key"]]["jpg"])).size == (32, 32)
        assert after.samples[row["key"]]["txt"].decode() == row["caption"]
    assert pq.read_schema(second / "00000.parquet").field("extra").type == pa.int64()


def test_complementary_offset_ranges_write_the_same_shards_as_one_run(tmp_path):
    for i, name in enumerate(["00000.tar", "00001.zip", "00002.tgz", "00003.tar"]):
        write_archive(tmp_path / "in" / name, samples_of(f"s{i}_", 3, first_width=20 + i))
    common = ["--url_list", str(tmp_path / "in"), "--input_format", "archive", "--output_format", "webdataset",
              "--image_size", "16", "--number_sample_per_shard", "10", "--distributor", "inprocess",
              "--thread_count", "2", "--save_additional_columns", "[label]"]
    assert download(*common, "--output_folder", str(tmp_path / "one")) == 0
    assert download(*common, "--output_folder", str(tmp_path / "split"), "--max_offset", "2") == 0
    assert download(*common, "--output_folder", str(tmp_path / "split"), "--min_offset", "2") == 0
    one, split = read_dataset(tmp_path / "one"), read_dataset(tmp_path / "split")
    assert len(one.rows) == 12 and one.rows == split.rows and one.samples == split.samples
    listing = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert listing == sorted(p.name for p in (tmp_path / "split").iterdir())
    assert [n for n in listing if n.endswith(".tar")] == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]


def test_archives_on_s3_by_brace_pattern_with_a_missing_one(tmp_path, s3_bucket):
    fs, bucket = s3_bucket
    local = tmp_path / "in"
    for name in ["00000.tar", "00001.tgz", "00003.zip"]:
        write_archive(local / name, samples_of(name[:5], 2))
    for name in ["00000.tar", "00001.tgz", "00003.zip"]:
        fs.put(str(local / name), f"{bucket}/laion/{name}")
    url_list = f"s3://{bucket}/laion/{{00000.tar,00001.tgz,00002.tar,00003.zip}}"
    out = tmp_path / "out"
    assert download("--url_list", url_list, "--input_format", "archive", "--output_folder", str(out),
                    "--output_format", "webdataset", "--image_size", "16", "--thread_count", "2",
                    "--processes_count", "2", "--max_shard_retry", "0") == 1
    summary = read_dataset(out).summary
    assert summary["shards_failed"] == [2] and summary["successes"] == 6
    rows = read_dataset(out).rows
    assert {r["source_archive"] for r in rows} == {f"s3://{bucket}/laion/{n}" for n in
                                                   ["00000.tar", "00001.tgz", "00003.zip"]}
    # The whole folder, through fsspec, from workers that know the endpoint from the environment.
    out2 = tmp_path / "out2"
    summary = any2ds.download(url_list=f"s3://{bucket}/laion/", input_format="archive", output_folder=str(out2),
                              output_format="parquet", image_size=16, thread_count=2, keep_source_keys=True)
    assert summary["shards_failed"] == [] and summary["successes"] == 6
    assert sorted(r["key"] for r in read_dataset(out2).rows) == [f"{p}{i:04d}" for p in ["00000", "00001", "00003"]
                                                                 for i in range(2)]
