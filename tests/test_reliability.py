"""Reliability: hostile input data, output safety, bounded memory, repeated crashes."""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

import any2ds
from any2ds.metadata import TRUNCATION_MARK
from tests.test_download import (
    assert_complete_webdataset,
    long_run,
    long_run_urls,
    read_metadata,
    run,
    wait_for_shards,
)

NASTY_TEXT = [
    "line one\nline two\r\nline three",
    "tab\there, quote \" and 'single', comma, semicolon;",
    "NUL \x00 in the middle",
    "emoji 🦊🖼️ and accents éàü and RTL שלום",
    "x" * 1_000_000,  # a huge value: cut to max_metadata_field_bytes
    "",
    "../../../etc/passwd",
    "<script>alert(1)</script> {\"json\": [1, 2]}",
]


def test_hostile_captions_and_columns_survive_unchanged(tmp_path, http_server):
    url = http_server.url("/allowed/64_64.jpg")
    rows = [{"url": url, "caption": text, "extra": text, "number": i} for i, text in enumerate(NASTY_TEXT)]
    rows.append({"url": url, "caption": None, "extra": None, "number": None})  # the same URL again, nulls
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["url", "caption", "extra", "number"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "csv", "--caption_col", "caption",
               "--save_additional_columns", '["extra", "number"]', "--output_folder", str(out),
               "--output_format", "webdataset", "--thread_count", "4") == 0
    metadata = read_metadata(out)
    assert len(metadata) == len(rows)
    assert [m["status"] for m in metadata] == ["success"] * len(rows)
    # CSV has no null string: an empty field reads back as "" (pyarrow's CSV convention). A value over
    # max_metadata_field_bytes (64 KiB) is cut, marked, the same way in the parquet, the json and the txt.
    assert [m["caption"] for m in metadata] == [bounded(r["caption"] or "") for r in rows]
    assert [m["extra"] for m in metadata] == [bounded(r["extra"] or "") for r in rows]
    samples = sorted(wds.WebDataset(str(out / "00000.tar"), shardshuffle=False), key=lambda s: s["__key__"])
    assert [s["txt"].decode("utf-8") for s in samples] == [bounded(r["caption"] or "") for r in rows]
    for sample, row in zip(samples, rows):
        assert json.loads(sample["json"])["extra"] == bounded(row["extra"] or "")


def bounded(text: str, cap: int = 64 * 1024) -> str:
    """A metadata text value as stored: cut to ``cap`` UTF-8 bytes, the truncation mark included."""
    if len(text.encode()) <= cap:
        return text
    return text.encode()[: cap - len(TRUNCATION_MARK)].decode(errors="ignore") + TRUNCATION_MARK


def test_json_input_with_odd_values_gives_valid_json_and_parquet(tmp_path, http_server):
    url = http_server.url("/allowed/64_64.jpg")
    rows = [{"url": url, "caption": text, "nested": {"a": [1, 2], "b": text}} for text in NASTY_TEXT[:4]]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "jsonl", "--caption_col", "caption",
               "--save_additional_columns", '["nested"]', "--output_folder", str(out), "--output_format", "files",
               "--thread_count", "4") == 0
    metadata = read_metadata(out)
    assert [m["nested"] for m in metadata] == [r["nested"] for r in rows]
    for sidecar in sorted((out / "00000").glob("*.json")):
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        assert record["nested"]["a"] == [1, 2]


def test_nothing_in_the_input_chooses_an_output_path(tmp_path, http_server):
    rows = [{"url": http_server.url("/allowed/64_64.jpg") + "?name=../../escape.jpg", "caption": "../../escape"},
            {"url": http_server.url("/allowed/%2e%2e/%2e%2e/etc/passwd"), "caption": "/etc/passwd"}]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "parquet", "--caption_col", "caption",
               "--output_folder", str(out), "--output_format", "files", "--processors", '["file"]',
               "--thread_count", "2") == 0
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert created == ["in.parquet", "out/00000.parquet", "out/00000/000000000.jpg", "out/00000/000000000.json",
                       "out/00000/000000000.txt", "out/00000_stats.json", "out/_any2ds/run_summary.json"]


UNSAFE_EXTENSION_PLUGIN = '''
from any2ds import Media, Processor, hookimpl


class Escape(Processor):
    name = "escape"

    def media_streams(self):
        return ["evil"]

    def process(self, fetched, result):
        result.media["evil"] = Media(fetched.body, "/../../escaped")


@hookimpl
def any2ds_register_processors(register):
    register(Escape)
'''


def test_a_plugin_cannot_write_outside_through_an_extension(tmp_path, http_server):
    plugin = tmp_path / "escape.py"
    plugin.write_text(UNSAFE_EXTENSION_PLUGIN)
    path = tmp_path / "in.txt"
    path.write_text(http_server.url("/allowed/64_64.jpg") + "\n")
    out = tmp_path / "out"
    any2ds.download(url_list=str(path), output_folder=str(out), output_format="files", processors=["escape"],
                    allow_private_networks=True,
                    plugins=[str(plugin)], thread_count=2)
    (row,) = read_metadata(out)
    assert row["status"] == "failed_to_process" and row["error_type"] == "unsafe_extension"
    assert not list(tmp_path.rglob("*escaped*"))


@pytest.mark.parametrize("name, content, input_format, message", [
    ("short.csv", "url,caption,extra\nhttp://a/1.jpg,one,1\nhttp://a/2.jpg\n", "csv", "short.csv"),
    ("ragged.csv", "url,caption\nhttp://a/1.jpg,one\nhttp://a/2.jpg,two,three\n", "csv", "ragged.csv"),
    ("picture.csv", None, "csv", "picture.csv"),
    ("garbage.json", "[{\"url\": \"http://a\"}, {oops", "json", "garbage.json"),
    ("garbage.jsonl", "{\"url\": \"http://a\"}\nnot json\n", "jsonl", "garbage.jsonl"),
    ("garbage.parquet", "this is not parquet", "parquet", "garbage.parquet"),
])
def test_malformed_input_is_one_clear_line(tmp_path, image_dir, name, content, input_format, message):
    path = tmp_path / name
    if content is None:
        path.write_bytes((image_dir / "64_64.jpg").read_bytes())
    else:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "any2ds", "download", "--url_list", str(path), "--input_format",
                           input_format, "--output_folder", str(tmp_path / "out"), "--thread_count", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_repeated_sigkill_at_random_points_then_resume(tmp_path, http_server):
    """Kill the whole run at random moments three times; the fourth run completes the dataset exactly."""
    rng = random.Random(1234)
    cmd, out = long_run(tmp_path, http_server, rows=500)
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_shards(out, proc, len(glob.glob(f"{out}/*_stats.json")) + 1)
        time.sleep(rng.uniform(0, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(glob.glob(f"{out}/*_stats.json")) < 25, "the runs finished before they could be interrupted"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert_complete_webdataset(out, shards=25, rows=500)
    metadata = read_metadata(out)
    assert len(metadata) == 500 and {m["status"] for m in metadata} == {"success"}
    assert [m["url"] for m in metadata] == long_run_urls(http_server, 500)


def test_duplicate_urls_each_keep_their_row(tmp_path, http_server):
    url = http_server.url("/allowed/64_64.jpg")
    path = tmp_path / "in.txt"
    path.write_text((url + "\n") * 30)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--output_folder", str(out), "--output_format", "dummy",
               "--thread_count", "8") == 0
    stats = json.loads(Path(out / "00000_stats.json").read_text())
    assert stats["count"] == 30 and stats["successes"] == 30


@pytest.mark.parametrize("blur", [False, True], ids=["shared_result", "shared_fetch"])
def test_duplicate_urls_are_fetched_once_per_shard(tmp_path, http_server, blur):
    """MS-COCO lists each image once per caption. Each URL is fetched once per shard; every row keeps
    its own key and caption. With no component reading per-row columns the result is shared too;
    with bbox_col (the image processor reads each row's boxes) each row is processed on its own."""
    names = ["64_64.jpg", "123_456.jpg", "alpha.png"]
    rows = [{"url": http_server.url(f"/allowed/{names[i % 3]}?duplicates-{blur}"), "caption": f"caption {i}",
             "boxes": [[0.0, 0.0, 0.5, 0.5]] if i % 2 else []} for i in range(24)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    options = ["--bbox_col", "boxes"] if blur else []
    assert run("--url_list", str(path), "--input_format", "parquet", "--caption_col", "caption",
               "--output_folder", str(out), "--output_format", "webdataset", "--number_sample_per_shard", "12",
               "--thread_count", "4", *options) == 0
    fetched = [path for path, _headers in http_server.requests if f"duplicates-{blur}" in path]
    assert len(fetched) == 3 * 2  # each URL once in each of the 2 shards
    metadata = sorted(read_metadata(out), key=lambda m: m["key"])
    assert [m["caption"] for m in metadata] == [row["caption"] for row in rows]
    assert [m["status"] for m in metadata] == ["success"] * len(rows)
    assert len({m["key"] for m in metadata}) == len(rows)
    samples = {s["__key__"]: s for s in wds.WebDataset([str(out / "00000.tar"), str(out / "00001.tar")],
                                                       shardshuffle=False)}
    assert sorted(samples) == [m["key"] for m in metadata]
    for row, m in zip(rows, metadata):
        sample = samples[m["key"]]
        assert sample["txt"].decode() == row["caption"] == json.loads(sample["json"])["caption"]
    by_url: dict[str, set[bytes]] = {}
    for row, m in zip(rows, metadata):
        by_url.setdefault((row["url"], bool(row["boxes"])), set()).add(samples[m["key"]]["jpg"])
    assert all(len(images) == 1 for images in by_url.values())  # the same URL (and boxes): the same image
    if blur:  # rows with boxes were blurred, the others not: processed per row
        assert by_url[(rows[0]["url"], False)] != by_url[(rows[3]["url"], True)]


def test_duplicate_urls_of_a_binary_column_are_fetched_once_per_shard(tmp_path, http_server):
    """Parquet files often type URLs binary: their duplicates are found as the samples read them."""
    urls = [http_server.url(f"/allowed/{name}?binary-duplicates") for name in ("64_64.jpg", "123_456.jpg")]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": pa.array([urls[i % 2].encode() for i in range(8)], pa.binary())}), path)
    out = tmp_path / "out"
    assert run("--url_list", str(path), "--input_format", "parquet", "--output_folder", str(out),
               "--output_format", "webdataset", "--thread_count", "4") == 0
    assert len([path for path, _headers in http_server.requests if "binary-duplicates" in path]) == 2
    assert [(m["url"], m["status"]) for m in sorted(read_metadata(out), key=lambda m: m["key"])] == [
        (urls[i % 2], "success") for i in range(8)]


@pytest.mark.parametrize("name, content, input_format", [
    ("empty.jsonl", "", "jsonl"), ("empty.json", "[]", "json"), ("empty.txt", "", "txt"),
    ("header_only.csv", "url,caption\n", "csv"),
])
def test_an_empty_input_file_is_zero_rows(tmp_path, name, content, input_format):
    path = tmp_path / name
    path.write_text(content)
    summary = any2ds.download(url_list=str(path), input_format=input_format, output_folder=str(tmp_path / "out"),
                              thread_count=2)
    assert summary["count"] == 0 and summary["state"] == "done"
