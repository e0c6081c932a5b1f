"""storage_options: object storage configured as users configure it, not through the environment.

Every test reaches the loopback S3 server only through ``storage_options`` (the ``s3_storage``
fixture removes every AWS_* and FSSPEC_* variable): input lists, archives and outputs on S3,
read and written by spawned worker processes, which get the options from the RunConfig.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import any2ds
from any2ds.cli import main
from any2ds.storage import REDACTED, Storage
from any2ds.testing import read_dataset
from tests.conftest import JPEG_SIZES
from tests.test_archive import samples_of, write_archive

NAMES = [name for name, _w, _h in JPEG_SIZES]


def url_rows(http_server, count: int) -> pa.Table:
    urls = [http_server.url(f"/allowed/{NAMES[i % len(NAMES)]}") for i in range(count)]
    return pa.table({"url": urls, "caption": [f"caption {i}" for i in range(count)]})


def test_input_list_and_output_on_s3(s3_storage, http_server, tmp_path, capsys):
    """A parquet URL list read from S3 and a webdataset written to S3 by two worker processes;
    the secrets never reach run_summary.json; ``any2ds report`` and ``any2ds verify`` read it
    with the same options."""
    options, fs, bucket = s3_storage
    with fs.open(f"{bucket}/lists/urls.parquet", "wb") as f:
        pq.write_table(url_rows(http_server, 12), f)
    out = f"s3://{bucket}/dataset"
    summary = any2ds.download(url_list=f"s3://{bucket}/lists/urls.parquet", input_format="parquet",
                              caption_col="caption", output_folder=out, output_format="webdataset",
                              number_sample_per_shard=5, processes_count=2, thread_count=4, image_size=16,
                              allow_private_networks=True, observers=[], storage_options=options)
    assert summary["state"] == "done" and summary["successes"] == 12 and summary["shards_done"] == 3
    dataset = read_dataset(out, storage_options=options)
    assert len(dataset.rows) == len(dataset.samples) == 12
    assert {row["caption"] for row in dataset.rows} == {f"caption {i}" for i in range(12)}
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/dataset") if p.endswith(".tar")) == \
        ["00000.tar", "00001.tar", "00002.tar"]
    written = json.loads(fs.cat_file(f"{bucket}/dataset/_any2ds/run_summary.json"))["config"]["storage_options"]
    assert written == {"s3": {**options["s3"], "key": REDACTED, "secret": REDACTED}}
    capsys.readouterr()
    assert main(["report", out, "--json", "--storage_options", json.dumps(options)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"]["done"] == 3 and report["samples"]["successes"] == 12
    assert main(["verify", out, "--storage_options", json.dumps(options)]) == 0
    assert capsys.readouterr().out.strip().endswith("files checked: all match")


def test_archives_on_s3_through_the_command_line(s3_storage, tmp_path):
    """Archives listed in an S3 folder, read in the workers; storage_options given as JSON."""
    options, fs, bucket = s3_storage
    for name in ["00000.tar", "00001.tgz", "00002.zip"]:
        write_archive(tmp_path / name, samples_of(name[:5], 3))
        fs.put(str(tmp_path / name), f"{bucket}/archives/{name}")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "any2ds", "download", "--url_list", f"s3://{bucket}/archives/",
         "--input_format", "archive", "--keep_source_keys", "true", "--output_folder", str(out),
         "--output_format", "parquet", "--image_size", "16", "--processes_count", "2", "--thread_count", "2",
         "--observers", "[]", "--storage_options", json.dumps(options)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_dataset(out).rows
    assert sorted(row["key"] for row in rows) == [f"{p}{i:04d}" for p in ["00000", "00001", "00002"] for i in range(3)]
    assert all(row["status"] == "success" for row in rows)
    assert {row["source_archive"] for row in rows} == {f"s3://{bucket}/archives/{n}"
                                                       for n in ["00000.tar", "00001.tgz", "00002.zip"]}


def test_a_credentials_profile_and_a_yaml_config_reach_lance(s3_storage, http_server, tmp_path, monkeypatch):
    """A profile from the AWS credentials file, in a YAML config; the lance writer (which talks to
    S3 with its own client) gets the same endpoint and the profile's keys."""
    pytest.importorskip("lance")
    options, fs, bucket = s3_storage
    credentials = tmp_path / "credentials"
    credentials.write_text("[minio]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))  # where ~/.aws/credentials would be
    list_path = tmp_path / "urls.parquet"
    pq.write_table(url_rows(http_server, 7), list_path)
    storage_options = {"s3": {"endpoint_url": options["s3"]["endpoint_url"], "profile": "minio"}}
    config = tmp_path / "config.yaml"
    config.write_text(f"url_list: {list_path}\ninput_format: parquet\noutput_folder: s3://{bucket}/lance\n"
                      "output_format: lance\nnumber_sample_per_shard: 4\nimage_size: 16\nthread_count: 2\n"
                      "allow_private_networks: true\nobservers: []\n"
                      f"storage_options:\n  s3:\n    endpoint_url: {storage_options['s3']['endpoint_url']}\n"
                      "    profile: minio\n")
    result = subprocess.run([sys.executable, "-m", "any2ds", "download", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = read_dataset(f"s3://{bucket}/lance", storage_options=storage_options)
    assert len(dataset.rows) == 7 and all(row["status"] == "success" for row in dataset.rows)


def test_anonymous_access_to_a_public_bucket(s3_storage, http_server, tmp_path):
    """``anon: true`` sends unsigned requests: no credentials at all, as for a public dataset."""
    options, fs, bucket = s3_storage
    for name in ("public", "private"):
        with fs.open(f"{bucket}/{name}/urls.parquet", "wb") as f:
            pq.write_table(url_rows(http_server, 3), f)
    fs.chmod(bucket, "public-read")
    fs.chmod(f"{bucket}/public/urls.parquet", "public-read")
    anonymous = {"s3": {"endpoint_url": options["s3"]["endpoint_url"], "anon": True}}

    def download(name: str) -> dict:
        return any2ds.download(url_list=f"s3://{bucket}/{name}/urls.parquet", input_format="parquet",
                               output_folder=str(tmp_path / name), image_size=16, thread_count=2,
                               allow_private_networks=True, observers=[], distributor="inprocess",
                               storage_options=anonymous)

    assert download("public")["successes"] == 3
    with pytest.raises(any2ds.ConfigError, match=f"url_list 's3://{bucket}/private/urls.parquet' cannot be read: "
                                                 "Forbidden"):
        download("private")


@pytest.mark.parametrize("value, message", [
    ({"endpoint_url": "http://127.0.0.1:9000"},
     "storage_options: 'endpoint_url' is not an fsspec protocol; give each protocol's options under its name"),
    ({"s3": "anon"}, "storage_options: the options of 's3' must be a mapping, not 'anon'"),
])
def test_options_not_by_protocol_are_a_startup_error(tmp_path, value, message):
    (tmp_path / "urls.txt").write_text("http://example.com/a.jpg\n")
    with pytest.raises(any2ds.ConfigError, match=message):
        any2ds.download(url_list=str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"),
                        storage_options=value)


def test_each_url_gets_the_options_of_its_filesystem():
    storage = Storage({"s3": {"anon": True}, "file": {"auto_mkdir": True}})
    assert storage.options_for("s3a://bucket/key") == {"anon": True}  # s3fs answers to s3 and s3a
    assert storage.options_for("/local/path") == {"auto_mkdir": True}
    assert storage.options_for("memory://x") == {}
