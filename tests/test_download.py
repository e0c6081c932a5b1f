"""End to end: the CLI and any2ds.download against the loopback HTTP server."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

import any2ds
from any2ds.cli import main
from tests.conftest import moto_recording
from tests.polling import wait_until

IMAGES = ["123_456.jpg", "456_123.jpg", "300_500.jpg", "500_300.jpg", "1000_100.jpg", "64_64.jpg", "800_600.jpg",
          "alpha.png", "gray.jpg", "rotated.jpg", "image.webp"]


def write_csv(path: Path, rows: list[dict]) -> Path:
    pq_table = pa.Table.from_pylist(rows)
    import pyarrow.csv as pcsv

    pcsv.write_csv(pq_table, path)
    return path


def url_rows(server, names=IMAGES, extra=True) -> list[dict]:
    rows = [{"url": server.url(f"/allowed/{n}"), "caption": f"caption {i}", "extra": i} for i, n in enumerate(names)]
    if extra:
        rows += [
            {"url": server.url("/allowed/missing.jpg"), "caption": "a 404", "extra": 100},
            {"url": server.url("/allowed/not_an_image.jpg"), "caption": "html", "extra": 101},
            {"url": server.url("/disallowed/64_64.jpg"), "caption": "opted out", "extra": 102},
        ]
    return rows


def run(*args: str) -> int:
    """The CLI in-process; the test server is on loopback, which runs must allow explicitly."""
    return main(["download", "--allow_private_networks", "true", *args])


def read_stats(out: Path) -> dict[str, dict]:
    return {Path(p).name: json.loads(Path(p).read_text()) for p in sorted(glob.glob(f"{out}/*_stats.json"))}


def read_metadata(out: Path) -> list[dict]:
    files = sorted(glob.glob(f"{out}/[0-9]*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


# Each answer of long_run's server route waits this long: with thread_count 4 and 2 processes, at
# most 8 / 0.06 = 133 rows (7 shards) a second whatever the CPU, about what 2 cores resize anyway.
LONG_RUN_DELAY = 0.06


def long_run_urls(server, rows: int) -> list[str]:
    """The URLs of :func:`long_run`: each distinct (a URL listed twice in a shard is fetched and
    processed once), so that every row costs a fetch and a resize, and each answered late."""
    return [server.url(f"/delayed/{IMAGES[i % 7]}?row={i}") for i in range(rows)]


def _delayed(server) -> Callable[[BaseHTTPRequestHandler], None]:
    def handler(request: BaseHTTPRequestHandler) -> None:
        time.sleep(LONG_RUN_DELAY)
        server.routes["/allowed/"](request)
    return handler


def long_run(tmp_path, server, rows: int) -> tuple[list[str], Path]:
    """A CLI command slow enough to interrupt (rows x 512 px lanczos, each URL answered after
    LONG_RUN_DELAY), and its output folder."""
    server.route("/delayed/", _delayed(server))
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"url": url} for url in long_run_urls(server, rows)]), path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "any2ds", "download", "--url_list", str(path), "--input_format", "parquet",
           "--output_folder", str(out), "--output_format", "webdataset", "--number_sample_per_shard", "20",
           "--processes_count", "2", "--thread_count", "4", "--image_size", "512", "--resize_mode", "keep_ratio",
           "--upscale_interpolation", "lanczos", "--allow_private_networks", "true"]
    return cmd, out


def wait_for_shards(out: Path, proc: subprocess.Popen, count: int) -> None:
    wait_until(lambda: len(glob.glob(f"{out}/*_stats.json")) >= count or proc.poll() is not None, 120)


def assert_complete_webdataset(out: Path, shards: int, rows: int) -> None:
    assert sorted(read_stats(out)) == [f"{i:05d}_stats.json" for i in range(shards)]
    tars = sorted(glob.glob(f"{out}/*.tar"))
    assert len(tars) == shards
    keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
    assert len(keys) == len(set(keys)) == rows
    assert not (out / "_tmp").exists()


@pytest.fixture
def csv_input(tmp_path, http_server):
    return write_csv(tmp_path / "input.csv", url_rows(http_server))


def test_webdataset_end_to_end(tmp_path, csv_input):
    out = tmp_path / "out"
    assert run("--url_list", str(csv_input), "--input_format", "csv", "--caption_col", "caption",
               "--save_additional_columns", '["extra"]', "--output_folder", str(out),
               "--output_format", "webdataset", "--number_sample_per_shard", "10", "--image_size", "64",
               "--thread_count", "8") == 0
    assert sorted(os.listdir(out)) == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet",
                                        "00001.tar", "00001_stats.json", "_any2ds"]
    samples = list(wds.WebDataset([str(out / "00000.tar"), str(out / "00001.tar")], shardshuffle=False))
    assert len(samples) == len(IMAGES)
    for s in samples:
        assert Image.open(io.BytesIO(s["jpg"])).size == (64, 64)  # border mode
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["status"] == "success"
        assert s["txt"].decode() == meta["caption"]
    with tarfile.open(out / "00000.tar") as tar:
        assert {m.mode for m in tar.getmembers()} == {0o444}
    rows = read_metadata(out)
    assert len(rows) == len(IMAGES) + 3
    # nsps=10 -> keys are 6 digits: shard id * 10 + row index.
    assert [r["key"] for r in rows] == [f"{i // 10:05d}{i % 10}" for i in range(len(rows))]
    by_caption = {r["caption"]: r for r in rows}
    assert by_caption["a 404"]["status"] == "failed_to_download"
    assert by_caption["a 404"]["error_message"] == "HTTP Error 404: Not Found"
    assert by_caption["html"]["status"] == "failed_to_resize"
    assert by_caption["html"]["error_message"] == "Image decoding error"
    assert by_caption["opted out"]["error_message"] == "Use of image disallowed by X-Robots-Tag directive"
    assert by_caption["caption 0"]["original_width"] == 123 and by_caption["caption 0"]["width"] == 64
    assert by_caption["caption 0"]["sha256"] and by_caption["a 404"]["sha256"] is None


def test_metadata_schema_and_stats_match_img2dataset(tmp_path, csv_input):
    out = tmp_path / "out"
    assert run("--url_list", str(csv_input), "--input_format", "csv", "--caption_col", "caption",
               "--save_additional_columns", '["extra"]', "--output_folder", str(out),
               "--output_format", "files", "--thread_count", "8") == 0
    schema = pq.read_schema(out / "00000.parquet")
    assert schema.names == ["extra", "caption", "url", "key", "status", "error_message", "error_type", "width",
                            "height", "original_width", "original_height", "exif", "sha256"]
    assert schema.field("extra").type == pa.int64()
    assert schema.field("width").type == pa.int32()
    stats = read_stats(out)["00000_stats.json"]
    assert list(stats)[:8] == ["count", "successes", "failed_to_download", "failed_to_resize", "duration",
                               "start_time", "end_time", "status_dict"]
    assert stats["count"] == len(IMAGES) + 3 and stats["successes"] == len(IMAGES)
    assert stats["failed_to_download"] == 2 and stats["failed_to_resize"] == 1
    assert stats["status_dict"]["success"] == len(IMAGES)
    # files layout: <shard>/<key>.jpg, .txt, .json for successes only
    files = sorted(os.listdir(out / "00000"))
    assert len(files) == 3 * len(IMAGES)
    assert (out / "00000" / "000000000.txt").read_text() == "caption 0"
    summary = json.loads((out / "_any2ds" / "run_summary.json").read_text())
    assert summary["state"] == "done" and summary["count"] == len(IMAGES) + 3


def test_parquet_output_holds_media(tmp_path, csv_input):
    out = tmp_path / "out"
    assert run("--url_list", str(csv_input), "--input_format", "csv", "--output_folder", str(out),
               "--output_format", "parquet", "--encode_format", "png", "--encode_quality", "9",
               "--thread_count", "4") == 0
    table = pq.read_table(out / "00000.parquet")
    assert "png" in table.column_names and table.num_rows == len(IMAGES) + 3
    ok = [r for r in table.to_pylist() if r["status"] == "success"]
    assert all(Image.open(io.BytesIO(r["png"])).format == "PNG" for r in ok)
    assert all(r["png"] is None for r in table.to_pylist() if r["status"] != "success")


def test_tfrecord_output_reads_back_with_tf_data(tmp_path, csv_input):
    tf = pytest.importorskip("tensorflow")
    out = tmp_path / "out"
    assert run("--url_list", str(csv_input), "--input_format", "csv", "--caption_col", "caption",
               "--output_folder", str(out), "--output_format", "tfrecord", "--thread_count", "4") == 0
    features = {"key": tf.io.FixedLenFeature([], tf.string), "jpg": tf.io.FixedLenFeature([], tf.string),
                "txt": tf.io.FixedLenFeature([], tf.string), "width": tf.io.FixedLenFeature([], tf.int64)}
    records = [tf.io.parse_single_example(r, features) for r in tf.data.TFRecordDataset(str(out / "00000.tfrecord"))]
    assert len(records) == len(IMAGES)
    assert all(int(r["width"]) == 256 for r in records)


def test_dummy_output_writes_only_stats(tmp_path, csv_input):
    out = tmp_path / "out"
    assert run("--url_list", str(csv_input), "--input_format", "csv", "--output_folder", str(out),
               "--output_format", "dummy", "--thread_count", "4") == 0
    assert sorted(os.listdir(out)) == ["00000_stats.json", "_any2ds"]


@pytest.mark.parametrize("input_format", ["txt", "txt.gz", "csv", "csv.gz", "tsv", "tsv.gz", "json", "json.gz",
                                          "jsonl", "jsonl.gz", "parquet"])
def test_every_input_format(tmp_path, http_server, input_format):
    import gzip

    rows = url_rows(http_server, IMAGES[:4], extra=False)
    base = input_format.removesuffix(".gz")
    path = tmp_path / f"input.{input_format}"
    if base == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        if base == "txt":
            text = "".join(r["url"] + "\n" for r in rows)
        elif base in ("csv", "tsv"):
            sep = "," if base == "csv" else "\t"
            text = f"url{sep}caption\n" + "".join(f"{r['url']}{sep}{r['caption']}\n" for r in rows)
        elif base == "json":
            text = json.dumps(rows)
        else:
            text = "".join(json.dumps(r) + "\n" for r in rows)
        data = text.encode()
        path.write_bytes(gzip.compress(data) if input_format.endswith(".gz") else data)
    out = tmp_path / "out"
    args = ["--url_list", str(path), "--input_format", input_format, "--output_folder", str(out),
            "--output_format", "files", "--thread_count", "4"]
    if base != "txt":
        args += ["--caption_col", "caption"]
    assert run(*args) == 0
    rows_out = read_metadata(out)
    assert [r["status"] for r in rows_out] == ["success"] * 4
    if base != "txt":
        assert [r["caption"] for r in rows_out] == [f"caption {i}" for i in range(4)]


def test_folder_of_inputs_continues_shard_ids(tmp_path, http_server):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        (folder / f"part{i}.txt").write_text("".join(http_server.url(f"/allowed/{n}") + "\n" for n in IMAGES[:3]))
    out = tmp_path / "out"
    assert run("--url_list", str(folder), "--output_folder", str(out), "--output_format", "dummy",
               "--number_sample_per_shard", "2", "--thread_count", "4") == 0
    # 3 rows per file, 2 per shard, files never merged: shards 0,1 from part0 and 2,3 from part1.
    assert sorted(read_stats(out)) == [f"0000{i}_stats.json" for i in range(4)]
    assert [s["count"] for s in read_stats(out).values()] == [2, 1, 2, 1]


def test_bad_rows_become_failed_records(tmp_path, http_server):
    rows = [{"url": http_server.url("/allowed/64_64.jpg")}, {"url": None}, {"url": ""},
            {"url": "ftp://example.com/a.jpg"}, {"url": "file:///etc/passwd"}, {"url": "not a url"},
            {"url": "http://[::1"}, {"url": "http://x]/a"}, {"url": "http://[zz]/a.jpg"}]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("url", pa.string())])), path)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "parquet", "--output_folder", str(out),
               "--thread_count", "4") == 0
    got = read_metadata(out)
    assert len(got) == 9
    assert got[0]["status"] == "success"
    assert [r["error_message"] for r in got[1:3]] == ["missing url", "missing url"]
    assert got[3]["error_message"].startswith("unsupported URL scheme 'ftp'")
    assert got[4]["error_message"].startswith("unsupported URL scheme 'file'")
    assert got[5]["status"] == "failed_to_download"
    # URLs that urlsplit refuses (unbalanced brackets, a bracketed host that is no address).
    assert [(r["status"], r["error_type"], r["error_message"]) for r in got[6:]] == [
        ("failed_to_download", "invalid_url", "invalid URL: Invalid IPv6 URL"),
        ("failed_to_download", "invalid_url", "invalid URL: Invalid IPv6 URL"),
        ("failed_to_download", "invalid_url", "invalid URL: 'zz' does not appear to be an IPv4 or IPv6 address")]
    assert read_stats(out)["00000_stats.json"]["error_types"]["invalid_url"] == 3


def test_a_binary_url_column_is_read_as_text(tmp_path, http_server):
    """Common in real parquet files: URLs typed binary, holding UTF-8 (or, in a bad row, not)."""
    urls = [http_server.url("/allowed/64_64.jpg").encode(), http_server.url("/allowed/\xff.jpg").encode("latin-1")]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": pa.array(urls, pa.binary())}), path)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "parquet", "--output_folder", str(out),
               "--thread_count", "4") == 0
    got = read_metadata(out)
    assert [(r["url"], r["status"], r["error_type"]) for r in got] == [
        (urls[0].decode(), "success", None),
        (http_server.url("/allowed/\\xff.jpg"), "failed_to_download", "invalid_url")]


def test_a_binary_caption_column_is_read_as_text(tmp_path, http_server):
    """Captions typed binary hold UTF-8: stored as text, never as the b'...' repr; one that is not
    UTF-8 fails its row, as an archive's caption member does."""
    url = http_server.url("/allowed/64_64.jpg")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": [url, url], "caption": pa.array(["café".encode(), b"caf\xe9"], pa.binary())}), path)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "parquet", "--caption_col", "caption",
               "--output_folder", str(out), "--output_format", "webdataset", "--thread_count", "4") == 0
    assert [(r["caption"], r["status"], r["error_type"], r["error_message"]) for r in read_metadata(out)] == [
        ("café", "success", None, None),
        (None, "failed_to_download", "parquet.invalid_caption", "caption is not UTF-8 text")]
    (sample,) = wds.WebDataset(str(out / "00000.tar"), shardshuffle=False)
    assert sample["txt"] == "café".encode()


def test_python_api_and_yaml_config(tmp_path, csv_input):
    out = tmp_path / "api"
    summary = any2ds.download(url_list=str(csv_input), input_format="csv", output_folder=str(out), allow_private_networks=True,
                              output_format="dummy", thread_count=4, image_size=32)
    assert summary["count"] == len(IMAGES) + 3 and summary["successes"] == len(IMAGES)
    config = tmp_path / "run.yaml"
    config.write_text(f"url_list: {csv_input}\ninput_format: csv\noutput_folder: {tmp_path / 'yaml'}\n"
                      "output_format: files\nimage_size: 32\nresize_mode: keep_ratio\nthread_count: 4\n")
    assert run("--config", str(config)) == 0
    widths = {r["width"] for r in read_metadata(tmp_path / "yaml") if r["status"] == "success"}
    assert 32 in widths


def test_incremental_resume_redoes_only_unfinished_shards(tmp_path, csv_input):
    out = tmp_path / "out"
    args = ["--url_list", str(csv_input), "--input_format", "csv", "--output_folder", str(out),
            "--output_format", "webdataset", "--number_sample_per_shard", "5", "--thread_count", "4"]
    assert run(*args) == 0
    first = read_stats(out)
    assert len(first) == 3
    # Simulate a crash in shard 1: its stats are gone and its tar is truncated.
    (out / "00001_stats.json").unlink()
    (out / "00001.tar").write_bytes(b"partial")
    (out / "_tmp" / "00001-dead").mkdir(parents=True)
    assert run(*args) == 0
    second = read_stats(out)
    assert second["00000_stats.json"] == first["00000_stats.json"]  # untouched
    assert second["00001_stats.json"]["start_time"] > first["00001_stats.json"]["start_time"]
    assert len(list(wds.WebDataset(str(out / "00001.tar"), shardshuffle=False))) > 0
    assert not (out / "_tmp").exists()
    keys = [r["key"] for r in read_metadata(out)]
    assert len(keys) == len(set(keys)) == len(IMAGES) + 3


def test_overwrite_and_extend_modes(tmp_path, csv_input):
    out = tmp_path / "out"
    base = ["--url_list", str(csv_input), "--input_format", "csv", "--output_folder", str(out),
            "--output_format", "dummy", "--number_sample_per_shard", "10", "--thread_count", "4"]
    assert run(*base) == 0
    (out / "stray.txt").write_text("from an older run")
    assert run(*base, "--incremental_mode", "overwrite") == 0
    assert sorted(os.listdir(out)) == ["00000_stats.json", "00001_stats.json", "_any2ds"]
    assert run(*base, "--incremental_mode", "extend") == 0
    assert sorted(read_stats(out)) == [f"0000{i}_stats.json" for i in range(4)]


def test_resume_with_other_sharding_options_is_refused(tmp_path, csv_input):
    out = tmp_path / "out"
    base = ["--url_list", str(csv_input), "--input_format", "csv", "--output_folder", str(out),
            "--output_format", "dummy", "--thread_count", "4"]
    assert run(*base, "--number_sample_per_shard", "10") == 0
    assert run(*base, "--number_sample_per_shard", "5") == 2


def test_resume_from_an_input_that_changed_is_refused(tmp_path, http_server, capfd):
    """The same path, other contents (a row put first): the rerun would store one row twice and
    lose another. Files added after the recorded ones are new shards, not a change."""
    folder = tmp_path / "lists"
    folder.mkdir()
    urls = [http_server.url(f"/allowed/{name}") for name in IMAGES]
    (folder / "a.txt").write_text("".join(url + "\n" for url in urls))
    out = tmp_path / "out"
    base = ["--url_list", str(folder), "--input_format", "txt", "--output_folder", str(out), "--output_format",
            "dummy", "--number_sample_per_shard", "3"]
    assert run(*base) == 0
    (folder / "b.txt").write_text(urls[0] + "\n")
    assert run(*base) == 0  # b.txt sorts after a.txt: its row is one more shard
    assert sum(stats["count"] for stats in read_stats(out).values()) == len(IMAGES) + 1
    (folder / "a.txt").write_text("".join(url + "\n" for url in [urls[-1], *urls]))
    capfd.readouterr()
    assert run(*base) == 2
    assert f"changed since output_folder {str(out)!r} was made from it (a.txt: " in capfd.readouterr().err
    (folder / "a.txt").write_text("".join(url + "\n" for url in urls))
    (folder / "0.txt").write_text(urls[0] + "\n")
    assert run(*base) == 2
    assert "(0.txt now comes before a.txt)" in capfd.readouterr().err


def test_interrupted_run_resumes_to_a_complete_dataset(tmp_path, http_server):
    """SIGKILL a real run mid-way, rerun: every shard present once, every tar readable."""
    cmd, out = long_run(tmp_path, http_server, rows=400)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    wait_for_shards(out, proc, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(glob.glob(f"{out}/*_stats.json")) < 20, "the run finished before it could be interrupted"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert_complete_webdataset(out, shards=20, rows=400)



def _children(pid: int) -> list[int]:
    return [int(child) for task in os.listdir(f"/proc/{pid}/task")
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie no longer does: a re-parented one may wait long to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sent, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)])
def test_a_run_killed_or_terminated_leaves_no_worker_behind(tmp_path, http_server, sent, code):
    """SIGTERM (timeout, docker stop, Kubernetes, Slurm) stops a run as Ctrl-C does; after a
    SIGKILL of the main process its workers exit too, instead of writing on into the folder."""
    cmd, out = long_run(tmp_path, http_server, rows=400)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_shards(out, proc, 1)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the run's workers are not there"
    proc.send_signal(sent)
    assert proc.wait(timeout=60) == code
    summary = json.loads((out / "_any2ds" / "run_summary.json").read_text())
    if sent == signal.SIGTERM:
        assert "any2ds: terminated; finished shards are kept" in proc.stderr.read()
        assert (summary["state"], summary["stop_reason"]) == ("stopped", "terminated")
    else:  # nothing ran to say so
        assert summary["state"] == "running"
    assert wait_until(lambda: not any(map(_running, workers)), 30), "a worker outlived its run"
    done = len(glob.glob(f"{out}/*_stats.json"))
    time.sleep(1)
    assert len(glob.glob(f"{out}/*_stats.json")) == done < 20

@pytest.mark.parametrize("args, message", [
    (["--url_list", "/nonexistent/list.txt"], "url_list '/nonexistent/list.txt' does not exist"),
    (["--input_format", "xml"], "input_format: unknown reader 'xml'"),
    (["--output_format", "webdatset"], "did you mean 'webdataset'?"),
    (["--url_col", "URL"], "column(s) 'URL' not found"),
    (["--image_size", "big"], "image_size"),
    (["--resize_mode", "squash"], "resize_mode"),
    (["--thread_count", "0"], "thread_count must be at least 1"),
    (["--imag_size", "3"], "did you mean 'image_size'?"),
])
def test_bad_config_is_one_clear_line(tmp_path, csv_input, args, message):
    base = {"--url_list": str(csv_input), "--input_format": "csv", "--output_folder": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = [x for kv in base.items() for x in kv]
    proc = subprocess.run([sys.executable, "-m", "any2ds", "download", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert message in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused at startup: no folder left looking like a run




def test_an_output_folder_that_cannot_be_one_is_one_clear_line(tmp_path):
    """A file given as output_folder, or a path through one: download and plan say so in one
    line, at startup, not with a traceback once the run starts writing."""
    urls = tmp_path / "list.txt"
    urls.write_text("http://example.com/a.jpg\n")
    for folder in (urls, urls / "sub"):
        for command in ("download", "plan"):
            proc = subprocess.run([sys.executable, "-m", "any2ds", command, "--url_list", str(urls),
                                   "--output_folder", str(folder)], capture_output=True, text=True)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr == f"any2ds: error: output_folder {str(folder)!r}: {str(urls)!r} is a file, not a folder\n"

def test_overwrite_refuses_an_input_inside_the_output_folder(tmp_path):
    """overwrite deletes the output folder first: an input list inside it would be deleted
    unread (img2dataset's users keep lists beside their shards)."""
    out = tmp_path / "out"
    out.mkdir()
    urls = out / "list.txt"
    urls.write_text("http://example.com/a.jpg\n")
    for url_list in (urls, out):
        proc = subprocess.run([sys.executable, "-m", "any2ds", "download", "--url_list", str(url_list),
                               "--output_folder", str(out), "--incremental_mode", "overwrite"],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "is inside output_folder" in proc.stderr and "overwrite deletes first" in proc.stderr
        assert urls.read_text() == "http://example.com/a.jpg\n"

def test_console_script_and_help_list_plugin_options():
    proc = subprocess.run(["any2ds", "download", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--url_list", "--image_size", "--resize_mode", "--timeout", "--compute_hash", "--output_format",
                 "--user_agent_token", "--disallowed_header_directives", "--encode_quality"):
        assert flag in proc.stdout
    assert "processor image" in proc.stdout


CRASH_ONCE_PLUGIN = '''
import os
from pathlib import Path
from any2ds import Processor, hookimpl

MARKER = Path(os.environ["ANY2DS_TEST_MARKER"])


class CrashOnce(Processor):
    """Kills its worker process the first time it sees row 0 of shard 1."""

    name = "crash_once"

    def process(self, fetched, result):
        if result.sample.shard_id == 1 and result.sample.index == 0 and not MARKER.exists():
            MARKER.write_text("crashed")
            os._exit(1)


@hookimpl
def any2ds_register_processors(register):
    register(CrashOnce)
'''


def test_shard_whose_worker_dies_is_retried(tmp_path, csv_input, monkeypatch):
    plugin = tmp_path / "crash_once.py"
    plugin.write_text(CRASH_ONCE_PLUGIN)
    monkeypatch.setenv("ANY2DS_TEST_MARKER", str(tmp_path / "crashed"))
    out = tmp_path / "out"
    summary = any2ds.download(url_list=str(csv_input), input_format="csv", output_folder=str(out), allow_private_networks=True,
                              output_format="webdataset", number_sample_per_shard=5, thread_count=4,
                              plugins=[str(plugin)], processors=["image", "crash_once"])
    assert (tmp_path / "crashed").exists()
    assert summary["shards_failed"] == [] and summary["state"] == "done"
    assert sorted(read_stats(out)) == ["00000_stats.json", "00001_stats.json", "00002_stats.json"]
    assert len(read_metadata(out)) == len(IMAGES) + 3


def test_shard_failing_every_retry_is_reported(tmp_path, csv_input, monkeypatch):
    plugin = tmp_path / "crash_always.py"
    plugin.write_text(CRASH_ONCE_PLUGIN.replace("and not MARKER.exists()", ""))
    monkeypatch.setenv("ANY2DS_TEST_MARKER", str(tmp_path / "crashed"))
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(f"url_list: {csv_input}\ninput_format: csv\noutput_folder: {out}\n"
                      f"output_format: dummy\nnumber_sample_per_shard: 5\nthread_count: 4\nmax_shard_retry: 2\n"
                      f"plugins: [{plugin}]\nprocessors: [image, crash_once]\n")
    assert run("--config", str(config)) == 1
    summary = json.loads((out / "_any2ds" / "run_summary.json").read_text())
    assert summary["shards_failed"] == [1] and summary["state"] == "failed_shards"
    assert sorted(read_stats(out)) == ["00000_stats.json", "00002_stats.json"]


def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(tmp_path, http_server):
    cmd, out = long_run(tmp_path, http_server, rows=300)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_shards(out, proc, 1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("any2ds: interrupted; finished shards are kept. "
                                            "Run the same command again to resume.")
    assert "Traceback" not in err
    assert len(glob.glob(f"{out}/*_stats.json")) < 15
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert_complete_webdataset(out, shards=15, rows=300)


def test_s3_output_through_fsspec_and_resume(tmp_path, csv_input, s3_bucket):
    fs, bucket = s3_bucket
    out = f"s3://{bucket}/dataset"
    args = ["--url_list", str(csv_input), "--input_format", "csv", "--caption_col", "caption",
            "--output_folder", out, "--output_format", "webdataset", "--number_sample_per_shard", "5",
            "--thread_count", "4"]
    assert run(*args) == 0
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/dataset"))
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar",
                     "00001_stats.json", "00002.parquet", "00002.tar", "00002_stats.json", "_any2ds"]
    fs.rm(f"{bucket}/dataset/00001_stats.json")
    assert run(*args) == 0
    fs.invalidate_cache()
    local = tmp_path / "copy"
    fs.get(f"{bucket}/dataset/", str(local), recursive=True)
    samples = list(wds.WebDataset(sorted(str(p) for p in local.glob("*.tar")), shardshuffle=False))
    assert len(samples) == len(IMAGES)
    assert len(read_metadata(local)) == len(IMAGES) + 3
    assert not fs.exists(f"{bucket}/dataset/_tmp")


@pytest.mark.parametrize("output_format", ["webdataset", "files"])
def test_an_s3_commit_reads_no_shard_file_back(csv_input, s3_bucket, s3_endpoint, output_format):
    """Each shard file (a tar, or each file of a folder) is hashed as it is written: reading it back
    at the commit would move every shard across the network a second time. The hashes in the stats
    are the committed files'."""
    fs, bucket = s3_bucket
    with moto_recording(s3_endpoint) as requests:
        assert run("--url_list", str(csv_input), "--input_format", "csv", "--output_folder", f"s3://{bucket}/out",
                   "--output_format", output_format, "--number_sample_per_shard", "5", "--thread_count", "4") == 0
    in_tmp = [(method, path) for method, url in requests if "/_tmp/" in (path := urlsplit(url).path)]
    written = {"webdataset": {"tar", "parquet"}, "files": {"jpg", "json", "parquet"}}[output_format]
    assert {path.rsplit(".", 1)[-1] for method, path in in_tmp if method == "PUT"} >= written  # logged
    assert [path for method, path in in_tmp if method == "GET"] == []  # no object read back (listings aside)
    fs.invalidate_cache()
    for stats_path in fs.glob(f"{bucket}/out/*_stats.json"):
        files = json.loads(fs.cat(stats_path))["files"]
        shard = stats_path.rsplit("/", 1)[1].removesuffix("_stats.json")
        committed = [name for path in fs.find(f"{bucket}/out") if (name := path.removeprefix(f"{bucket}/out/"))
                     .startswith((f"{shard}.", f"{shard}/")) and not name.endswith("_stats.json")]
        assert sorted(files) == sorted(committed)  # every file of the shard (the folder's too), nothing else
        assert {name.rsplit(".", 1)[-1] for name in files} == written
        for name, digest in files.items():
            assert hashlib.sha256(fs.cat(f"{bucket}/out/{name}")).hexdigest() == digest


HANG_PLUGIN = '''
import time
from any2ds import Processor, hookimpl


class Hang(Processor):
    """Never returns for row 1 of every shard: a plugin bug the watchdog must contain."""

    name = "hang"

    def process(self, fetched, result):
        if result.sample.index == 1:
            time.sleep(3600)


@hookimpl
def any2ds_register_processors(register):
    register(Hang)
'''


def test_watchdog_fails_stuck_samples_and_the_shard_completes(tmp_path, csv_input):
    plugin = tmp_path / "hang.py"
    plugin.write_text(HANG_PLUGIN)
    out = tmp_path / "out"
    start = time.monotonic()
    summary = any2ds.download(url_list=str(csv_input), input_format="csv", output_folder=str(out), allow_private_networks=True,
                              output_format="webdataset", number_sample_per_shard=5, thread_count=2,
                              processing_threads=2, plugins=[str(plugin)], processors=["image", "hang"],
                              sample_timeout=2)
    assert time.monotonic() - start < 60
    # Row 1 of shards 0 and 1 hang; row 1 of shard 2 is the 404, which never reaches processors.
    assert summary["state"] == "done" and summary["error_types"].get("watchdog") == 2
    rows = read_metadata(out)
    assert len(rows) == len(IMAGES) + 3
    stuck = [r for r in rows if r["error_type"] == "watchdog"]
    assert [r["key"] for r in stuck] == ["000001", "000011"]
    assert stuck[0]["error_message"] == "sample did not finish within sample_timeout=2 s"


PAIRS_PLUGIN = '''
import threading
from any2ds import Processor, hookimpl

# Each sample waits here for another one: samples pass only while two are processed at once.
BOTH = threading.Barrier(2, timeout=20)


class Pairs(Processor):
    name = "pairs"

    def process(self, fetched, result):
        BOTH.wait()


@hookimpl
def any2ds_register_processors(register):
    register(Pairs)
'''


def test_a_lone_shard_gets_the_cores_of_the_processes_left_without_one(tmp_path, http_server, monkeypatch):
    """One shard, two processes: the shard's worker may process on every core (4 here, as the main
    process counts them), not on its half; with one processing thread the pairs could never meet."""
    monkeypatch.setattr("os.cpu_count", lambda: 4)  # read by the main process, which shares the cores
    plugin = tmp_path / "pairs.py"
    plugin.write_text(PAIRS_PLUGIN)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(http_server.url(f"/allowed/{name}") + "\n" for name in IMAGES[:8]))  # 8 URLs, 4 pairs
    out = tmp_path / "out"
    summary = any2ds.download(url_list=str(urls), output_folder=str(out), allow_private_networks=True,
                              output_format="webdataset", processes_count=2, thread_count=4, image_size=32,
                              plugins=[str(plugin)], processors=["image", "pairs"])
    assert summary["successes"] == 8, summary["error_types"]


def test_download_takes_img2dataset_positional_arguments(tmp_path, csv_input):
    out = tmp_path / "out"
    # img2dataset's order: url_list, image_size, output_folder, processes_count, resize_mode, ...
    summary = any2ds.download(str(csv_input), 32, str(out), 1, "keep_ratio", input_format="csv",
                              output_format="files", thread_count=4, allow_private_networks=True)
    assert summary["successes"] == len(IMAGES)
    assert {min(r["width"], r["height"]) for r in read_metadata(out) if r["status"] == "success"} == {32}
    with pytest.raises(TypeError, match="multiple values for argument 'image_size'"):
        any2ds.download(str(csv_input), 32, image_size=64)


def test_print_config_shows_the_resolved_options(tmp_path):
    proc = subprocess.run(["any2ds", "download", "--url_list", "urls.txt", "--resize_only_if_bigger",
                           "--save_additional_columns", "[a,b]", "--print_config"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "resize_only_if_bigger: true" in proc.stdout and "- a\n- b" in proc.stdout


# --- drop-in details found by running img2dataset 1.47.0's own tests against any2ds ------------


def test_txt_input_has_no_caption_even_with_caption_col(tmp_path, http_server):
    """img2dataset reads only the URL from txt: no caption column, no caption in the sidecars."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(http_server.url(f"/allowed/{name}") + "\n" for name in IMAGES[:3]))
    out = tmp_path / "out"
    assert run("--url_list", str(urls), "--caption_col", "caption", "--save_additional_columns", '["extra"]',
               "--output_folder", str(out), "--thread_count", "2") == 0
    schema = pq.read_schema(out / "00000.parquet")
    assert schema.names[:2] == ["url", "key"] and "caption" not in schema.names and "extra" not in schema.names
    sidecars = [json.loads(p.read_text()) for p in sorted((out / "00000").glob("*.json"))]
    assert len(sidecars) == 3 and all("caption" not in s for s in sidecars)
    assert not list((out / "00000").glob("*.txt"))


def test_top_level_json_files_are_all_shard_stats(tmp_path, csv_input):
    """img2dataset's resume parses every <out>/*.json as <shard>_stats.json (int(prefix))."""
    out = tmp_path / "out"
    assert run("--url_list", str(csv_input), "--input_format", "csv", "--output_folder", str(out),
               "--number_sample_per_shard", "5", "--thread_count", "4") == 0
    prefixes = [Path(p).name.split("_")[0] for p in glob.glob(f"{out}/*.json")]
    assert len(prefixes) == 3 and all(int(prefix) in (0, 1, 2) for prefix in prefixes)
    assert json.loads((out / "_any2ds" / "run_summary.json").read_text())["state"] == "done"


def test_verified_hash_column_stands_where_img2dataset_puts_it(tmp_path, http_server, image_dir):
    import hashlib

    rows = [{"url": http_server.url(f"/allowed/{name}"), "caption": f"c{i}", "expected": None if i else
             hashlib.sha256((image_dir / name).read_bytes()).hexdigest()} for i, name in enumerate(IMAGES[:2])]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "parquet", "--caption_col", "caption",
               "--verify_hash", '["expected", "sha256"]', "--output_folder", str(out), "--thread_count", "2") == 0
    schema = pq.read_schema(out / "00000.parquet")
    assert schema.names == ["caption", "sha256", "url", "key", "status", "error_message", "error_type", "width",
                            "height", "original_width", "original_height", "exif"]
    rows_out = pq.read_table(out / "00000.parquet").to_pylist()
    assert [r["status"] for r in rows_out] == ["success", "success"]
    assert rows_out[0]["sha256"] == rows[0]["expected"]
