"""``any2ds plan``: what a download would do, fetching and writing nothing."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def test_plan_reads_the_input_fetches_nothing_and_prints_the_command_that_resumes(tmp_path, http_server):
    names = ["64_64.jpg", "800_600.jpg", "1000_100.jpg"]
    for part, count in (("a", 25), ("b", 7)):
        urls = [http_server.url(f"/allowed/{names[i % 3]}") for i in range(count)]
        pq.write_table(pa.table({"url": urls}), tmp_path / f"{part}.parquet")
    out = tmp_path / "out"
    flags = ["--url_list", str(tmp_path), "--input_format", "parquet", "--output_folder", str(out),
             "--number_sample_per_shard", "10", "--allow_private_networks", "true", "--processes_count", "1"]

    def plan() -> dict[str, str]:
        requests = len(http_server.requests)
        result = subprocess.run([sys.executable, "-m", "any2ds", "plan", *flags], cwd=REPO, capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert len(http_server.requests) == requests, "plan fetched something"
        return dict(line.split(None, 1) for line in result.stdout.splitlines())

    fresh = plan()
    assert not out.exists(), "plan wrote something"
    assert fresh["input"] == "2 parquet file(s)" and fresh["rows"] == "32 to run"
    assert fresh["shards"] == "4 to run (00000..00003), 0 already done"  # a.parquet's 3 shards, b.parquet's 1
    assert re.match(r".* \(files\): about \d+\.\d KiB; assuming every sample succeeds and stores 24\.3 KiB "
                    r"\(image: jpg of 65,536 pixels", fresh["output"]), fresh["output"]
    assert shlex.split(fresh["command"]) == ["any2ds", "download", *flags]

    # A job stopped after some shards: plan measures them and its command finishes the job.
    assert subprocess.run([sys.executable, "-m", "any2ds", "download", *flags, "--observers", "[]"], cwd=REPO,
                          check=False, timeout=240).returncode == 0
    for shard in ("00001", "00003"):
        (out / f"{shard}_stats.json").unlink()
    resumed = plan()
    assert resumed["rows"] == "17 to run"  # shard 1: 10 rows, shard 3 (b.parquet's): 7
    assert resumed["shards"] == "2 to run (00001..00003), 2 already done"
    assert "per row in the 2 shard(s) done" in resumed["output"]
    command = shlex.split(resumed["command"])
    assert subprocess.run([sys.executable, "-m", "any2ds", *command[1:]], cwd=REPO, check=False,
                          capture_output=True, timeout=240).returncode == 0
    summary = json.loads((out / "_any2ds" / "run_summary.json").read_text())
    assert (summary["shards_done"], summary["shards_skipped"], summary["count"]) == (2, 2, 17)
    assert plan()["shards"] == "0 to run, 4 already done"


def test_plan_refuses_a_bad_config_in_one_line(tmp_path):
    (tmp_path / "urls.txt").write_text("http://example.com/a.jpg\n")
    result = subprocess.run([sys.executable, "-m", "any2ds", "plan", "--url_list", str(tmp_path / "urls.txt"),
                             "--output_folder", str(tmp_path / "out"), "--processors", "[imgae]"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "imgae" in result.stderr


def test_a_missing_input_column_is_refused_before_anything_is_written(tmp_path):
    """A parquet file's row count is read from its footer, without its rows: plan and download
    still check its columns at startup, and neither leaves an output folder behind."""
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"URL": ["http://example.com/a.jpg"], "TEXT": ["a cat"]}), urls)
    for command in ("plan", "download"):
        result = subprocess.run([sys.executable, "-m", "any2ds", command, "--url_list", str(urls), "--input_format",
                                 "parquet", "--caption_col", "TEXT", "--output_folder", str(tmp_path / "out")],
                                cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "column(s) 'url' not found; its columns are: 'URL', 'TEXT'" in result.stderr
        assert not (tmp_path / "out").exists()
