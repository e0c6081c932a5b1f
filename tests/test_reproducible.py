"""The same input and config give byte-identical shard files across runs, resumes and
distributors; every shard records the sha256 of its files and `any2ds verify` checks a copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import any2ds
from any2ds.cli import main
from any2ds.testing import download_in_process
from tests.test_download import IMAGES


def shard_files(out: Path) -> dict[str, dict[str, str]]:
    """Every shard's recorded {file: sha256}."""
    return {p.name: json.loads(p.read_text())["files"] for p in sorted(out.glob("*_stats.json"))}


@pytest.fixture
def url_list(tmp_path, http_server):
    # Images, failures (404, not an image, an opt-out) and a duplicate, over 3 shards.
    names = [*IMAGES, "missing.jpg", "not_an_image.jpg", *IMAGES[:3]]
    path = tmp_path / "urls.txt"
    path.write_text("".join(http_server.url(f"/allowed/{name}") + "\n" for name in names)
                    + http_server.url("/disallowed/64_64.jpg") + "\n")
    return path


@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "files", "tfrecord"])
def test_runs_resumes_and_distributors_write_the_same_bytes(tmp_path, url_list, output_format):
    if output_format == "tfrecord":
        pytest.importorskip("tensorflow")
    options = dict(url_list=str(url_list), output_format=output_format, number_sample_per_shard=6,
                   thread_count=8, allow_private_networks=True)
    first, second = tmp_path / "first", tmp_path / "second"
    # Worker processes cost seconds each: one format is enough to compare distributors.
    if output_format == "webdataset":
        any2ds.download(output_folder=str(first), processes_count=2, **options)
    else:
        download_in_process(output_folder=str(first), **options)
    download_in_process(output_folder=str(second), **{**options, "thread_count": 3})
    recorded = shard_files(first)
    assert len(recorded) == 3 and all(recorded.values())
    assert shard_files(second) == recorded, "runs with 8 and 3 threads (and distributors) differ"

    # A resume: shard 1 lost, redone by the next run, the same bytes again.
    for path in first.glob("00001*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    download_in_process(output_folder=str(first), **options)
    assert shard_files(first) == recorded

    summary = json.loads((first / "_any2ds" / "run_summary.json").read_text())
    assert sorted(summary["manifest"]) == ["00000", "00001", "00002"]
    assert main(["verify", str(first)]) == 0


def test_verify_finds_a_changed_a_missing_and_a_foreign_file(tmp_path, url_list, capsys):
    out = tmp_path / "out"
    download_in_process(url_list=str(url_list), output_folder=str(out), output_format="files",
                        number_sample_per_shard=6, allow_private_networks=True)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["verify", str(copy)]) == 0
    victim = next((copy / "00000").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    gone = next((copy / "00001").glob("*.json"))
    gone.unlink()
    stats = json.loads((copy / "00002_stats.json").read_text())
    stats["files"]["00002/extra.jpg"] = "0" * 64
    (copy / "00002_stats.json").write_text(json.dumps(stats))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    printed = capsys.readouterr().out
    assert f"00000/{victim.name}: sha256 differs" in printed
    assert f"00001/{gone.name}: missing" in printed
    assert "00002: its stats do not match the run summary's manifest" in printed
    assert main(["verify", str(tmp_path / "nothing")]) == 1


def test_verify_names_a_record_that_does_not_parse_and_checks_the_rest(tmp_path, url_list, capsys):
    out = tmp_path / "out"
    download_in_process(url_list=str(url_list), output_folder=str(out), output_format="files",
                        number_sample_per_shard=6, allow_private_networks=True)
    (out / "00000_stats.json").write_text("{bad")
    (out / "00001_stats.json").write_text("[1, 2]")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["00000: its 00000_stats.json is not a stats file (its JSON does not parse as one)",
                           "00001: its 00001_stats.json is not a stats file (its JSON does not parse as one)"]
    checked = len(json.loads((out / "00002_stats.json").read_text())["files"])
    assert printed[2:] == [f"{checked} files checked: 2 problem(s)"]
    (out / "_any2ds" / "run_summary.json").write_text("{x")
    assert main(["verify", str(out)]) == 1
    assert capsys.readouterr().out.startswith(
        "_any2ds/run_summary.json: not a run summary (its JSON does not parse as one)\n")
