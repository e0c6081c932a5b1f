"""End to end against a misbehaving server: each fault costs its sample only, within a bound set by ``timeout``.

Every test is a real run (a spawned worker, an http fetcher, the image
processor, the files writer) over a URL list mixing faults with good URLs,
and checks that every input row comes back exactly once with the right
status, error type and message. Time bounds are loose on purpose: they tell
"bounded by timeout" from "hangs", not fast from slow. Every test runs with each registered
fetcher claiming the http scheme.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import any2ds
from any2ds.cli import main
from any2ds.manager import PluginHost
from any2ds_plugins.http.deadline import REAPER_GRACE
from tests.fault_server import FaultServer

TIMEOUT = 2.0
# Spawning the worker and loading plugins take ~2 s; shared machines can be much slower.
STARTUP_ALLOWANCE = 20.0


class Outcome(NamedTuple):
    status: str
    error_type: str | None = None
    message: str | None = None  # the error message's start


SUCCESS = Outcome("success")
TIMED_OUT = Outcome("failed_to_download", "timeout", "timed out")
UNDECODABLE = Outcome("failed_to_resize", "decode", "Image decoding error")
BOMB = Outcome("failed_to_resize", "too_large", "image too large to decode (more than max_image_pixels=")
TOO_BIG = Outcome("failed_to_download", "too_large", "body larger than 67108864 bytes")
# img2dataset's (urllib's) words; newlines become spaces in error_message, as in every message.
TOO_MANY_REDIRECTS = Outcome("failed_to_download", "redirect", "HTTP Error 302: The HTTP server returned a redirect "
                             "error that would lead to an infinite loop. The last 30x error message was: Found")
HTTP_FETCHERS = [registration.cls.name for registration in PluginHost.load().registries["fetcher"].registrations()
                 if "http" in registration.cls.schemes]
FETCHER = "http"  # the fetcher under test, set for each test by the fetcher fixture


@pytest.fixture(scope="module", autouse=True, params=HTTP_FETCHERS)
def fetcher(request):
    """Module-scoped, so the tests run fetcher by fetcher, each with its own fault server (which counts hits)."""
    global FETCHER
    FETCHER = request.param
    return request.param


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment (workers inherit it)."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def fault_server(image_dir, fetcher):
    server = FaultServer((image_dir / "123_456.jpg").read_bytes())
    yield server
    server.close()


@pytest.fixture
def good_url(http_server):
    return http_server.url("/allowed/123_456.jpg")


def download(tmp_path: Path, urls: list[str], **options) -> tuple[list[dict], float]:
    """Run ``any2ds.download`` over ``urls``; return the metadata rows in input order and the run's seconds.

    Asserts that every input row comes back exactly once.
    """
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n", encoding="utf-8")
    options = {"thread_count": len(urls), "timeout": TIMEOUT, "allow_private_networks": True, "fetchers": [FETCHER],
               **options}
    start = time.monotonic()
    summary = any2ds.download(url_list=str(url_list), output_folder=str(tmp_path / "out"), **options)
    elapsed = time.monotonic() - start
    assert summary["state"] == "done"
    return metadata_in_input_order(tmp_path / "out", urls), elapsed


def metadata_in_input_order(out: Path, urls: list[str]) -> list[dict]:
    tables = [pq.read_table(path) for path in sorted(glob.glob(f"{out}/[0-9]*.parquet"))]
    rows = sorted(pa.concat_tables(tables).to_pylist(), key=lambda row: row["key"])
    assert len({row["key"] for row in rows}) == len(rows)
    assert [row["url"] for row in rows] == urls  # keys follow input order: each row once, none lost
    return rows


def check_outcomes(rows: list[dict], expected: list[Outcome]) -> None:
    """Every row's status, error type and message start, reported all at once when some differ."""
    wrong = []
    for row, outcome in zip(rows, expected, strict=True):
        got = (row["status"], row["error_type"], row["error_message"])
        message_ok = outcome.message is None or (row["error_message"] or "").startswith(outcome.message)
        if got[:2] != outcome[:2] or not message_ok:
            wrong.append(f"{row['url'][:100]}: got {got}, expected {tuple(outcome)}")
    assert not wrong, "\n".join(wrong)


def run_faults(tmp_path: Path, good_url: str, faults: dict[str, Outcome], **options) -> float:
    """One run over the ``faults`` URLs interleaved with good URLs; checks every row, returns the run's seconds."""
    urls, expected = [good_url], [SUCCESS]
    for url, outcome in faults.items():
        urls += [url, good_url]
        expected += [outcome, SUCCESS]
    rows, elapsed = download(tmp_path, urls, **options)
    check_outcomes(rows, expected)
    return elapsed


def test_broken_transfers_fail_within_the_deadline(tmp_path, fault_server, good_url, image_dir):
    on = fault_server.url
    size = len((image_dir / "123_456.jpg").read_bytes())
    over_deadline = Outcome("failed_to_download", "timeout", f"timed out (total deadline of {TIMEOUT} s)")
    faults = {
        on("/stall_headers/a"): TIMED_OUT,
        on("/stall_body/a"): TIMED_OUT,
        # Each byte arrives within any socket timeout; only the total deadline ends these two.
        on("/drip_headers/a"): over_deadline,
        on("/drip_body/a"): over_deadline,
        fault_server.tls_url("/a"): TIMED_OUT,  # a TLS handshake trickled byte by byte
        on("/short_body/a"): Outcome("failed_to_download", "connect",
                                     f"IncompleteRead({size // 2} bytes read, {size - size // 2} more expected)"),
        on("/reset_mid_body/a"): Outcome("failed_to_download", "connect",
                                         "[Errno 104] Connection reset by peer"),
        on("/close_without_response/a"): Outcome("failed_to_download", "connect",
                                                 "Remote end closed connection without response"),
        on("/endless_body/a"): TOO_BIG,
    }
    elapsed = run_faults(tmp_path, good_url, faults)
    assert elapsed < STARTUP_ALLOWANCE + 3 * TIMEOUT + REAPER_GRACE


def test_redirect_faults(tmp_path, fault_server, good_url):
    def redirect_to(target: str) -> str:
        return fault_server.url("/redirect?to=" + quote(target, safe=""))

    faults = {
        fault_server.url("/redirect_loop/a"): TOO_MANY_REDIRECTS,
        fault_server.url("/redirect_chain/30"): TOO_MANY_REDIRECTS,
        fault_server.url("/redirect_chain/5"): SUCCESS,
        redirect_to("ftp://127.0.0.1/image.jpg"): Outcome(
            "failed_to_download", "redirect", "redirect to unsupported URL scheme 'ftp'"),
        redirect_to("file:///etc/passwd"): Outcome(
            "failed_to_download", "redirect", "redirect to unsupported URL scheme 'file'"),
        # Loopback is allowed in these runs; link-local (cloud metadata) still is not.
        redirect_to("http://169.254.169.254/latest/meta-data/"): Outcome(
            "failed_to_download", "blocked",
            "blocked: 169.254.169.254 is a cloud metadata address (set allow_link_local to allow)"),
    }
    elapsed = run_faults(tmp_path, good_url, faults)
    assert elapsed < STARTUP_ALLOWANCE + 3 * TIMEOUT


def test_bodies_that_are_not_what_they_claim(tmp_path, fault_server, good_url):
    on = fault_server.url
    faults = {
        on("/html_as_jpeg/a"): UNDECODABLE,
        on("/empty_as_jpeg/a"): UNDECODABLE,
        on("/corrupt_jpeg/a"): UNDECODABLE,
        on("/bomb_header_png/a"): BOMB,
        on("/bomb_png/a"): BOMB,
        on("/gzip_image/a"): SUCCESS,
        on("/gzip_bomb/a"): TOO_BIG,
    }
    # Inflating the bomb to max_body_bytes is CPU work: on a loaded machine it can outlast a 2 s deadline.
    elapsed = run_faults(tmp_path, good_url, faults, timeout=5 * TIMEOUT)
    assert elapsed < STARTUP_ALLOWANCE + 3 * 5 * TIMEOUT


def test_throttling_is_retried_after_a_capped_wait(tmp_path, fault_server, good_url):
    outcomes = {
        "/status/429?retry_after=1": Outcome("failed_to_download", "rate_limited", "HTTP Error 429: Too Many Requests"),
        # An hour's Retry-After is capped by max_retry_after: the run does not wait for it.
        "/status/503?retry_after=3600": Outcome("failed_to_download", "http_5xx",
                                                "HTTP Error 503: Service Unavailable"),
        "/flaky/429/a": SUCCESS,
        "/flaky/503/a": SUCCESS,
    }
    faults = {fault_server.url(path): outcome for path, outcome in outcomes.items()}
    elapsed = run_faults(tmp_path, good_url, faults, retries=1, retry_backoff=0, max_retry_after=1)
    assert [fault_server.hits(path) for path in outcomes] == [2, 2, 2, 2]
    assert elapsed < STARTUP_ALLOWANCE + 2 * TIMEOUT + 1


def test_long_and_non_ascii_urls(tmp_path, fault_server, good_url):
    long_path = "/image/" + "a" * 8192 + ".jpg"
    raw = "/image/café/图片.jpg?q=ünï&x=€"
    encoded = "/image/caf%C3%A9/%E5%9B%BE%E7%89%87.jpg?q=%C3%BCn%C3%AF&x=%E2%82%AC"
    faults = {fault_server.url(path): SUCCESS for path in (long_path, raw, encoded)}
    run_faults(tmp_path, good_url, faults)
    # The raw URL went out percent-encoded as UTF-8, the encoded one as it was (not encoded twice).
    assert fault_server.hits(long_path) == 1
    assert fault_server.hits(encoded) == 2


@pytest.mark.parametrize("options, stuck, per_sample, end_grace", [
    ({"timeout": 1.0}, TIMED_OUT, 1.0 + REAPER_GRACE, 0.0),
    # With the fetcher's deadline far away, the core watchdog (sample_timeout) fails the samples; the
    # distributor then ends the worker whose threads are still stuck, after a 5 s grace period.
    ({"timeout": 25.0, "sample_timeout": 2.0},
     Outcome("failed_to_download", "watchdog", "sample did not finish within sample_timeout=2 s"), 2.0, 5.0),
], ids=["fetch_deadline", "watchdog"])
def test_a_run_whose_server_stalls_every_connection_ends(tmp_path, fault_server, options, stuck, per_sample,
                                                         end_grace):
    urls = [fault_server.url(f"/{fault}/{i}") for i in range(4) for fault in ("stall_headers", "stall_body")]
    rows, elapsed = download(tmp_path, urls, thread_count=4, **options)
    check_outcomes(rows, [stuck] * len(urls))
    rounds = len(urls) // 4
    assert elapsed < STARTUP_ALLOWANCE + 2 * (rounds * per_sample + end_grace)


def test_url_list_safety_by_default(tmp_path, fault_server, good_url):
    """With the default options nothing on this machine is reachable, however the URL names it."""
    port = fault_server.port
    blocked_loopback = Outcome("failed_to_download", "blocked",
                               "blocked: 127.0.0.1 is a loopback address (set allow_private_networks to allow)")
    cases = {
        good_url: blocked_loopback,
        f"http://localhost:{port}/image/a": blocked_loopback,
        f"http://2130706433:{port}/image/a": blocked_loopback,
        f"http://0x7f.0.0.1:{port}/image/a": blocked_loopback,
        f"http://[::1]:{port}/image/a": Outcome("failed_to_download", "blocked",
                                                 "blocked: ::1 is a loopback address"),
        "http://169.254.169.254/latest/meta-data/": Outcome(
            "failed_to_download", "blocked", "blocked: 169.254.169.254 is a cloud metadata address"),
        "file:///etc/passwd": Outcome("failed_to_download", "unsupported",
                                      "unsupported URL scheme 'file' (enabled: http, https)"),
        "/etc/passwd": Outcome("failed_to_download", "unsupported", "unsupported URL scheme ''"),
        "ftp://127.0.0.1/image.jpg": Outcome("failed_to_download", "unsupported",
                                             "unsupported URL scheme 'ftp'"),
    }
    out = tmp_path / "out"
    url_list = tmp_path / "urls.txt"
    url_list.write_text("\n".join(cases) + "\n")
    assert main(["download", "--url_list", str(url_list), "--output_folder", str(out), "--thread_count", "4",
                 "--fetchers", f"[{FETCHER}]"]) == 0
    check_outcomes(metadata_in_input_order(out, list(cases)), list(cases.values()))
    assert fault_server.hits("/image/a") == 0
