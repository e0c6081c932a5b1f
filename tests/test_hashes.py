"""Plugins that work on the raw fetched bytes: the hash verifier and the "any file" processor."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from any2ds.config import options_fields
from any2ds.errors import VerifyError
from any2ds.manager import PluginHost
from any2ds.types import FetchResult, Sample, SampleResult
from any2ds_plugins import file as file_plugin
from any2ds_plugins import hashes as hashes_plugin
from any2ds.mediatypes import from_magic
from any2ds_plugins.file import FileProcessor
from any2ds_plugins.hashes import HashVerifier

BODY = b"any2ds hashes the raw bytes" * 100


def verifier(**options) -> HashVerifier:
    return HashVerifier(HashVerifier.Options(**options))


def sample(**columns) -> Sample:
    return Sample(key="000000000", shard_id=0, index=0, url="http://example.com/a.jpg", columns=columns)


def fetched(body: bytes = BODY, url: str = "http://example.com/a", content_type: str | None = None) -> FetchResult:
    return FetchResult(body=body, url=url, content_type=content_type)


# -- hash verifier -------------------------------------------------------------


def test_registers_as_hash_verifier():
    host = PluginHost.load([hashes_plugin], entry_points=False)
    assert host.component("verifier", "hash", "verifiers") is HashVerifier
    assert [f.name for f in options_fields(HashVerifier.Options)] == ["compute_hash", "verify_hash"]


@pytest.mark.parametrize("name", ["md5", "sha256", "sha512"])
def test_digest_matches_hashlib(name):
    hasher = verifier(compute_hash=name)
    assert hasher.verify(sample(), fetched()) == {name: hashlib.new(name, BODY).hexdigest()}
    assert hasher.metadata_fields() == [pa.field(name, pa.string())]
    assert hasher.read_columns() == ()


def test_default_is_sha256():
    assert verifier().verify(sample(), fetched()) == {"sha256": hashlib.sha256(BODY).hexdigest()}


@pytest.mark.parametrize("value", [None, "none", "None", ""])
def test_no_hash(value):
    hasher = verifier(compute_hash=value)
    assert hasher.options.compute_hash is None
    assert hasher.metadata_fields() == []
    assert hasher.verify(sample(), fetched()) == {}


def test_verify_hash_match_and_mismatch():
    hasher = verifier(compute_hash="md5", verify_hash=["expected_md5", "md5"])
    assert hasher.read_columns() == ("expected_md5",)
    assert hasher.kept_columns() == ()  # the expected value is not copied into the output metadata
    digest = hashlib.md5(BODY).hexdigest()
    assert hasher.verify(sample(expected_md5=digest), fetched()) == {"md5": digest}
    assert hasher.verify(sample(expected_md5=digest.upper()), fetched()) == {"md5": digest}
    with pytest.raises(VerifyError) as info:
        hasher.verify(sample(expected_md5=hashlib.md5(b"other").hexdigest()), fetched())
    assert info.value.message == "hash mismatch"
    assert info.value.status == "failed_to_download"


@pytest.mark.parametrize("expected", [None, ""])
def test_missing_expected_hash_is_not_rejected(expected):
    hasher = verifier(compute_hash="sha256", verify_hash=["h", "sha256"])
    assert hasher.verify(sample(h=expected), fetched()) == {"sha256": hashlib.sha256(BODY).hexdigest()}


@pytest.mark.parametrize("options", [
    {"compute_hash": "sha256", "verify_hash": ["h", "md5"]},
    {"compute_hash": None, "verify_hash": ["h", "sha256"]},
    {"verify_hash": ["h"]},
    {"compute_hash": "sha1"},
])
def test_bad_hash_options_raise_value_error(options):
    with pytest.raises(ValueError):
        HashVerifier.Options(**options)


def test_mismatched_types_message():
    with pytest.raises(ValueError, match="verify_hash hash type 'md5' must be the same as compute_hash 'sha256'"):
        HashVerifier.Options(verify_hash=["h", "md5"])


# -- file processor ------------------------------------------------------------


def process(fetched_result: FetchResult, **options) -> SampleResult:
    """Run the processor on a sample whose URL is the fetched one (no redirect)."""
    result = SampleResult(sample=Sample(key="0", shard_id=0, index=0, url=fetched_result.url))
    FileProcessor(FileProcessor.Options(**options)).process(fetched_result, result)
    return result


def test_registers_as_file_processor():
    host = PluginHost.load([file_plugin], entry_points=False)
    assert host.component("processor", "file", "processors") is FileProcessor
    processor = FileProcessor(FileProcessor.Options())
    assert processor.media_streams() == ("file",)
    assert processor.metadata_fields() == [pa.field("mime_type", pa.string()), pa.field("size", pa.int64())]


@pytest.mark.parametrize("body, extension, mime", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "png", "image/png"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "jpg", "image/jpeg"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20, "wav", "audio/wav"),
    (b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 20, "webp", "image/webp"),
    (b"%PDF-1.7\n" + b"\x00" * 20, "pdf", "application/pdf"),
    (b"GIF89a" + b"\x00" * 20, "gif", "image/gif"),
    (b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00" + b"\x00" * 20, "bmp", "image/bmp"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "m4a", "audio/mp4"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00" * 16, "mp4", "video/mp4"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "webm", "video/webm"),
    (b"ID3\x04\x00" + b"\x00" * 20, "mp3", "audio/mpeg"),
    (b"fLaC" + b"\x00" * 20, "flac", "audio/flac"),
    (b"OggS" + b"\x00" * 20, "ogg", "audio/ogg"),
])
def test_extension_from_magic_bytes(body, extension, mime):
    # A misleading Content-Type and URL do not override what the bytes say.
    result = process(fetched(body, url="http://example.com/file.txt", content_type="text/plain"))
    assert result.media["file"].extension == extension
    assert result.media["file"].data == body
    assert result.metadata == {"mime_type": mime, "size": len(body)}


def test_unknown_bytes_fall_back_to_content_type_then_url_then_bin():
    unknown = b"\x00\x01 not a known format"
    assert from_magic(unknown) is None
    by_type = process(fetched(unknown, url="http://x/a.dat", content_type="application/json; charset=utf-8"))
    assert (by_type.media["file"].extension, by_type.metadata["mime_type"]) == ("json", "application/json")
    wav_type = process(fetched(unknown, content_type="audio/wav"))
    assert wav_type.media["file"].extension == "wav"
    by_url = process(fetched(unknown, url="http://x/arrays/a.NPY?v=1", content_type="application/octet-stream"))
    assert (by_url.media["file"].extension, by_url.metadata["mime_type"]) == ("npy", "application/octet-stream")
    by_url_mime = process(fetched(unknown, url="http://x/doc.html"))
    assert (by_url_mime.media["file"].extension, by_url_mime.metadata["mime_type"]) == ("html", "text/html")
    nothing = process(fetched(unknown, url="http://x/download"))
    assert (nothing.media["file"].extension, nothing.metadata["mime_type"]) == ("bin", "application/octet-stream")


def test_original_url_suffix_is_used_after_a_redirect():
    result = SampleResult(sample=Sample(key="0", shard_id=0, index=0, url="http://x/data/points.ply"))
    FileProcessor(FileProcessor.Options()).process(fetched(b"\x00\x01", url="http://cdn/x?id=3"), result)
    assert result.media["file"].extension == "ply"


def test_forced_extension_keeps_detected_mime():
    result = process(fetched(b"\x89PNG\r\n\x1a\n"), file_extension=".dat")
    assert result.media["file"].extension == "dat"
    assert result.metadata["mime_type"] == "image/png"


def test_bad_forced_extension_is_rejected():
    with pytest.raises(ValueError):
        FileProcessor.Options(file_extension="a/b")
