"""``any2ds report`` on real outputs: downloads from 127.0.0.1 (images with 404s, a non-image and
an opt-out, from two host names; audio clips of known durations), finished, running and on S3;
the terminal text, the JSON and the HTML page drawn by headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from any2ds.cli import main
from any2ds.report.collect import ShardStatsFile, _throughput
from any2ds.testing import download_in_process, read_dataset, send_bytes, serve_directory
from tests.audio_files import encoded, signal

# (path on the test server, host name in the URL): 11 rows, 6 successes.
IMAGE_ROWS = [
    ("/allowed/123_456.jpg", "127.0.0.1"), ("/allowed/456_123.jpg", "127.0.0.1"),
    ("/allowed/missing.jpg", "127.0.0.1"), ("/allowed/300_500.jpg", "127.0.0.1"),
    ("/allowed/not_an_image.jpg", "127.0.0.1"), ("/disallowed/64_64.jpg", "127.0.0.1"),
    ("/allowed/64_64.jpg", "127.0.0.1"),
    ("/allowed/800_600.jpg", "localhost"), ("/allowed/gone.jpg", "localhost"),
    ("/allowed/1000_100.jpg", "localhost"), ("/allowed/lost.jpg", "localhost"),
]
SUCCESS_WIDTHS = [123, 456, 300, 64, 800, 1000]
SUCCESS_HEIGHTS = [456, 123, 500, 64, 600, 100]
CLIP_SECONDS = [1.0, 2.0, 3.0, 4.0, 5.0]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def report_json(folder: str, capsys) -> dict:
    assert main(["report", folder, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def nearest_rank(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def write_urls(path: Path, urls: list[str]) -> str:
    path.write_text("\n".join(urls) + "\n")
    return str(path)


def download_images(http_server, folder: Path | str, urls_file: Path, **options) -> None:
    urls = [f"http://{host}:{http_server.port}{path}" for path, host in IMAGE_ROWS]
    download_in_process(url_list=write_urls(urls_file, urls), output_folder=str(folder),
                        output_format="webdataset", number_sample_per_shard=4, resize_mode="no",
                        allow_private_networks=True, observers=[], **options)


@pytest.fixture(scope="module")
def image_output(http_server, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-images")
    download_images(http_server, root / "out", root / "urls.txt")
    return root / "out"


@pytest.fixture(scope="module")
def audio_output(tmp_path_factory) -> Path:
    """Stereo 44.1 kHz clips of 1 to 5 s (so that media outweighs metadata) and one non-audio file,
    in the parquet output, which keeps the media in the shard's own parquet."""
    root = tmp_path_factory.mktemp("report-audio")
    served = root / "served"
    served.mkdir()
    for seconds in CLIP_SECONDS:
        (served / f"clip_{seconds:g}.wav").write_bytes(encoded(signal(44100, 2, seconds=seconds), 44100, "WAV"))
    (served / "notes.txt").write_text("not audio")
    with serve_directory(served) as server:
        urls = [server.url(f"/allowed/{p.name}") for p in sorted(served.iterdir())]
        download_in_process(url_list=write_urls(root / "urls.txt", urls), output_folder=str(root / "out"),
                            processors=["audio"], output_format="parquet", allow_private_networks=True,
                            observers=[])
    return root / "out"


def expected_failures(folder: Path) -> tuple[Counter, Counter]:
    """Error classes and messages of the failed rows, read back with the writer."""
    failed = [row for row in read_dataset(folder).rows if row["status"] != "success"]
    return Counter(row["error_type"] for row in failed), Counter(row["error_message"] for row in failed)


def test_json_report_of_an_image_run(image_output, capsys):
    report = report_json(str(image_output), capsys)
    assert report["report_version"] == 1
    assert report["state"] == "done"
    assert report["shards"] == {"done": 3, "in_progress": 0, "failed": [], "with_metadata": 3}
    assert report["samples"] == {"count": 11, "successes": 6, "failures": 5, "success_rate": 6 / 11}
    assert sum(report["statuses"].values()) == 11 and report["statuses"]["success"] == 6
    classes, messages = expected_failures(image_output)
    assert report["error_types"] == dict(classes)
    assert list(report["error_types"].values()) == sorted(classes.values(), reverse=True)
    assert report["error_messages"] == {"distinct": len(messages), "top": dict(messages)}

    hosts = report["hosts"]
    assert (hosts["distinct"], hosts["failing"]) == (2, 2)
    first, second = hosts["top_failing"]
    assert (first["host"], first["count"], first["failures"]) == ("127.0.0.1", 7, 3)
    assert (second["host"], second["count"], second["failures"]) == ("localhost", 4, 2)
    assert second["failure_rate"] == 0.5
    assert sum(first["error_types"].values()) == 3 and len(first["error_types"]) == 3  # 404, decode, opt-out
    assert len(second["error_types"]) == 1  # two 404s

    width = report["distributions"]["width"]
    assert (width["count"], width["min"], width["max"]) == (6, 64, 1000)
    assert width["percentiles"] == {f"p{q}": nearest_rank(SUCCESS_WIDTHS, q) for q in (5, 25, 50, 75, 95)}
    assert width["mean"] == pytest.approx(sum(SUCCESS_WIDTHS) / 6)
    assert sum(width["histogram"]["counts"]) == 6
    assert len(width["histogram"]["edges"]) == len(width["histogram"]["counts"]) + 1
    assert report["distributions"]["height"]["percentiles"]["p50"] == nearest_rank(SUCCESS_HEIGHTS, 50)
    assert "duration" not in report["distributions"]

    files = [p for p in image_output.iterdir() if p.is_file()]
    assert report["output_bytes"]["total"] == sum(p.stat().st_size for p in files)
    assert report["output_bytes"]["by_kind"]["<shard>.tar"] == sum(p.stat().st_size for p in files
                                                                  if p.suffix == ".tar")
    assert report["output_bytes"]["per_success"] == pytest.approx(report["output_bytes"]["total"] / 6)

    stats = [json.loads(p.read_text()) for p in image_output.glob("*_stats.json")]
    throughput = report["throughput"]
    assert throughput["start_time"] == min(s["start_time"] for s in stats)
    assert throughput["end_time"] == pytest.approx(max(s["end_time"] for s in stats))
    series = throughput["series"]
    # Spread over time, the rates add back up to the counts.
    assert sum(series["samples_per_sec"]) * throughput["bin_seconds"] == pytest.approx(11)
    assert sum(series["successes_per_sec"]) * throughput["bin_seconds"] == pytest.approx(6)
    assert throughput["shard_seconds"]["count"] == 3
    assert report["warnings"] == []



def test_a_run_an_error_stops_is_reported_stopped_with_why(tmp_path, capsys, monkeypatch):
    """The second input file lacks the URL column (the first is checked at startup): the run
    stops there, and its summary and report say so rather than running for ever."""
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "a.csv").write_text("url\nhttp://127.0.0.1:9/a.jpg\n")
    (folder / "b.csv").write_text("link\nhttp://127.0.0.1:9/b.jpg\n")
    out = tmp_path / "out"
    assert main(["download", "--url_list", str(folder), "--input_format", "csv", "--output_folder", str(out),
                 "--distributor", "inprocess", "--progress", "none"]) == 2
    summary = json.loads((out / "_any2ds" / "run_summary.json").read_text())
    assert summary["state"] == "stopped"
    assert summary["stop_reason"].startswith(f"ConfigError: input file {folder / 'b.csv'}: column(s) 'url' not found")
    monkeypatch.setenv("COLUMNS", "300")
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert f"state: stopped (ConfigError: input file {folder / 'b.csv'}: column(s) 'url'" in capsys.readouterr().out

def test_terminal_report_of_an_image_run(image_output, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["report", str(image_output)]) == 0
    text = capsys.readouterr().out
    assert "state: done · shards: 3 done, 0 in progress, 0 failed" in text
    assert "samples: 11 · successes: 6 (54.5%) · failures: 5" in text
    classes, messages = expected_failures(image_output)
    for name, n in classes.items():
        assert re.search(rf"^ {re.escape(name)} +{n} +{n / 5:.1%}", text, re.MULTILINE), name
    for message, n in messages.items():
        assert re.search(rf"^ {re.escape(message)} +{n} ", text, re.MULTILINE), message
    assert "Top failing hosts (2 of 2 hosts have failures)" in text
    assert re.search(r"^ 127\.0\.0\.1 +7 +3 +42\.9% ", text, re.MULTILINE)
    assert re.search(r"^ localhost +4 +2 +50\.0% ", text, re.MULTILINE)
    widths = [nearest_rank(SUCCESS_WIDTHS, q) for q in (5, 25, 50, 75, 95)]
    assert re.search(r"^ width +6 +64 +" + " +".join(f"{w:,}" for w in widths) + r" +1,000 +457 ", text, re.MULTILINE)
    assert re.search(r"^samples/s [▁▂▃▄▅▆▇█]+ peak ", text, re.MULTILINE)
    assert re.search(r"^Output: [\d.]+ kB, ", text, re.MULTILINE)
    assert re.search(r"^ <shard>\.tar +[\d.]+ kB", text, re.MULTILINE)


def test_audio_durations_and_media_columns_left_unread(audio_output, capsys, monkeypatch):
    report = report_json(str(audio_output), capsys)
    assert report["samples"]["count"] == 6 and report["samples"]["successes"] == 5
    duration = report["distributions"]["duration"]
    assert (duration["count"], duration["min"], duration["max"]) == (5, 1.0, 5.0)
    assert duration["percentiles"] == {"p5": 1.0, "p25": 2.0, "p50": 3.0, "p75": 4.0, "p95": 5.0}
    assert duration["mean"] == pytest.approx(3.0)
    assert "width" not in report["distributions"]

    # The same report through a filesystem that counts what is read: the flac column stays unread.
    monkeypatch.setattr(ReadCountingFileSystem, "bytes_read", 0)
    fsspec.register_implementation("counted", ReadCountingFileSystem, clobber=True)
    counted = report_json(f"counted://{audio_output}", capsys)
    assert counted["distributions"] == report["distributions"]
    shard = audio_output / "00000.parquet"
    media = pq.ParquetFile(shard).metadata.row_group(0).column(len(pq.read_schema(shard)) - 1)
    assert media.path_in_schema == "flac" and media.total_compressed_size > 1_000_000
    assert 0 < ReadCountingFileSystem.bytes_read < shard.stat().st_size / 10


class ReadCountingFileSystem(LocalFileSystem):
    """The local disk under ``counted://``, counting the bytes read from it."""

    protocol = ("counted",)
    bytes_read = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("counted://"))

    def _open(self, path, mode="rb", **kwargs):
        file = super()._open(path, mode, **kwargs)
        read = file.read

        def counting_read(*args):
            data = read(*args)
            ReadCountingFileSystem.bytes_read += len(data)
            return data

        file.read = counting_read
        return file


def test_running_folder_is_reported_as_it_is(tmp_path, image_dir, capsys):
    """Shard 0 is done while shard 1 waits on a URL that answers only when the test says so (the
    shards run one after the other, in this process)."""
    arrived, release = threading.Event(), threading.Event()

    def held(request):
        arrived.set()
        release.wait(30)
        send_bytes(request, (image_dir / "64_64.jpg").read_bytes(), "image/jpeg")

    out = tmp_path / "out"
    with serve_directory(image_dir) as server:
        server.route("/held/", held)
        urls = [server.url("/allowed/123_456.jpg"), server.url("/allowed/missing.jpg"),
                server.url("/allowed/456_123.jpg"), server.url("/held/a.jpg")]
        run = threading.Thread(target=download_in_process, kwargs={
            "url_list": write_urls(tmp_path / "urls.txt", urls), "output_folder": str(out),
            "number_sample_per_shard": 2, "allow_private_networks": True, "observers": []})
        run.start()
        try:
            assert arrived.wait(30)  # shard 0 is committed and shard 1 is being written
            running = report_json(str(out), capsys)
            assert main(["report", str(out)]) == 0
            text = capsys.readouterr().out
        finally:
            release.set()
            run.join(60)
    assert running["state"] == "running"
    assert running["shards"]["done"] == 1 and running["shards"]["in_progress"] == 1
    assert running["samples"] == {"count": 2, "successes": 1, "failures": 1, "success_rate": 0.5}
    assert "state: running · shards: 1 done, 1 in progress, 0 failed · running for " in text
    done = report_json(str(out), capsys)
    assert done["state"] == "done" and done["shards"]["done"] == 2 and done["samples"]["count"] == 4


def test_folder_without_run_summary_is_read_from_its_shards(image_output, tmp_path, capsys):
    """img2dataset's outputs have no _any2ds/run_summary.json (nor error_type)."""
    copy = tmp_path / "copy"
    shutil.copytree(image_output, copy)
    shutil.rmtree(copy / "_any2ds")
    report = report_json(str(copy), capsys)
    assert report["state"] == "unknown"
    assert report["samples"]["count"] == 11 and report["hosts"]["top_failing"][0]["failures"] == 3


def test_report_of_an_s3_output(http_server, tmp_path, s3_bucket, capsys):
    fs, bucket = s3_bucket
    download_images(http_server, f"s3://{bucket}/out", tmp_path / "urls.txt")
    report = report_json(f"s3://{bucket}/out", capsys)
    assert report["shards"]["done"] == 3 and report["samples"]["successes"] == 6
    assert [h["failures"] for h in report["hosts"]["top_failing"]] == [3, 2]
    assert report["distributions"]["width"]["percentiles"]["p50"] == nearest_rank(SUCCESS_WIDTHS, 50)
    sizes = [fs.size(path) for path in fs.ls(f"{bucket}/out") if not path.endswith("_any2ds")]
    assert report["output_bytes"]["total"] == sum(sizes)


def test_not_an_output_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"any2ds: error: {tmp_path / 'nowhere'}: no such folder",
                     (f"any2ds: error: {tmp_path}: not an any2ds or img2dataset output folder "
                      "(no <shard>_stats.json and no _any2ds/run_summary.json)")]


# --- the HTML page, drawn by Chromium ------------------------------------------------------------

BAR_LENGTHS = """id => Array.from(document.querySelectorAll(`#${id} .barlayer .point path`))
    .map(path => { const box = path.getBBox(); return Math.max(box.width, box.height) > 0 ?
                   (id.startsWith('distribution') ? box.height : box.width) : 0; })"""


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    with sync_api.sync_playwright() as playwright:
        # Debian's Chromium: Playwright never downloads a browser here.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def open_page(browser, path: Path):
    """The page loaded offline; returns it with the list of requests that left for a server."""
    page = browser.new_page()
    network, errors = [], []
    page.on("request", lambda request: network.append(request.url) if not request.url.startswith("file:") else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    return page, network, errors


def assert_bars_match(page, div_id: str, counts: list[float]) -> None:
    """The chart ``div_id`` draws one bar per count, its length proportional to the count."""
    lengths = page.evaluate(f"({BAR_LENGTHS})('{div_id}')")
    assert len(lengths) == len(counts), (div_id, lengths, counts)
    scale = max(lengths) / max(counts)
    assert lengths == pytest.approx([n * scale for n in counts], abs=1.5), (div_id, lengths, counts)


def test_html_page_draws_its_plots_offline(image_output, audio_output, tmp_path, browser, capsys):
    page_path = tmp_path / "report.html"
    assert main(["report", str(image_output), "--html", str(page_path)]) == 0
    assert "samples: 11" in capsys.readouterr().out  # the terminal summary too
    report = report_json(str(image_output), capsys)
    page, network, errors = open_page(browser, page_path)
    assert network == [] and errors == []

    series = report["throughput"]["series"]["samples_per_sec"]
    lines = page.evaluate("""Array.from(document.querySelectorAll('#throughput .scatterlayer .trace')).map(
        trace => [trace.querySelector('path.js-line').getAttribute('d') || '',
                  trace.querySelectorAll('.points path.point').length])""")
    assert len(lines) == 2  # samples/s and successes/s
    for path, markers in lines:
        assert markers == len(series)
        assert path.startswith("M") and (len(series) == 1 or "L" in path), path

    assert_bars_match(page, "error-classes", list(report["error_types"].values()))
    assert_bars_match(page, "host-failures", [h["failures"] for h in report["hosts"]["top_failing"]])
    hosts_top_down = page.evaluate("""Array.from(document.querySelectorAll('#host-failures .ytick text'))
        .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top).map(t => t.textContent)""")
    assert hosts_top_down == ["127.0.0.1", "localhost"]  # most failures first, as listed
    for name in ("width", "height", "original_width", "original_height"):
        assert_bars_match(page, f"distribution-{name}", report["distributions"][name]["histogram"]["counts"])
    numbers = page.evaluate("""Object.fromEntries(Array.from(document.querySelectorAll('#numbers div')).map(
        div => [div.lastChild.textContent, div.querySelector('b').textContent]))""")
    assert {k: numbers[k] for k in ("state", "shards done", "samples", "successes", "success rate")} == {
        "state": "done", "shards done": "3", "samples": "11", "successes": "6", "success rate": "54.5%"}
    assert page.locator("#hosts tr").count() == 3
    page.close()

    audio_page = tmp_path / "audio.html"
    assert main(["report", str(audio_output), "--html", str(audio_page), "--json"]) == 0
    audio = json.loads(capsys.readouterr().out)
    page, network, errors = open_page(browser, audio_page)
    assert network == [] and errors == []
    assert_bars_match(page, "distribution-duration", audio["distributions"]["duration"]["histogram"]["counts"])
    page.close()


@pytest.mark.parametrize("seconds, steps", [(3.01, 30), (0.05, 1), (0.1, 1), (600.0, 60)])
def test_throughput_steps_are_at_least_a_tenth_of_a_second(seconds, steps):
    shard = ShardStatsFile("00000", 10, 10, {"success": 10}, {}, {}, 100.0, 100.0 + seconds)
    throughput = _throughput([shard])
    assert len(throughput["series"]["start_time"]) == steps
    assert throughput["bin_seconds"] == pytest.approx(seconds / steps)
    assert sum(throughput["series"]["samples_per_sec"]) * throughput["bin_seconds"] == pytest.approx(10)
