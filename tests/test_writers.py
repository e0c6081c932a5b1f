"""The built-in writers: every output format written through a real ShardTarget and
read back with the libraries users read it with (webdataset, pyarrow, tensorflow)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

import any2ds_plugins.writers as writers_plugin
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost
from any2ds.metadata import MetadataLayout, to_json
from any2ds.output import OutputFolder
from any2ds.types import Media, Sample, SampleResult, make_key
from any2ds_plugins.writers import files as files_module
from any2ds_plugins.writers import parquet as parquet_module
from any2ds import CoreOptions, RunConfig, SampleFilesWriter, sample_files
from any2ds.testing import check_writer
from any2ds_plugins.writers.tfrecord import to_feature

FORMATS = ["files", "webdataset", "parquet", "tfrecord", "dummy"]
NSPS, OOM = 10, 5  # keys of shard 0 are 000000..000009
SHARD = "00000"

LAYOUT = MetadataLayout.build(
    pa.schema([("extra", pa.int64()), ("scores", pa.list_(pa.float64()))]),
    saved_columns=["extra", "scores"],
    has_caption=True,
    plugin_fields=[pa.field("width", pa.int32()), pa.field("height", pa.int32()), pa.field("sha256", pa.string())],
    media_streams=["jpg"],
)


def writer_class(name: str):
    host = PluginHost.load([writers_plugin], entry_points=False)
    return host.component("writer", name, "output_format")


def image_bytes(index: int, fmt: str = "JPEG") -> bytes:
    """A small picture whose width (8 + index) tells which sample it belongs to."""
    buf = io.BytesIO()
    Image.new("RGB", (8 + index, 6), (index * 40, 100, 200)).save(buf, format=fmt)
    return buf.getvalue()


def success(index: int, caption: str | None, fmt: str = "JPEG", extension: str = "jpg") -> SampleResult:
    sample = Sample(make_key(0, index, NSPS, OOM), 0, index, f"http://example.com/{index}", caption,
                    {"extra": index * 10, "scores": [0.5, index * 1.0]})
    reencoded = extension == "jpg"  # under disable_all_reencoding the dimensions are unknown
    return SampleResult(sample, media={"jpg": Media(image_bytes(index, fmt), extension)},
                        metadata={"width": 8 + index if reencoded else None, "height": 6 if reencoded else None,
                                  "sha256": f"hash{index}"})


def failure(index: int, status: str, message: str) -> SampleResult:
    sample = Sample(make_key(0, index, NSPS, OOM), 0, index, f"http://example.com/{index}", f"caption {index}",
                    {"extra": index * 10, "scores": []})
    return SampleResult(sample, status=status, error_message=message, error_type="TestError")


def make_results() -> list[SampleResult]:
    """Six rows in completion order (not key order): four successes, two failures."""
    by_index = {
        0: success(0, "a cat"),
        1: failure(1, "failed_to_download", "HTTP Error 404: Not Found"),
        2: success(2, None),
        3: success(3, "png kept as is", fmt="PNG", extension="png"),  # stream "jpg", png bytes
        4: failure(4, "failed_to_resize", "Image decoding error"),
        5: success(5, "unicode é ü"),
    }
    return [by_index[i] for i in (3, 0, 5, 1, 4, 2)]


RESULTS = make_results()
SUCCESSES = [r for r in RESULTS if r.ok]


def key(index: int) -> str:
    return make_key(0, index, NSPS, OOM)


def make_writer(fmt: str):
    cls = writer_class(fmt)
    return cls(cls.Options())


def open_shard(fmt: str, root: str):
    folder = OutputFolder(root, OOM)
    target = folder.target(0)
    return folder, target, make_writer(fmt).open_shard(target, LAYOUT)


def write_shard(fmt: str, root: str, results: list[SampleResult]) -> None:
    """What the core does with one shard: write every row, close, commit, clean up."""
    folder, target, shard = open_shard(fmt, root)
    for result in results:
        shard.write(result)
    shard.close()
    target.commit({"count": len(results)})
    tmp = folder.join("_tmp")
    folder.fs.invalidate_cache()
    assert not (folder.fs.exists(tmp) and folder.fs.find(tmp)), "the committed shard left temporary files"
    folder.finish()


# --- reading outputs back --------------------------------------------------


def check_metadata_parquet(path: Path, results: list[SampleResult]) -> None:
    """The per-shard metadata: every row, failures included, sorted by key, in layout order."""
    table = pq.read_table(path)
    assert table.schema.equals(LAYOUT.schema)
    rows = table.to_pylist()
    expected = sorted((LAYOUT.record(r) for r in results), key=lambda r: r["key"])
    assert rows == expected
    assert [r["key"] for r in rows] == sorted(r.sample.key for r in results)


def check_stats(root: Path, count: int) -> None:
    """The stats the commit was given, plus the sha256 of every file the shard committed."""
    stats = json.loads((root / f"{SHARD}_stats.json").read_text())
    files = stats.pop("files")
    assert stats == {"count": count}
    for name, digest in files.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def check_files(root: Path) -> None:
    assert sorted(os.listdir(root)) == [SHARD, f"{SHARD}.parquet", f"{SHARD}_stats.json"]
    folder = root / SHARD
    assert sorted(os.listdir(folder)) == sorted(
        [f"{key(i)}.{ext}" for i in (0, 2, 5) for ext in ("jpg", "txt", "json")]
        + [f"{key(3)}.png", f"{key(3)}.txt", f"{key(3)}.json"])
    for result in SUCCESSES:
        stem = folder / result.sample.key
        media = result.media["jpg"]
        with Image.open(stem.with_suffix(f".{media.extension}")) as image:
            assert image.size == (8 + result.sample.index, 6)
        assert stem.with_suffix(".txt").read_text(encoding="utf-8") == (result.sample.caption or "")
        assert json.loads(stem.with_suffix(".json").read_text(encoding="utf-8")) == LAYOUT.record(result)
    first = next(r for r in SUCCESSES if r.sample.index == 0)
    assert (folder / f"{key(0)}.json").read_text(encoding="utf-8") == to_json(LAYOUT.record(first))  # indent 4
    check_metadata_parquet(root / f"{SHARD}.parquet", RESULTS)
    check_stats(root, len(RESULTS))


@pytest.mark.parametrize("record", [
    {"url": "http://h/é", "key": "00000001", "status": "success", "error_message": None, "width": 256,
     "ratio": 1.5, "flag": True, "text": 'quote " newline \n tab \t separator \u2028', "big": 10**30},
    {"nan": float("nan"), "inf": float("-inf")},
    {},
    {"raw": b"bytes", "when": datetime.date(2024, 1, 2)},
    {"nested": {"a": [1, 2]}, "key": "1"},
])
def test_a_json_sidecar_is_the_text_img2dataset_writes(record):
    # img2dataset writes json.dumps(meta, indent=4); any2ds's faster path for flat records must match it
    assert to_json(record) == json.dumps(record, indent=4, default=str, ensure_ascii=False)


def check_webdataset(root: Path) -> None:
    assert sorted(os.listdir(root)) == [f"{SHARD}.parquet", f"{SHARD}.tar", f"{SHARD}_stats.json"]
    tar_path = root / f"{SHARD}.tar"
    samples = list(wds.WebDataset(str(tar_path), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [r.sample.key for r in SUCCESSES]  # write order
    for sample, result in zip(samples, SUCCESSES):
        media = result.media["jpg"]
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {media.extension, "txt", "json"}
        assert sample[media.extension] == media.data
        with Image.open(io.BytesIO(sample[media.extension])) as image:
            assert image.size == (8 + result.sample.index, 6)
        assert sample["txt"].decode("utf-8") == (result.sample.caption or "")
        assert json.loads(sample["json"]) == LAYOUT.record(result)
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    assert len(members) == 3 * len(SUCCESSES)
    assert {(m.mode, m.uname, m.gname) for m in members} == {(0o444, "bigdata", "bigdata")}
    check_metadata_parquet(root / f"{SHARD}.parquet", RESULTS)
    check_stats(root, len(RESULTS))


def check_parquet(root: Path) -> None:
    assert sorted(os.listdir(root)) == [f"{SHARD}.parquet", f"{SHARD}_stats.json"]
    table = pq.read_table(root / f"{SHARD}.parquet")
    assert table.schema.equals(LAYOUT.schema.append(pa.field("jpg", pa.binary())))
    assert table.num_rows == len(RESULTS)
    rows = table.to_pylist()
    for row, result in zip(rows, RESULTS):  # completion order
        assert row.pop("jpg") == (result.media["jpg"].data if result.ok else None)
        assert row == LAYOUT.record(result)
    check_stats(root, len(RESULTS))


def read_tfrecords(path: Path) -> list[bytes]:
    tf = pytest.importorskip("tensorflow")
    return [raw.numpy() for raw in tf.data.TFRecordDataset(str(path))]


def check_tfrecord(root: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    assert sorted(os.listdir(root)) == [f"{SHARD}.parquet", f"{SHARD}.tfrecord", f"{SHARD}_stats.json"]
    records = read_tfrecords(root / f"{SHARD}.tfrecord")
    assert len(records) == len(SUCCESSES)
    spec = {name: tf.io.FixedLenFeature([], tf.string)
            for name in ("key", "jpg", "txt", "caption", "url", "status", "error_message", "error_type", "sha256")}
    spec["extra"] = tf.io.FixedLenFeature([], tf.int64)
    spec["scores"] = tf.io.FixedLenFeature([2], tf.float32)
    for raw, result in zip(records, SUCCESSES):
        parsed = tf.io.parse_single_example(raw, spec)
        text = {name: parsed[name].numpy() for name in spec if name not in ("extra", "scores", "jpg")}
        assert text == {"key": result.sample.key.encode(), "txt": (result.sample.caption or "").encode(),
                        "caption": (result.sample.caption or "").encode(), "url": result.sample.url.encode(),
                        "status": b"success", "error_message": b"", "error_type": b"",
                        "sha256": result.metadata["sha256"].encode()}
        assert parsed["jpg"].numpy() == result.media["jpg"].data
        assert parsed["extra"].numpy() == result.sample.columns["extra"]
        assert parsed["scores"].numpy().tolist() == result.sample.columns["scores"]
        features = tf.train.Example.FromString(raw).features.feature
        if result.metadata["width"] is None:  # img2dataset: None is stored as b""
            assert features["width"].bytes_list.value == [b""]
        else:
            assert features["width"].int64_list.value == [result.metadata["width"]]
    check_metadata_parquet(root / f"{SHARD}.parquet", RESULTS)
    check_stats(root, len(RESULTS))


def check_dummy(root: Path) -> None:
    assert os.listdir(root) == [f"{SHARD}_stats.json"]
    check_stats(root, len(RESULTS))


CHECKS = {"files": check_files, "webdataset": check_webdataset, "parquet": check_parquet,
          "tfrecord": check_tfrecord, "dummy": check_dummy}


def skip_without_tensorflow(fmt: str) -> None:
    if fmt == "tfrecord":
        pytest.importorskip("tensorflow")


# --- tests -----------------------------------------------------------------


def test_the_plugin_registers_the_output_formats():
    host = PluginHost.load([writers_plugin], entry_points=False)
    assert host.registries["writer"].names() == sorted([*FORMATS, "lance"])  # lance: tests/test_lance.py
    for name in FORMATS:
        assert writer_class(name).name == name


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_output_reads_back(fmt, tmp_path):
    skip_without_tensorflow(fmt)
    write_shard(fmt, str(tmp_path / "out"), RESULTS)
    CHECKS[fmt](tmp_path / "out")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_shard_of_failures_only_still_commits(fmt, tmp_path):
    skip_without_tensorflow(fmt)
    failures = [r for r in RESULTS if not r.ok]
    write_shard(fmt, str(tmp_path / "out"), failures)
    root = tmp_path / "out"
    check_stats(root, len(failures))
    if fmt == "dummy":
        return
    if fmt == "parquet":
        table = pq.read_table(root / f"{SHARD}.parquet")
        assert table.num_rows == 2 and table.column("jpg").null_count == 2
        return
    check_metadata_parquet(root / f"{SHARD}.parquet", failures)
    if fmt == "files":
        assert os.listdir(root / SHARD) == []
    elif fmt == "webdataset":
        with tarfile.open(root / f"{SHARD}.tar") as tar:
            assert tar.getmembers() == []
    else:
        assert read_tfrecords(root / f"{SHARD}.tfrecord") == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_abort_leaves_no_files(fmt, tmp_path):
    skip_without_tensorflow(fmt)
    folder, target, shard = open_shard(fmt, str(tmp_path / "out"))
    for result in RESULTS[:3]:
        shard.write(result)
    shard.abort()
    target.abort()
    folder.finish()
    assert os.listdir(tmp_path / "out") == []


def test_files_are_written_in_batches_before_close(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "BATCH_FILES", 3)  # one sample's jpg, txt and json
    folder, target, shard = open_shard("files", str(tmp_path))
    shard.write(RESULTS[0])
    assert sorted(os.listdir(target.path(""))) == [f"{key(3)}.json", f"{key(3)}.png", f"{key(3)}.txt"]
    for result in RESULTS[1:]:
        shard.write(result)
    shard.close()
    target.commit({"count": len(RESULTS)})
    folder.finish()
    check_files(tmp_path)


def test_parquet_is_written_in_row_groups_of_256_rows(tmp_path):
    results = [success(i % NSPS, f"caption {i}") for i in range(600)]
    write_shard("parquet", str(tmp_path), results)
    metadata = pq.ParquetFile(tmp_path / f"{SHARD}.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [256, 256, 88]


def test_parquet_flushes_a_row_group_once_enough_media_is_buffered(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_module, "ROW_GROUP_BYTES", 1)  # every success fills the buffer
    write_shard("parquet", str(tmp_path), RESULTS)
    metadata = pq.ParquetFile(tmp_path / f"{SHARD}.parquet").metadata
    # Completion order is success x3, failure x2, success: failures carry no media.
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [1, 1, 1, 3]


# Counts this process's threads around read_parquet, in an interpreter whose pyarrow pools have not started.
COUNT_READ_THREADS = """
import os, sys
from any2ds.metadata import read_parquet
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
with open(sys.argv[1], "rb") as f:
    table = read_parquet(f, ["key", "absent"])
print(table.column_names, table.num_rows, threads() - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_reading_a_parquet_back_starts_no_pyarrow_thread(tmp_path):
    """pq.read_table(<a Python file>) reads on pyarrow's pools; a pool thread may free the Python
    buffers of the read after it returned, and if the interpreter is exiting then, the process
    aborts ("terminate called without an active exception"). read_parquet reads on its caller."""
    path = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "status": ["success", "failed_to_download"]}), path)
    result = subprocess.run([sys.executable, "-c", COUNT_READ_THREADS, str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['key']", "2", "0"]


def test_parquet_rejects_a_stream_named_like_a_metadata_column(tmp_path):
    layout = MetadataLayout.build(pa.schema([]), [], False, [], media_streams=["url"])
    target = OutputFolder(str(tmp_path), OOM).target(0)
    with pytest.raises(ConfigError, match="url"):
        make_writer("parquet").open_shard(target, layout)
    target.abort()


def test_media_extensions_never_overwrite_the_sidecars():
    result = success(0, "caption")
    result.media = {"text": Media(b"downloaded text", "txt"), "jpg": Media(b"jpeg", "jpg"),
                    "thumb": Media(b"small jpeg", "jpg")}
    members = sample_files(result, LAYOUT.record(result), LAYOUT)
    assert members["txt"] == b"caption"
    assert members["text.txt"] == b"downloaded text"
    assert members["jpg"] == b"jpeg" and members["thumb.jpg"] == b"small jpeg"
    assert json.loads(members["json"])["key"] == result.sample.key


def _tarfile_stream(members: list[tuple[str, bytes]]) -> bytes:
    """The tar that tarfile's ``w|`` stream writes for webdataset members, as the writer used to."""
    from any2ds_plugins.writers.webdataset import MEMBER_MODE, MEMBER_MTIME, MEMBER_OWNER

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size, member.mtime, member.mode = len(data), MEMBER_MTIME, MEMBER_MODE
            member.uname = member.gname = MEMBER_OWNER
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("members", [
    [],
    [("00000000.txt", b"")],
    [("00000001.jpg", b"j" * 511), ("00000001.json", b"{}" * 256), ("00000001.txt", b"t" * 513)],
    [("k" * 96 + ".jpg", b"x" * 10240)],  # a name filling its field exactly
    [("folder/" * 20 + "key.jpg", b"x")],  # longer than the field: tarfile splits it into a prefix
    [("clé-ñ.json", b"{}"), ("\udcff.txt", b"undecodable byte in the name")],
], ids=["empty", "empty-member", "block-edges", "100-byte-name", "prefixed-name", "non-ascii"])
def test_webdataset_tars_are_the_bytes_tarfile_writes(members):
    """The writer builds headers itself (tarfile's cost 70 us a sample); its tars stay tarfile's."""
    from any2ds_plugins.writers.webdataset import TarStream

    out = io.BytesIO()
    stream = TarStream(out)
    for name, data in members:
        stream.add(name, data)
    stream.close()
    assert out.getvalue() == _tarfile_stream(members)


class _CountedWrites(io.RawIOBase):
    """A raw file that counts its writes, and takes at most ``limit`` bytes of each."""

    def __init__(self, limit: int | None = None) -> None:
        self.data, self.writes, self.limit = bytearray(), 0, limit

    def writable(self) -> bool:
        return True

    def write(self, block) -> int:
        self.writes += 1
        taken = bytes(block[:self.limit])
        self.data += taken
        return len(taken)


@pytest.mark.parametrize("sizes", [[], [10, 2000, 1], [5000], [999, 1, 3000, 40, 4096]],
                         ids=["nothing", "crossing-a-block", "larger-than-a-block", "exact-block"])
def test_a_shard_file_holds_and_hashes_every_byte_written(sizes, monkeypatch):
    """Writes are gathered into blocks: whatever their sizes, the file gets every byte in order,
    tell() counts what was written, and the digest is the file's."""
    from any2ds import output

    monkeypatch.setattr(output, "WRITE_BLOCK", 1000)
    raw, digests = _CountedWrites(limit=700), []
    file = output._HashingFile(raw, digests.append)
    written = b""
    for index, size in enumerate(sizes):
        chunk = bytes([index]) * size
        assert file.write(memoryview(chunk) if index % 2 else chunk) == size
        written += chunk
        assert file.tell() == len(written)
    file.close()
    assert bytes(raw.data) == written and raw.closed
    assert digests == [hashlib.sha256(written).hexdigest()]


def test_a_shard_file_reaches_the_os_in_large_blocks():
    """A tar member is three writes; a shard of them is one write to the file per WRITE_BLOCK
    (each write to the OS and to sha256 released the GIL: 43 us a sample, 24 us gathered)."""
    from any2ds import output
    from any2ds_plugins.writers.webdataset import TarStream

    raw, digests = _CountedWrites(), []
    file = output._HashingFile(raw, digests.append)
    stream = TarStream(file)
    for index in range(100):
        stream.add(f"{index:08d}.jpg", b"j" * 20_000)
    stream.close()
    file.close()
    assert len(raw.data) == 100 * (512 + 20_480) + 10240
    assert raw.writes <= len(raw.data) // output.WRITE_BLOCK + 1  # 301 when each write went through
    assert digests == [hashlib.sha256(raw.data).hexdigest()]


def test_a_webdataset_member_name_ustar_cannot_hold_fails_as_with_tarfile():
    from any2ds_plugins.writers.webdataset import TarStream

    with pytest.raises(ValueError, match="name is too long"):
        TarStream(io.BytesIO()).add("k" * 101 + ".jpg", b"x")


def test_tfrecord_features_follow_value_types():
    tf = pytest.importorskip("tensorflow")
    assert to_feature(tf, 3).int64_list.value == [3]
    assert to_feature(tf, 0.25).float_list.value == [0.25]
    assert to_feature(tf, None).bytes_list.value == [b""]
    assert to_feature(tf, "é").bytes_list.value == ["é".encode()]
    assert to_feature(tf, [1, 2]).int64_list.value == [1, 2]
    assert to_feature(tf, [1, 0.5]).float_list.value == [1.0, 0.5]
    assert to_feature(tf, ["a", "b"]).bytes_list.value == [b"a", b"b"]
    assert to_feature(tf, [[0.1, 0.2]]).bytes_list.value == [b"[[0.1, 0.2]]"]  # bbox lists: JSON


def test_tfrecord_check_fails_early_without_tensorflow(monkeypatch, tmp_path):
    writer = make_writer("tfrecord")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(ConfigError, match=r"pip install 'any2ds\[tfrecord\]'"):
        writer.check()
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    target = OutputFolder(str(tmp_path), OOM).target(0)
    with pytest.raises(ConfigError, match="needs tensorflow"):
        writer.open_shard(target, LAYOUT)
    target.abort()


def test_importing_the_writers_does_not_import_tensorflow():
    code = "import sys, any2ds_plugins.writers; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- S3, through a loopback moto server --------------------------------------


@pytest.mark.parametrize("fmt", ["webdataset", "files", "parquet", "tfrecord"])
def test_writers_commit_on_s3(fmt, s3_bucket, tmp_path):
    skip_without_tensorflow(fmt)
    fs, bucket = s3_bucket
    write_shard(fmt, f"s3://{bucket}/out", RESULTS)
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out/_tmp")
    local = tmp_path / "copy"
    fs.get(f"{bucket}/out/", str(local), recursive=True)
    CHECKS[fmt](local)


# --- conformance: every built-in writer, and a zip sink written from the docs -----------------


def docstring_zip_writer() -> type[SampleFilesWriter]:
    """The zip sink of SampleFilesWriter's docstring, run as written there (the code block that ends it)."""
    code = textwrap.dedent(inspect.getdoc(SampleFilesWriter).split("::\n", 1)[1])
    namespace = {"SampleFilesWriter": SampleFilesWriter, "zipfile": zipfile}
    exec(code, namespace)  # noqa: S102 - the documented example, as a plugin author copies it
    return namespace["ZipWriter"]


ZipWriter = docstring_zip_writer()


def conforming_writers():
    host = PluginHost.load()
    names = [name for name in host.registries["writer"].names() if name != "dummy"]  # dummy stores nothing
    if importlib.util.find_spec("tensorflow") is None:
        names.remove("tfrecord")
    if importlib.util.find_spec("lance") is None:
        names.remove("lance")
    return [host.component("writer", name, "output_format") for name in names] + [ZipWriter]


@pytest.mark.parametrize("writer_class", conforming_writers(), ids=lambda cls: cls.name)
def test_writer_conforms(writer_class, tmp_path):
    check_writer(writer_class(RunConfig(CoreOptions(url_list="x")).options_for(writer_class)), tmp_path / "out")


def test_a_subclass_opening_its_own_container_is_used_through_open_container(tmp_path):
    """A format written against open_container over a built-in one that starts its container in the
    core's file: the nearer definition wins, so the subclass still gets its (file, tar) pairs."""
    from any2ds_plugins.writers.webdataset import WebDatasetWriter

    opened = []

    class OwnTar(WebDatasetWriter):
        def open_container(self, fs, path):
            opened.append(path)
            file = fs.open(path, "wb")
            return file, super().start_container(file)

        def add_file(self, container, name, data):
            super().add_file(container[1], name, data)

        def close_container(self, container):
            container[1].close()
            container[0].close()

    check_writer(OwnTar(RunConfig(CoreOptions(url_list="x")).options_for(OwnTar)), tmp_path / "out")
    assert opened and all(path.endswith(".tar") for path in opened)


def test_the_conformance_check_catches_a_writer_that_drops_failures(tmp_path):
    class LosingRows(ZipWriter):
        def read_output(self, output):
            return ((row, files) for row, files in super().read_output(output) if row["status"] == "success")

    with pytest.raises(AssertionError, match="rows read back"):
        check_writer(LosingRows(None), tmp_path / "out")


def test_the_conformance_check_catches_an_abort_that_leaves_files(tmp_path):
    class Leaky(ZipWriter):
        def open_shard(self, target, layout):
            shard_writer = super().open_shard(target, layout)
            shard_writer.abort = lambda: target.folder.fs.pipe(target.folder.join(f"{target.shard_name}.zip"), b"x")
            return shard_writer

    with pytest.raises(AssertionError, match="an aborted shard left"):
        check_writer(Leaky(None), tmp_path / "out")
