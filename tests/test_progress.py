"""What users see while a run goes: live counts from the workers, the bar on a terminal, log lines
when piped, and the DNS warning."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from any2ds import Observer, RunProgress, ShardProgress, ShardStats, hookimpl
from any2ds.progress import ProgressTracker, ShardReporter
from any2ds.sharding import ShardCutter, counted_shards
from any2ds.testing import download_in_process, send_bytes, serve_directory
from any2ds.types import InputSource

from any2ds_plugins import multiprocessing as multiprocessing_distributor
from any2ds_plugins.readers.parquet import ParquetReader
from tests.polling import wait_until

REPO = Path(__file__).resolve().parent.parent
RESPONSE_SECONDS = 0.3


@pytest.fixture
def slow_server(image_dir):
    """Serves a picture under /slow/<n>.jpg after RESPONSE_SECONDS; /slow/missing<n>.jpg is a 404."""
    body = (image_dir / "64_64.jpg").read_bytes()

    def slow(request):
        time.sleep(RESPONSE_SECONDS)
        if "missing" in request.path:
            request.send_error(404, "Not Found")
        else:
            send_bytes(request, body, "image/jpeg")

    with serve_directory(image_dir) as server:
        server.route("/slow/", slow)
        yield server


def slow_urls(server, path: Path, count: int) -> Path:
    """``count`` slow URLs, one in five missing."""
    path.write_text("".join(server.url(f"/slow/{'missing' if i % 5 == 0 else 'ok'}{i}.jpg") + "\n"
                            for i in range(count)))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "any2ds", "download", "--allow_private_networks", "true", *args]


# -- the tracker ---------------------------------------------------------------------------------


def stats(shard_id: int, count: int, successes: int, error_types: dict[str, int]) -> ShardStats:
    now = time.time()
    return ShardStats(shard_id, count, successes, {}, error_types, {"success": successes}, now, now)


def test_reports_count_until_the_outcome_replaces_them():
    tracker = ProgressTracker()
    tracker.set_totals(20, 2)
    tracker.report(ShardProgress(0))
    tracker.report(ShardProgress(1))
    tracker.report(ShardProgress(0, samples=3, successes=2, error_types={"dns": 1}))
    tracker.report(ShardProgress(1, samples=4, successes=4))
    live = tracker.snapshot()
    assert (live.samples, live.successes, dict(live.error_types)) == (7, 6, {"dns": 1})
    assert (live.shards_running, live.shards_done, live.rows_total, live.rows_total_final) == (2, 0, 20, True)

    tracker.shard_completed(stats(0, 10, 8, {"dns": 2}))
    tracker.report(ShardProgress(0, samples=5, successes=5))  # late: the outcome already counted it
    tracker.shard_failed(1)  # its samples will be counted again when it is retried
    after = tracker.snapshot()
    assert (after.samples, after.successes, dict(after.error_types)) == (10, 8, {"dns": 2})
    assert (after.shards_running, after.shards_done, after.shards_failed) == (0, 1, 1)
    assert after.success_rate == 0.8 and after.top_errors() == [("dns", 2)]
    assert after.eta is not None and after.eta > 0  # 10 of 20 rows left at a positive rate


def test_without_live_reports_counts_move_per_shard_and_running_is_unknown():
    tracker = ProgressTracker(live=False)
    tracker.shard_read(5)
    tracker.shard_read(3)
    first = tracker.snapshot()
    assert (first.samples, first.rows_total, first.rows_total_final, first.shards_running) == (0, 8, False, None)
    assert first.eta is None  # the total is still growing
    tracker.input_read()
    tracker.shard_completed(stats(0, 5, 5, {}))
    done = tracker.snapshot()
    assert (done.samples, done.rows_total, done.rows_total_final, done.shards_total) == (5, 8, True, 2)


def test_archives_have_shards_not_rows_and_an_eta_from_finished_shards():
    tracker = ProgressTracker(rows=False)
    tracker.set_totals(None, 4)
    tracker.shard_read(0)
    assert tracker.snapshot().rows_total is None and tracker.snapshot().eta is None
    tracker.shard_completed(stats(0, 100, 100, {}))
    progress = tracker.snapshot()
    assert (progress.rows_total, progress.shards_total, progress.samples) == (None, 4, 100)
    assert progress.eta is not None and progress.eta > 0  # about 300 samples to go


class Result:
    def __init__(self, ok: bool, error_type: str | None = None) -> None:
        self.ok, self.error_type = ok, error_type


def test_reporter_sends_the_start_the_first_sample_at_once_then_batches():
    sent: list[ShardProgress] = []
    reporter = ShardReporter(7, sent.append)
    assert sent == [ShardProgress(7)]
    reporter.add(Result(True))
    for _ in range(50):
        reporter.add(Result(False, "timeout"))
    assert sent[1] == ShardProgress(7, 1, 1, {})
    assert len(sent) == 2, "within half a second the others wait for the next report"
    time.sleep(0.6)
    reporter.add(Result(True))
    assert sent[2] == ShardProgress(7, 51, 1, {"timeout": 50})


def test_a_failing_channel_stops_reports_not_the_shard():
    calls = []

    def broken(update):
        calls.append(update)
        raise OSError("channel gone")

    reporter = ShardReporter(1, broken)
    reporter.add(Result(True))
    assert len(calls) == 1  # the start failed: no more tries

def test_the_receiver_stops_at_once_when_closed(monkeypatch):
    """close() wakes the receiving thread instead of waiting out its poll (here made a minute long)."""
    monkeypatch.setattr(multiprocessing_distributor, "RECEIVE_SECONDS", 60.0)
    received = []
    receiver = multiprocessing_distributor.ProgressReceiver.open(received.append)
    closing = threading.Thread(target=receiver.close)
    closing.start()
    closing.join(10)
    assert not closing.is_alive() and received == []



@pytest.mark.parametrize("sizes, per_shard, skip, first_id", [
    ([23, 7, 10], 5, set(), 0),
    ([23, 7, 10], 5, {0, 4, 6, 9}, 0),
    ([3, 0, 12], 4, {1}, 3),
    ([100], 1000, set(), 0),
])
def test_counted_shards_are_the_shards_the_cutter_cuts(tmp_path, sizes, per_shard, skip, first_id):
    sources = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"{index}.parquet"
        pq.write_table(pa.table({"url": [f"http://x/{index}/{i}" for i in range(size)]}), path)
        sources.append(InputSource(str(path), fsspec.filesystem("file")))
    reader = ParquetReader(None)
    cut = list(ShardCutter(reader, sources, ["url"], per_shard, skip, first_id))
    rows, ids = counted_shards(reader, sources, per_shard, skip, first_id)
    assert ids == [shard.shard_id for shard in cut]
    assert rows == sum(shard.rows.num_rows for shard in cut)


# -- live counts in a run ------------------------------------------------------------------------


class Recorder(Observer):
    """Keeps every progress snapshot and when each shard completed."""

    name = "recorder"
    seen: list[tuple[RunProgress, int]] = []

    def run_started(self, config):
        Recorder.seen = []
        self._completed = 0

    def progress(self, progress):
        Recorder.seen.append((progress, self._completed))

    def shard_completed(self, stats):
        self._completed += 1


class RecorderPlugin:
    @hookimpl
    def any2ds_register_observers(self, register):
        register(Recorder)


def test_in_process_counts_move_before_the_first_shard_ends(tmp_path, slow_server):
    urls = slow_urls(slow_server, tmp_path / "urls.txt", 12)
    summary = download_in_process(RecorderPlugin(), url_list=str(urls), output_folder=str(tmp_path / "out"),
                                  observers=["recorder"], thread_count=1, number_sample_per_shard=100,
                                  allow_private_networks=True)
    assert summary["count"] == 12
    during = [progress for progress, completed in Recorder.seen if completed == 0 and 0 < progress.samples < 12]
    assert during, [p.samples for p, _ in Recorder.seen]
    assert during[-1].shards_running == 1 and during[-1].rows_total == 12 and during[-1].rows_total_final
    last = Recorder.seen[-1][0]
    assert (last.samples, last.successes, dict(last.error_types)) == (12, 9, {"http_4xx": 3})


def test_piped_stderr_gets_log_lines_with_counts_from_running_shards(tmp_path, slow_server):
    """Multiprocessing: the worker's reports reach the main process while its shard runs."""
    urls = slow_urls(slow_server, tmp_path / "urls.txt", 30)
    result = subprocess.run(cli("--url_list", str(urls), "--output_folder", str(tmp_path / "out"),
                                "--thread_count", "2", "--number_sample_per_shard", "100",
                                "--progress_log_interval", "0.5"),
                            cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    shard_line = next(i for i, line in enumerate(lines) if line.startswith("shard 0 done"))
    live = [line for line in lines[:shard_line]
            if (m := re.match(r"progress: (\d+)/30 samples", line)) and 0 < int(m.group(1)) < 30]
    assert live, result.stderr
    assert re.search(r"samples/s · ETA \d+:\d\d · success \d+\.\d% · shards 0/1 done, 1 running · "
                     r"errors: http_4xx \d+\.\d%", live[-1]), live[-1]
    assert "\x1b[" not in result.stderr, "no terminal codes when piped"
    assert lines[-1].startswith("done: 30 samples in 1 shards, 24 successes (80.0%)")


def test_a_rerun_says_the_shards_an_earlier_run_did_were_skipped(tmp_path, http_server, capfd):
    """Rerunning a finished download (incremental_mode incremental) writes nothing; its last line
    says why, rather than only "0 samples in 0 shards"."""
    urls = tmp_path / "urls.txt"
    names = ("64_64.jpg", "123_456.jpg", "none.jpg")
    urls.write_text("".join(http_server.url(f"/allowed/{name}") + "\n" for name in names))
    options = {"url_list": str(urls), "output_folder": str(tmp_path / "out"), "number_sample_per_shard": 2,
               "allow_private_networks": True, "progress": "log"}
    download_in_process(**options)
    first = capfd.readouterr().err.splitlines()[-1]
    download_in_process(**options)
    again = capfd.readouterr().err.splitlines()[-1]
    assert first.startswith("done: 3 samples in 2 shards, 2 successes (66.7%)") and "skipped" not in first, first
    assert again.startswith("done: 0 samples in 0 shards") and again.endswith(
        "; 2 shards done by an earlier run, skipped"), again



def test_a_failed_shard_is_printed_in_every_progress_mode(tmp_path, capfd):
    """A shard that fails as a whole (here a truncated archive) is an error, not progress: even
    with ``progress none`` its cause reaches stderr, not only the exit status."""
    member = tmp_path / "a.txt"
    member.write_bytes(os.urandom(4096))
    archive = tmp_path / "in.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path), "a.txt"], check=True)
    archive.write_bytes(archive.read_bytes()[:1024])
    for mode in ("none", "log"):
        summary = download_in_process(url_list=str(archive), input_format="archive", progress=mode,
                                      output_folder=str(tmp_path / f"out-{mode}"))
        assert summary["shards_failed"] == [0]
        err = capfd.readouterr().err
        assert "shard 0 failed: ArchiveError: archive " in err and "truncated or corrupt" in err, err

def test_terminal_shows_a_live_bar_with_total_rate_and_eta(tmp_path, slow_server):
    """The CLI in a real pseudo-terminal (tmux): what the screen shows while the run goes."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (apt-get install tmux); .ci/run installs it")
    urls = slow_urls(slow_server, tmp_path / "urls.txt", 60)
    command = shlex.join(cli("--url_list", str(urls), "--output_folder", str(tmp_path / "out"),
                             "--thread_count", "2", "--number_sample_per_shard", "30"))
    server = ["-L", f"any2ds-test-{uuid.uuid4().hex[:8]}"]  # a tmux server of our own
    subprocess.run([tmux, *server, "new-session", "-d", "-x", "120", "-y", "12", "-c", str(REPO),
                    f"{command}; echo EXIT=$?; sleep 600"], check=True, env={**os.environ, "TERM": "xterm-256color"})
    screens: list[str] = []

    def exited() -> bool:  # every screen is kept: the bar shows only while the run goes on
        screens.append(subprocess.run([tmux, *server, "capture-pane", "-p"], capture_output=True, text=True,
                                      check=True).stdout)
        return "EXIT=" in screens[-1]

    try:
        wait_until(exited, 240, 0.3)
    finally:
        subprocess.run([tmux, *server, "kill-server"], check=False)
    assert "EXIT=0" in screens[-1], screens[-1]
    bar = re.compile(r"any2ds ━+\S* (\d+)/60 samples \(\d+\.\d%\) · (\d+\.\d) samples/s · ETA (\d+:\d\d)")
    running = [(screen, m) for screen in screens if "done:" not in screen and (m := bar.search(screen))
               and 0 < int(m.group(1)) < 60 and float(m.group(2)) > 0]
    assert running, "no screen showed the bar during the run:\n" + "\n---\n".join(screens[-3:])
    screen, _ = running[-1]
    assert re.search(r"success \d+\.\d% · shards \d/2 done, \d running · errors: http_4xx \d+\.\d%", screen), screen
    assert re.search(r"done: 60 samples in 2 shards, 48 successes", screens[-1]), screens[-1]


def test_frequent_dns_failures_print_one_warning(tmp_path, caplog):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"http://host-{i}.invalid/a.jpg\n" for i in range(120)))
    with caplog.at_level(logging.WARNING, logger="any2ds"):
        summary = download_in_process(url_list=str(urls), output_folder=str(tmp_path / "out"), timeout=2,
                                      retries=0, thread_count=128, observers=[])
    assert summary["error_types"] == {"dns": 120}
    warnings = [r.getMessage() for r in caplog.records if "dns" in r.getMessage()]
    assert len(warnings) == 1 and "100% of samples failed to resolve" in warnings[0]
    assert "see docs/tuning.md#dns" in warnings[0] and "## DNS" in (REPO / "docs" / "tuning.md").read_text()
    # One shard: its 20 most failing hosts (each failed once here).
    assert len(summary["failed_hosts"]) == 20 and all(v == {"dns": 1} for v in summary["failed_hosts"].values())


def test_a_log_line_reaches_stderr_in_one_write(monkeypatch):
    """A Ctrl-C between a line's text and its newline glued the CLI's "interrupted" message to the
    shard's line: each line is one write, its newline included."""
    from any2ds_plugins.progress import _print

    writes = []

    class Recording:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recording())
    _print("shard 0 done in 0.7s: 20/20 ok")
    assert writes == ["shard 0 done in 0.7s: 20/20 ok\n"]
