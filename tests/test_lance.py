"""output_format lance: end to end through any2ds.download, read back with Lance's own reader.

Every test checks the whole dataset: each input row exactly once under its key, its status,
its metadata, and its picture decoded with Pillow at the size the metadata says.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from any2ds import ConfigError, KeyFormat, OutputFolder, ShardWriter, download, hookimpl
from any2ds.testing import download_in_process
from any2ds_plugins.writers import parquet as parquet_module
from any2ds_plugins.writers.lance import LanceWriter, lance_location

lance = pytest.importorskip("lance")

NSPS, OOM = 4, 5  # 4 rows per shard: shards 00000..00003 for the 15 URLs below
IMAGES = ["123_456.jpg", "456_123.jpg", "300_500.jpg", "500_300.jpg", "1000_100.jpg", "64_64.jpg", "800_600.jpg",
          "alpha.png", "gray16.png", "gray.jpg", "rotated.jpg", "image.webp"]
# Failed rows in shards 1 and 2: a 404 and a body that is no picture.
URLS = IMAGES[:5] + ["missing.jpg"] + IMAGES[5:9] + ["not_an_image.jpg"] + IMAGES[9:]
KEYS = KeyFormat(NSPS, OOM)
METADATA_COLUMNS = ["url", "key", "status", "error_message", "error_type", "width", "height", "original_width",
                    "original_height", "exif", "sha256"]


@pytest.fixture
def url_list(tmp_path, http_server) -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("".join(http_server.url(f"/allowed/{name}") + "\n" for name in URLS))
    return path


def options(url_list: Path, output_folder: str, **extra) -> dict:
    # resize_mode "no": every stored picture keeps its own size, so a mixed-up row shows.
    return {"url_list": str(url_list), "output_folder": output_folder, "output_format": "lance",
            "number_sample_per_shard": NSPS, "resize_mode": "no", "thread_count": 4,
            "allow_private_networks": True, **extra}


def expected_key(row: int) -> str:
    return KEYS.key(row // NSPS, row % NSPS)


def read_rows(uri: str, **storage) -> dict[str, dict]:
    """Every row of the dataset (Lance's reader), by key; fails on a key seen twice."""
    rows = lance.dataset(uri, **storage).to_table().to_pylist()
    by_key = {row["key"]: row for row in rows}
    assert len(by_key) == len(rows), "a key appears more than once"
    return by_key


def check_rows(rows: dict[str, dict], image_dir: Path, image_sizes: dict, shards=range(4)) -> None:
    """The rows are exactly those of ``shards``, each with its status, metadata and picture."""
    expected = {expected_key(i): name for i, name in enumerate(URLS) if i // NSPS in shards}
    assert sorted(rows) == sorted(expected)
    for key, name in expected.items():
        row = rows[key]
        assert row["url"].endswith(f"/allowed/{name}")
        if name == "missing.jpg":
            assert (row["status"], row["error_type"], row["error_message"]) == (
                "failed_to_download", "http_4xx", "HTTP Error 404: Not Found")
        elif name == "not_an_image.jpg":
            assert (row["status"], row["error_type"]) == ("failed_to_resize", "decode")
        else:
            assert (row["status"], row["error_message"], row["error_type"]) == ("success", None, None)
            picture = Image.open(io.BytesIO(row["jpg"]))
            picture.load()
            assert picture.format == "JPEG"
            assert picture.size == (row["width"], row["height"]) == image_sizes[name]
            assert (row["original_width"], row["original_height"]) == image_sizes[name]
            assert row["sha256"] == hashlib.sha256((image_dir / name).read_bytes()).hexdigest()
            continue
        assert row["jpg"] is None and row["width"] is None and row["sha256"] is None


def referenced_files(uri: str) -> set[str]:
    return {file.path for fragment in lance.dataset(uri).get_fragments() for file in fragment.metadata.files}


def manifest_files(out: Path, shards) -> set[str]:
    """The data files the committed ``<shard>.lance-fragments`` of ``shards`` list."""
    files = set()
    for shard in shards:
        manifest = json.loads((out / f"{shard:05d}.lance-fragments").read_text())
        files |= {file["path"] for fragment in manifest["fragments"] for file in fragment["files"]}
    return files


def data_files(out: Path) -> set[str]:
    return set(os.listdir(out / "dataset.lance" / "data"))


def test_every_row_of_every_shard_in_one_dataset(tmp_path, url_list, image_dir, image_sizes):
    out = tmp_path / "out"
    summary = download(**options(url_list, str(out), processes_count=2))  # spawned workers
    assert (summary["state"], summary["count"], summary["successes"]) == ("done", len(URLS), len(IMAGES))
    uri = str(out / "dataset.lance")
    check_rows(read_rows(uri), image_dir, image_sizes)
    dataset = lance.dataset(uri)
    assert dataset.schema.names == METADATA_COLUMNS + ["jpg"]
    assert dataset.version == 1  # one commit per run
    assert referenced_files(uri) == manifest_files(out, range(4)) == data_files(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["_any2ds", "dataset.lance"] + [f"{s:05d}{suffix}" for s in range(4) for suffix in (".lance-fragments", "_stats.json")])


def test_resume_redoes_a_lost_shard_and_commits_every_row_once(tmp_path, url_list, image_dir, image_sizes):
    out = tmp_path / "out"
    uri = str(out / "dataset.lance")
    download_in_process(**options(url_list, str(out)))
    first = read_rows(uri)
    old_files_of_shard_1 = manifest_files(out, [1])
    # A crash that lost shard 1 after the finish step: it is no longer done.
    (out / "00001_stats.json").unlink()
    (out / "00001.lance-fragments").unlink()

    summary = download_in_process(**options(url_list, str(out)))
    assert (summary["shards_done"], summary["shards_skipped"], summary["count"]) == (1, 3, NSPS)
    rows = read_rows(uri)
    check_rows(rows, image_dir, image_sizes)
    assert rows.keys() == first.keys()
    assert lance.dataset(uri).version == 2
    assert referenced_files(uri) == manifest_files(out, range(4))
    assert not referenced_files(uri) & old_files_of_shard_1  # still on disk, for version 1 only
    assert old_files_of_shard_1 <= data_files(out)

    # Nothing left to do: finalize commits the same rows again.
    summary = download_in_process(**options(url_list, str(out)))
    assert (summary["shards_done"], summary["shards_skipped"]) == (0, 4)
    assert read_rows(uri) == rows
    assert lance.dataset(uri).version == 3


def test_finalize_commits_only_done_shards(tmp_path, url_list, image_dir, image_sizes):
    """A ``.lance-fragments`` without its ``_stats.json`` (a commit interrupted between the two) is left out."""
    out = tmp_path / "out"
    download_in_process(**options(url_list, str(out)))
    (out / "00002_stats.json").unlink()
    LanceWriter(LanceWriter.Options()).finalize(OutputFolder(str(out), OOM))
    check_rows(read_rows(str(out / "dataset.lance")), image_dir, image_sizes, shards=(0, 1, 3))


class FailingShard(ShardWriter):
    """Shard 00001 of a lance writer, failing in ``write`` after two rows or after ``close``."""

    def __init__(self, shard: ShardWriter, fail_in: str) -> None:
        self.shard, self.fail_in, self.written = shard, fail_in, 0

    def write(self, result):
        self.shard.write(result)
        self.written += 1
        if self.fail_in == "write" and self.written == 2:
            raise OSError("disk full (injected)")

    def close(self):
        self.shard.close()  # every data file written, the fragments recorded
        if self.fail_in == "close":
            raise OSError("disk full (injected)")

    def abort(self):
        self.shard.abort()


def failing_shard_plugin(fail_in: str):
    class ShardFailingLanceWriter(LanceWriter):
        name = "lance_failing_shard"

        def open_shard(self, target, layout):
            shard = super().open_shard(target, layout)
            return FailingShard(shard, fail_in) if target.shard_name == "00001" else shard

    class Plugin:
        @hookimpl
        def any2ds_register_writers(self, register):
            register(ShardFailingLanceWriter)

    return Plugin()


@pytest.mark.parametrize("fail_in", ["write", "close"])
def test_a_failed_shard_is_never_committed_and_a_rerun_completes(tmp_path, url_list, image_dir, image_sizes,
                                                                 monkeypatch, fail_in):
    monkeypatch.setattr(parquet_module, "ROW_GROUP_ROWS", 1)  # Lance gets every row as it comes
    out = tmp_path / "out"
    uri = str(out / "dataset.lance")
    summary = download_in_process(failing_shard_plugin(fail_in),
                                  **options(url_list, str(out), output_format="lance_failing_shard"))
    assert summary["state"] == "failed_shards" and summary["shards_failed"] == [1]
    check_rows(read_rows(uri), image_dir, image_sizes, shards=(0, 2, 3))
    assert referenced_files(uri) == manifest_files(out, (0, 2, 3))
    # After close, both attempts had written whole data files, now referenced by no version; an
    # abort in the middle stops Lance before it finishes one (it removes what it began).
    assert len(data_files(out) - referenced_files(uri)) == {"write": 0, "close": 2}[fail_in]

    summary = download_in_process(**options(url_list, str(out)))
    assert (summary["state"], summary["shards_done"], summary["shards_skipped"]) == ("done", 1, 3)
    check_rows(read_rows(uri), image_dir, image_sizes)
    assert referenced_files(uri) == manifest_files(out, range(4))


def test_cli_with_a_named_dataset(tmp_path, url_list, image_dir, image_sizes):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "any2ds", "download", "--url_list", str(url_list), "--output_folder", str(out),
         "--output_format", "lance", "--lance_dataset_name", "pictures", "--number_sample_per_shard", str(NSPS),
         "--resize_mode", "no", "--thread_count", "4", "--allow_private_networks", "true"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stderr  # Lance's "dataset does not exist yet", once per shard
    check_rows(read_rows(str(out / "pictures.lance")), image_dir, image_sizes)
    assert not (out / "dataset.lance").exists()


def test_without_pylance_the_cli_fails_at_startup_in_one_line(tmp_path, url_list):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["lance"] = None  # pylance is not installed
        from any2ds.cli import main
        sys.exit(main(["download", "--url_list", {str(url_list)!r}, "--output_folder", {str(tmp_path / "out")!r},
                       "--output_format", "lance"]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("any2ds: error: output_format lance needs pylance: "
                                   "pip install 'any2ds[lance]'")
    assert not (tmp_path / "out").exists()


def test_importing_the_writers_does_not_import_lance():
    code = "import sys, any2ds_plugins.writers; assert 'lance' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_s3_output_and_resume(s3_bucket, url_list, image_dir, image_sizes):
    fs, bucket = s3_bucket
    out = f"s3://{bucket}/out"
    download(**options(url_list, out))  # spawned workers find the endpoint in FSSPEC_S3_ENDPOINT_URL
    fs.rm(f"{bucket}/out/00003_stats.json")
    summary = download(**options(url_list, out))
    assert (summary["shards_done"], summary["shards_skipped"]) == (1, 3)
    uri, storage_options = lance_location(fs, f"{bucket}/out/dataset.lance")
    assert uri == f"s3://{bucket}/out/dataset.lance"
    check_rows(read_rows(uri, storage_options=storage_options), image_dir, image_sizes)
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out/_tmp")


def test_shards_with_other_column_types_are_refused_at_the_finish(tmp_path, http_server):
    """One Lance dataset has one schema: input files typing a saved column differently cannot share it."""
    folder = tmp_path / "input"
    folder.mkdir()
    url = http_server.url("/allowed/64_64.jpg")
    (folder / "a.csv").write_text(f"url,label\n{url},1\n")
    (folder / "b.csv").write_text(f"url,label\n{url},cat\n")
    with pytest.raises(ConfigError, match=r"shards 00000 and 00001 have different column\(s\) label, but one Lance dataset"):
        download_in_process(url_list=str(folder), input_format="csv", save_additional_columns=["label"],
                            output_folder=str(tmp_path / "out"), output_format="lance", allow_private_networks=True)
    assert not (tmp_path / "out" / "dataset.lance" / "_versions").exists()
