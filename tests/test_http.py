"""The http fetchers against a real loopback server: bodies, errors, deadlines, redirects, retries, politeness.

Every test runs against each registered fetcher claiming the http scheme (``http``, ``fast_http``).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import urllib3

from any2ds.config import options_fields
from any2ds.errors import FetchError
from any2ds.manager import PluginHost
from any2ds.types import Sample
from any2ds_plugins import http as http_plugin
from any2ds_plugins.http.addresses import address_kind
from any2ds_plugins.http.deadline import REAPER_GRACE
from any2ds_plugins.http.fetcher import HttpFetcher
from any2ds_plugins.http.retry import parse_retry_after
from any2ds_plugins.http.robots import BASE_USER_AGENT, robots_refused
from any2ds_plugins.http.transport import as_fetch_error
from tests.fault_server import FaultServer
from any2ds.testing import send_bytes

BODY = bytes(range(256)) * 40
HTTP_FETCHERS = [registration.cls for registration in PluginHost.load().registries["fetcher"].registrations()
                 if "http" in registration.cls.schemes]
FETCHER = HttpFetcher  # the class under test, set for each test by the fetcher_class fixture


@pytest.fixture(autouse=True, params=HTTP_FETCHERS, ids=lambda cls: cls.name)
def fetcher_class(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "FETCHER", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def make_fetcher(**options) -> HttpFetcher:
    """A fetcher allowed to reach this module's loopback servers (the safety tests pass their own policy)."""
    options.setdefault("timeout", 2.0)
    options.setdefault("allow_private_networks", True)
    return FETCHER(FETCHER.Options(**options))


def fetch(url: str, **options):
    fetcher = make_fetcher(**options)
    try:
        return fetcher.fetch(Sample(key="0", shard_id=0, index=0, url=url))
    finally:
        fetcher.close()


def fetch_error(url: str, **options) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch(url, **options)
    return info.value


def add_route(server, name: str, handler: Callable[[BaseHTTPRequestHandler], None]) -> str:
    """Serve ``handler`` under a prefix unique to ``name``; return the prefix's URL."""
    prefix = f"/test_http/{name}/"
    server.route(prefix, handler)
    return server.url(prefix)


class Counter:
    """A thread-safe count of requests a route saw, and of the client ports they came from."""

    def __init__(self) -> None:
        self.count = 0
        self.ports: set[int] = set()
        self._lock = threading.Lock()

    def hit(self, request: BaseHTTPRequestHandler) -> int:
        with self._lock:
            self.count += 1
            self.ports.add(request.client_address[1])
            return self.count


def send_headers(request: BaseHTTPRequestHandler, headers: dict[str, str], status: int = 200) -> None:
    request.send_response(status)
    for name, value in headers.items():
        request.send_header(name, value)
    request.end_headers()
    request.wfile.flush()


# -- plugin wiring -----------------------------------------------------------


def test_registers_as_http_fetcher():
    host = PluginHost.load([http_plugin], entry_points=False)
    assert host.component("fetcher", "http", "fetchers") is HttpFetcher
    names = [f.name for f in options_fields(HttpFetcher.Options)]
    assert names == ["timeout", "retries", "user_agent_token", "disallowed_header_directives",
                     "ignore_ssl_certificate", "max_body_bytes", "max_redirects", "retry_backoff", "max_retry_after",
                     "allow_private_networks", "allow_link_local", "max_connections_per_host",
                     "max_requests_per_second_per_host", "respect_robots_txt"]


@pytest.mark.parametrize("module", ["addresses", "deadline"])
def test_policy_and_deadline_do_not_depend_on_requests(module):
    """Fetchers built on another HTTP library reuse these two modules."""
    tree = ast.parse(Path(http_plugin.__file__).with_name(f"{module}.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "requests" or name.endswith(".transport")}


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"retries": -1}, {"max_body_bytes": 0}, {"max_redirects": -1}])
def test_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        HttpFetcher.Options(**bad)


# -- success, errors ---------------------------------------------------------


def test_fetches_static_file(http_server, image_dir):
    result = fetch(http_server.url("/allowed/64_64.jpg"))
    assert result.body == (image_dir / "64_64.jpg").read_bytes()
    assert result.content_type == "image/jpeg"
    assert result.url == http_server.url("/allowed/64_64.jpg")
    assert result.headers["Content-Length"] == str(len(result.body))
    assert result.attempts == 1


def test_404_message_is_img2datasets(http_server):
    error = fetch_error(http_server.url("/allowed/no_such_file.jpg"))
    assert error.message == "HTTP Error 404: Not Found"
    assert error.status == "failed_to_download"
    assert error.error_type == "http_4xx"
    assert not error.retryable


def test_500_message_uses_server_reason(http_server):
    url = add_route(http_server, "500", lambda r: r.send_error(500, "Internal Server Error"))
    error = fetch_error(url)
    assert error.message == "HTTP Error 500: Internal Server Error"
    assert error.retryable


def test_connection_refused_message_is_img2dataset_s():
    """A failure before the request went out, in urllib's words, as img2dataset reports it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/x")
    assert error.error_type == "connect"
    assert error.message == "<urlopen error [Errno 111] Connection refused>"
    assert error.retryable


def test_invalid_url_is_not_retried():
    error = fetch_error("http://", retries=3, retry_backoff=10)
    assert error.message == "Invalid URL 'http://': No host supplied"
    assert error.error_type == "invalid_url"
    assert not error.retryable


@pytest.mark.parametrize("url", ["http://[::1", "http://x]/a", "http://[zz]/a.jpg", "http://127.0.0.1:99999/a",
                                 "http://127.0.0.1:abc/a"])
@pytest.mark.parametrize("robots_txt", [False, True], ids=["", "robots_txt"])
def test_a_url_that_does_not_parse_is_invalid_url(url, robots_txt):
    """Unbalanced brackets, a bracketed host that is no address, a port out of range or not a
    number: refused before robots.txt is asked for."""
    error = fetch_error(url, respect_robots_txt=robots_txt)
    assert (error.message, error.error_type, error.retryable) == (f"Failed to parse: {url}", "invalid_url", False)



@pytest.mark.parametrize("host, reason", [("a" * 64 + ".com", "label empty or too long"), ("a..b", "label empty or too long"),
                                          ("a" * 300, "label too long")], ids=["long_label", "empty_label", "long_name"])
def test_a_host_no_resolver_can_look_up_is_invalid_url(host, reason):
    """A label over 63 characters, or empty: the name cannot be encoded for a lookup. Python's
    message, as img2dataset reports it; not retried."""
    error = fetch_error(f"http://{host}/a.jpg", retries=3, retry_backoff=10)
    assert (error.message, error.error_type, error.retryable) == (
        f"encoding with 'idna' codec failed (UnicodeError: {reason})", "invalid_url", False)

def test_dns_failure_message_is_the_resolver_error():
    reason = socket.gaierror(-2, "Name or service not known")
    resolution = urllib3.exceptions.NameResolutionError("no.such.host.invalid", None, reason)
    resolution.__cause__ = reason
    error = as_fetch_error(requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", resolution)))
    assert error.message == "<urlopen error [Errno -2] Name or service not known>"
    assert error.error_type == "dns"


# -- connections and user agent ---------------------------------------------


def test_keeps_connections_alive_per_thread(http_server):
    seen = Counter()

    def handler(request):
        seen.hit(request)
        send_bytes(request, BODY)

    url = add_route(http_server, "keepalive", handler)
    fetcher = make_fetcher(max_connections_per_host=0)  # under a cap a connection lives for one request
    try:
        for i in range(20):
            assert fetcher.fetch(Sample(key=str(i), shard_id=0, index=i, url=url)).body == BODY
    finally:
        fetcher.close()
    assert seen.count == 20
    assert len(seen.ports) == 1


def test_concurrent_threads_and_dead_thread_sessions_are_closed(http_server):
    url = add_route(http_server, "threads", lambda r: send_bytes(r, BODY))
    fetcher = make_fetcher()
    results: list[bytes] = []
    all_started = threading.Barrier(16)  # no thread ends (and has its session pruned) before all have one

    def work():
        for i in range(5):
            results.append(fetcher.fetch(Sample(key=str(i), shard_id=0, index=i, url=url)).body)
            if i == 0:
                all_started.wait()

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [BODY] * 80
    if FETCHER is not HttpFetcher:  # fast_http has no session per thread: its fetches share one event loop
        fetcher.close()
        return
    sessions = fetcher._requests()._sessions
    assert len(sessions) == 16
    fetcher.fetch(Sample(key="x", shard_id=0, index=0, url=url))  # a new thread's session prunes the dead ones
    assert list(sessions) == [threading.current_thread()]
    fetcher.close()
    assert not sessions


@pytest.mark.parametrize("token, expected", [
    (None, BASE_USER_AGENT),
    ("  MyBot ", BASE_USER_AGENT + " (compatible; mybot; +https://github.com/rom1504/img2dataset)"),
])
def test_user_agent_is_img2datasets(http_server, token, expected):
    agents: list[str] = []

    def handler(request):
        agents.append(request.headers["User-Agent"])
        send_bytes(request, b"ok")

    url = add_route(http_server, f"ua_{token is not None}", handler)
    fetch(url, user_agent_token=token)
    assert agents == [expected]
    assert expected == "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0" + (
        " (compatible; mybot; +https://github.com/rom1504/img2dataset)" if token else "")


# -- X-Robots-Tag ------------------------------------------------------------


ROBOTS_CASES = [
    # (case, header values, options, refused)
    ("no_token", ["noai, noindex"], {}, True),
    ("other_token", ["otherbot: noai"], {"user_agent_token": "mybot"}, False),
    ("matching_token", ["mybot: noindex"], {"user_agent_token": "MyBot"}, True),
    ("matching_token_case", ["MyBot: NoImageAI"], {"user_agent_token": "mybot"}, True),
    ("token_without_ours", ["mybot: noindex"], {}, False),
    ("harmless", ["nofollow, noarchive"], {}, False),
    ("second_header", ["otherbot: noai", "noimageindex"], {"user_agent_token": "mybot"}, True),
    ("custom_list_allows", ["noai"], {"disallowed_header_directives": ["nofollow"]}, False),
    ("custom_list_refuses", ["nofollow"], {"disallowed_header_directives": ["NoFollow"]}, True),
    ("empty_list_disables", ["noai, noindex"], {"disallowed_header_directives": []}, False),
]


@pytest.mark.parametrize("case, values, options, refused", ROBOTS_CASES, ids=[c[0] for c in ROBOTS_CASES])
def test_x_robots_tag(http_server, case, values, options, refused):
    def handler(request):
        request.send_response(200)
        request.send_header("Content-Length", str(len(BODY)))
        request.send_header("Connection", "close")  # a refusal drops the unread body; no reuse to wait for
        for value in values:
            request.send_header("X-Robots-Tag", value)
        request.end_headers()
        request.wfile.write(BODY)

    url = add_route(http_server, f"robots_{case}", handler)
    if refused:
        error = fetch_error(url, retries=2, retry_backoff=0, **options)
        assert error.message == "Use of image disallowed by X-Robots-Tag directive"
        assert error.error_type == "opt_out"
        assert not error.retryable
    else:
        assert fetch(url, **options).body == BODY


def test_x_robots_tag_on_disallowed_route(http_server):
    assert fetch_error(http_server.url("/disallowed/64_64.jpg")).message == (
        "Use of image disallowed by X-Robots-Tag directive")


def test_robots_refused_ignores_non_directive_values():
    assert not robots_refused(["unavailable_after: 25 Jun 2010 15:00:00 PST"], None, frozenset({"noai"}))
    assert robots_refused([" NOAI "], None, frozenset({"noai"}))


# -- deadlines and broken bodies --------------------------------------------


def test_drip_is_cut_off_at_the_total_deadline(http_server):
    def handler(request):
        send_headers(request, {"Content-Length": "100"})
        for _ in range(100):
            try:
                request.wfile.write(b"x")
                request.wfile.flush()
            except OSError:
                return
            time.sleep(0.5)

    url = add_route(http_server, "drip", handler)
    start = time.monotonic()
    error = fetch_error(url, timeout=2.0)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0 + 1.5
    assert error.message == "timed out (total deadline of 2.0 s)"
    assert error.error_type == "timeout"
    assert error.retryable


def test_stall_after_headers_times_out(http_server):
    release = threading.Event()

    def handler(request):
        send_headers(request, {"Content-Length": "100"})
        release.wait(10)

    url = add_route(http_server, "stall_body", handler)
    start = time.monotonic()
    try:
        error = fetch_error(url, timeout=1.0)
    finally:
        release.set()
    assert time.monotonic() - start < 1.0 + 1.0
    assert error.message == "timed out"
    assert error.error_type == "timeout"


def test_stall_before_headers_times_out(http_server):
    release = threading.Event()
    url = add_route(http_server, "stall_headers", lambda request: release.wait(10))
    start = time.monotonic()
    try:
        error = fetch_error(url, timeout=1.0)
    finally:
        release.set()
    assert time.monotonic() - start < 1.0 + 1.0
    assert error.message == "timed out"


def test_headers_trickled_byte_by_byte_are_cut_off(http_server):
    def handler(request):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Padding: " + b"p" * 100 + b"\r\n\r\n"
        request.close_connection = True
        for byte in head:
            try:
                request.wfile.write(bytes([byte]))
                request.wfile.flush()
            except OSError:  # the client gave up
                return
            time.sleep(0.25)

    url = add_route(http_server, "drip_headers", handler)
    start = time.monotonic()
    error = fetch_error(url, timeout=1.0)
    assert time.monotonic() - start < 1.0 + REAPER_GRACE + 1.0
    assert error.message == "timed out (total deadline of 1.0 s)"
    assert error.error_type == "timeout"


def test_deadline_covers_the_whole_redirect_chain(http_server):
    def handler(request):
        time.sleep(0.3)
        hop = int(request.path.rstrip("/").rsplit("/", 1)[1])
        try:
            send_bytes(request, b"", status=302, headers={"Location": f"/test_http/slow_chain/{hop + 1}"})
        except OSError:  # the client gave up at its deadline
            request.close_connection = True

    url = add_route(http_server, "slow_chain", handler)
    start = time.monotonic()
    error = fetch_error(url + "0", timeout=1.0)
    assert time.monotonic() - start < 1.0 + 1.0
    assert error.error_type == "timeout"


def test_content_length_larger_than_body_fails(http_server):
    def handler(request):
        send_headers(request, {"Content-Length": "100"})
        request.wfile.write(b"x" * 10)
        request.close_connection = True

    error = fetch_error(add_route(http_server, "short_body", handler))
    assert error.message == "IncompleteRead(10 bytes read, 90 more expected)"
    assert error.status == "failed_to_download"


def test_missing_content_length_and_early_close_is_accepted(http_server):
    def handler(request):
        send_headers(request, {"Connection": "close"})
        request.wfile.write(b"partial")
        request.close_connection = True

    assert fetch(add_route(http_server, "no_length", handler)).body == b"partial"


def test_body_over_max_body_bytes_by_content_length(http_server):
    url = add_route(http_server, "big_declared", lambda r: send_bytes(r, BODY, headers={"Connection": "close"}))
    error = fetch_error(url, max_body_bytes=1000)
    assert error.message == "body larger than 1000 bytes"
    assert error.error_type == "too_large"
    assert not error.retryable


def test_body_over_max_body_bytes_while_reading(http_server):
    def handler(request):
        send_headers(request, {"Connection": "close"})
        request.wfile.write(BODY)
        request.close_connection = True

    url = add_route(http_server, "big_undeclared", handler)
    assert fetch_error(url, max_body_bytes=1000).message == "body larger than 1000 bytes"
    assert fetch(url, max_body_bytes=len(BODY)).body == BODY


def test_gzip_content_encoding_is_decoded_and_counted_decoded(http_server):
    url = add_route(http_server, "gzip", lambda r: send_bytes(
        r, gzip.compress(BODY), "text/plain", headers={"Content-Encoding": "gzip"}))
    assert fetch(url).body == BODY
    assert fetch_error(url, max_body_bytes=len(BODY) - 1).error_type == "too_large"


def test_undecodable_gzip_is_a_permanent_failure(http_server):
    url = add_route(http_server, "bad_gzip", lambda r: send_bytes(r, b"not gzip", headers={"Content-Encoding": "gzip"}))
    error = fetch_error(url, retries=2, retry_backoff=10)
    assert error.message == "Error -3 while decompressing data: incorrect header check"
    assert not error.retryable


# -- redirects ---------------------------------------------------------------


def test_redirect_chain_within_limit(http_server):
    seen = Counter()

    def handler(request):
        seen.hit(request)
        hop = int(request.path.rstrip("/").rsplit("/", 1)[1])
        if hop == 0:
            send_bytes(request, BODY, "image/png")
        elif hop == 1:  # an absolute Location
            send_bytes(request, b"moved", status=301, headers={"Location": http_server.url("/test_http/chain/0")})
        else:  # a relative one
            send_bytes(request, b"", status=302, headers={"Location": str(hop - 1)})

    url = add_route(http_server, "chain", handler)
    result = fetch(url + "3", max_redirects=3, max_connections_per_host=0)
    assert result.body == BODY
    assert result.url == http_server.url("/test_http/chain/0")
    assert result.content_type == "image/png"
    assert len(seen.ports) == 1  # redirects reuse the kept-alive connection (kept when there is no cap per host)
    # img2dataset's (urllib's) words, with the code and reason of the redirect one too many (hop 1's).
    assert fetch_error(url + "3", max_redirects=2).message == (
        "HTTP Error 301: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
        "The last 30x error message was:\nMoved Permanently")


def test_redirect_loop_fails_clearly(http_server):
    seen = Counter()

    def handler(request):
        seen.hit(request)
        send_bytes(request, b"", status=302, headers={"Location": request.path})

    error = fetch_error(add_route(http_server, "loop", handler), max_redirects=5)
    assert error.message == (
        "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
        "The last 30x error message was:\nFound")
    assert error.error_type == "redirect"
    assert seen.count == 6


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_without_location_fails_as_urllib_fails_it(http_server, status):
    """Not a downloaded body: urllib (img2dataset) raises HTTP Error 302: Found."""
    def handler(request):
        send_bytes(request, b"<html>moved</html>", status=status)

    error = fetch_error(add_route(http_server, f"no_location_{status}", handler))
    assert (error.message, error.error_type, error.retryable) == (
        f"HTTP Error {status}: {HTTPStatus(status).phrase}", "redirect", False)


def test_a_redirect_to_a_location_that_does_not_parse_fails_as_a_redirect(http_server):
    url = add_route(http_server, f"bad_location_{FETCHER.name}",
                    lambda r: send_bytes(r, b"", status=302, headers={"Location": "http://[::1/x.jpg"}))
    error = fetch_error(url)
    assert (error.message, error.error_type, error.retryable) == (
        "redirect to an invalid URL 'http://[::1/x.jpg': Invalid IPv6 URL", "redirect", False)


def test_a_redirect_body_is_not_read_past_the_drain_limit(http_server):
    """A large redirect body is dropped with its connection, not read: requests read it whole to
    work out the next hop, even when told not to follow redirects."""
    chunks_sent: list[int] = []
    finished = threading.Event()

    def trickled_redirect(request):
        request.send_response(302)
        request.send_header("Location", target)
        request.send_header("Content-Length", str(64 * 2**17))
        request.end_headers()
        try:
            for _ in range(64):
                request.wfile.write(bytes(2**17))
                request.wfile.flush()
                chunks_sent.append(1)
                time.sleep(0.03)
        except OSError:  # the client dropped the connection: what is asked
            pass
        finally:
            finished.set()

    target = add_route(http_server, f"drain_target_{FETCHER.name}", lambda r: send_bytes(r, BODY))
    url = add_route(http_server, f"drain_{FETCHER.name}", trickled_redirect)
    assert fetch(url, timeout=10.0).body == BODY
    assert finished.wait(10)
    assert len(chunks_sent) < 32, f"{len(chunks_sent)} of 64 chunks of the redirect's body were sent"


def test_an_answer_that_is_not_http_is_a_protocol_failure(http_server):
    """Not a bad URL, not a connection failure to retry, and no URL in the message (each would
    make a status_dict key of its own)."""
    def garbage(request):
        request.wfile.write(b"\x00\x01garbage, not http\r\n\r\n")
        request.close_connection = True

    url = add_route(http_server, f"garbage_{FETCHER.name}", garbage)
    error = fetch_error(url)
    assert (error.error_type, error.retryable) == ("protocol", False)
    assert "127.0.0.1" not in error.message and "garbage_" not in error.message


MALFORMED_HEADS = {  # name: (head, refused by both fetchers)
    "status": (b"HTTP/1.1 2OO OK\r\nContent-Length: 5\r\n\r\n", True),
    "two_lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", True),
    "length_not_a_number": (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", False),
    "unknown_transfer_encoding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: foo\r\n\r\n", False),
    "header_without_colon": (b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 5\r\n\r\n", False),
    "long_status_line": (b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\nContent-Length: 5\r\n\r\n", False),
    "many_headers": (b"HTTP/1.1 200 OK\r\n" + b"X-Filler: v\r\n" * 120 + b"Content-Length: 5\r\n\r\n", False),
    "unknown_version": (b"HTTP/2.5 200 OK\r\nContent-Length: 5\r\n\r\n", False),
    "huge_header_line": (b"HTTP/1.1 200 OK\r\nX-Filler: " + b"v" * 200_000 + b"\r\nContent-Length: 5\r\n\r\n", True),
}


@pytest.mark.parametrize("name", MALFORMED_HEADS)
def test_a_head_either_fetcher_refuses_is_a_protocol_failure_and_not_retried(http_server, name):
    """A head one client reads leniently (http.client skips a line without a colon, libcurl reads any
    number of headers) and the other refuses: read, or refused as ``protocol`` once. The server
    would send the same head again, so a retry only costs it a request."""
    head, refused_by_both = MALFORMED_HEADS[name]
    requests_seen = Counter()

    def malformed(request):
        requests_seen.hit(request)
        request.wfile.write(head + b"hello")
        request.close_connection = True

    url = add_route(http_server, f"malformed_{FETCHER.name}_{name}", malformed)
    fetcher = make_fetcher(retries=2, retry_backoff=0.01)
    try:
        result = fetcher.fetch(Sample(key="0", shard_id=0, index=0, url=url))
    except FetchError as error:
        assert (error.error_type, error.retryable) == ("protocol", False) and error.message, error
    else:
        assert not refused_by_both and result.body == b"hello"
    finally:
        fetcher.close()
    assert requests_seen.count == 1



def test_a_url_too_long_to_send_fails_once(http_server):
    """A 2 MB URL: libcurl refuses to send it: invalid_url, nothing sent, not retried."""
    if FETCHER.name != "fast_http":
        pytest.skip("requests sends any URL: the server's answer decides")
    requests_seen = Counter()

    def count(request):
        requests_seen.hit(request)
        request.send_error(414)

    url = add_route(http_server, f"long_{FETCHER.name}", count) + "?" + "a" * 2_000_000
    error = fetch_error(url, retries=2, retry_backoff=0.01)
    assert (error.message, error.error_type, error.retryable) == ("HTTP request too large", "invalid_url", False)
    assert requests_seen.count == 0

def test_redirect_to_another_scheme_fails(http_server):
    url = add_route(http_server, "ftp_redirect",
                    lambda r: send_bytes(r, b"", status=302, headers={"Location": "ftp://example.com/file.jpg"}))
    error = fetch_error(url)
    assert error.message == "redirect to unsupported URL scheme 'ftp'"
    assert not error.retryable


# -- where requests may go ----------------------------------------------------

LOOPBACK_BLOCKED = "blocked: 127.0.0.1 is a loopback address (set allow_private_networks to allow)"


def test_loopback_is_blocked_by_default_and_never_contacted(http_server):
    url = add_route(http_server, f"blocked_{FETCHER.name}", lambda r: send_bytes(r, BODY))  # its own log
    error = fetch_error(url, allow_private_networks=False, retries=2, retry_backoff=10)
    assert error.message == LOOPBACK_BLOCKED
    assert error.error_type == "blocked"
    assert error.status == "failed_to_download"
    assert not error.retryable
    blocked_path = f"/test_http/blocked_{FETCHER.name}/"
    assert not [path for path, _headers in http_server.requests if path.startswith(blocked_path)]
    assert fetch(url, allow_private_networks=True).body == BODY


@pytest.mark.parametrize("host, message", [
    ("localhost", LOOPBACK_BLOCKED),
    ("2130706433", LOOPBACK_BLOCKED),  # decimal
    ("0x7f.0.0.1", LOOPBACK_BLOCKED),  # hexadecimal
    ("017700000001", LOOPBACK_BLOCKED),  # octal
    ("127.1", LOOPBACK_BLOCKED),  # shortened
    ("[::1]", "blocked: ::1 is a loopback address (set allow_private_networks to allow)"),
    ("[::ffff:127.0.0.1]", "blocked: ::ffff:127.0.0.1 is a loopback address (set allow_private_networks to allow)"),
    ("0.0.0.0", "blocked: 0.0.0.0 is an unspecified address (set allow_private_networks to allow)"),
])
def test_every_spelling_of_this_machine_is_blocked(http_server, host, message):
    assert fetch_error(f"http://{host}:{http_server.port}/allowed/64_64.jpg",
                       allow_private_networks=False).message == message


def test_a_name_stays_blocked_once_its_answer_and_verdict_are_remembered(http_server):
    """Fetchers keep a name's resolved addresses and each address's verdict: every later fetch of
    the name through the same fetcher is refused the same way, and none reaches the server."""
    url = add_route(http_server, f"remembered_{FETCHER.name}", lambda r: send_bytes(r, BODY))
    fetcher = make_fetcher(allow_private_networks=False)
    try:
        for index in range(3):
            with pytest.raises(FetchError) as info:
                fetcher.fetch(Sample(key=str(index), shard_id=0, index=index, url=url.replace("127.0.0.1", "localhost")))
            assert info.value.message == LOOPBACK_BLOCKED and info.value.error_type == "blocked"
    finally:
        fetcher.close()
    assert not [path for path, _headers in http_server.requests if f"/remembered_{FETCHER.name}/" in path]


def test_link_local_needs_its_own_option(http_server):
    url = add_route(http_server, "to_metadata", lambda r: send_bytes(
        r, b"", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    error = fetch_error(url)  # loopback allowed, so the redirect is followed and its target checked
    assert error.message == "blocked: 169.254.169.254 is a cloud metadata address (set allow_link_local to allow)"
    assert error.error_type == "blocked"
    assert fetch_error(url, allow_private_networks=False, allow_link_local=True).message == LOOPBACK_BLOCKED


METADATA = ("a cloud metadata address", "allow_link_local")
LINK_LOCAL = ("a link-local address", "allow_link_local")
PRIVATE = ("a private network address", "allow_private_networks")
RESERVED = ("a reserved or special-purpose address", "allow_private_networks")


@pytest.mark.parametrize("address, kind", [
    ("93.184.215.14", None), ("8.8.8.8", None), ("2606:4700:4700::1111", None),
    ("64:ff9b::808:808", None),  # NAT64 of a public address
    ("127.0.0.53", ("a loopback address", "allow_private_networks")),
    ("10.1.2.3", PRIVATE), ("172.31.255.255", PRIVATE), ("192.168.1.1", PRIVATE), ("100.64.0.1", PRIVATE),
    ("fd12:3456::1", PRIVATE),
    ("169.254.169.254", METADATA), ("fd00:ec2::254", METADATA), ("100.100.100.200", METADATA),
    ("168.63.129.16", METADATA),
    ("::ffff:169.254.169.254", METADATA), ("2002:a9fe:a9fe::", METADATA), ("64:ff9b::a9fe:a9fe", METADATA),
    ("169.254.1.1", LINK_LOCAL), ("fe80::1", LINK_LOCAL), ("fe80::1%1", LINK_LOCAL),
    ("0.0.0.0", ("an unspecified address", "allow_private_networks")),
    ("::", ("an unspecified address", "allow_private_networks")),
    ("224.0.0.1", ("a multicast address", "allow_private_networks")),
    ("ff02::1", ("a multicast address", "allow_private_networks")),
    ("240.0.0.1", RESERVED), ("255.255.255.255", RESERVED), ("192.0.2.1", RESERVED), ("2001:db8::1", RESERVED),
    ("::7f00:1", RESERVED),
])
def test_address_kinds(address, kind):
    assert address_kind(ip_address(address)) == kind


# A public address, here only on the loopback device of a throwaway network namespace...
PUBLIC_ADDRESS = "100.0.0.1"
# ...and one with no route there at all: only a proxy "reaches" it.
UNROUTED_ADDRESS = "100.0.0.2"


def fetch_outcome(fetcher: HttpFetcher, url: str) -> str:
    try:
        fetcher.fetch(Sample(key="0", shard_id=0, index=0, url=url))
    except FetchError as error:
        return f"{error.error_type}: {error.message}"
    return "ok"


def namespace_scenario(fetcher_name: str = "http") -> None:
    """Run inside ``unshare --net --mount``; prints the outcomes of fetches with the default options.

    The namespace has a "public" server, names in /etc/hosts for it and for
    loopback, a DNS server that never answers, and a proxy on loopback.
    """
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{PUBLIC_ADDRESS}/32", "dev", "lo"], check=True)
    folder = Path(tempfile.mkdtemp())
    (folder / "hosts").write_text(f"127.0.0.1 sneaky.test mixed.test\n{PUBLIC_ADDRESS} public.test mixed.test\n")
    (folder / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:10 attempts:1\n")
    for name in ("hosts", "resolv.conf"):
        subprocess.run(["mount", "--bind", str(folder / name), f"/etc/{name}"], check=True)
    silent_dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_dns.bind(("127.0.0.1", 53))
    public = FaultServer(BODY, host=PUBLIC_ADDRESS)
    loopback = FaultServer(BODY, port=public.port)  # same port: a name for both reaches either
    port = public.port
    cls = next(cls for cls in HTTP_FETCHERS if cls.name == fetcher_name)
    fetcher = cls(cls.Options(timeout=1.0))
    outcomes = {name: fetch_outcome(fetcher, url) for name, url in {
        "public": public.url("/image/direct"),
        "public_name": f"http://public.test:{port}/image/name",
        "name_for_loopback": f"http://sneaky.test:{port}/image/sneaky",
        "name_for_both": f"http://mixed.test:{port}/image/mixed",
        "redirect_to_loopback": public.url("/redirect?to=" + quote(loopback.url("/image/redirected"), safe="")),
        "redirect_to_name_for_loopback": public.url("/redirect?to=" + quote(
            f"http://sneaky.test:{port}/image/redirected", safe="")),
    }.items()}
    start = time.monotonic()
    outcomes["unanswered_dns"] = fetch_outcome(fetcher, "http://no-answer.test/image/dns")
    outcomes["unanswered_dns_seconds"] = time.monotonic() - start
    os.environ["http_proxy"] = loopback.url("")
    outcomes.update({name: fetch_outcome(fetcher, url) for name, url in {
        "proxied_public": f"http://{UNROUTED_ADDRESS}/image/proxied",
        "proxied_metadata": "http://169.254.169.254/latest/meta-data/",
        "proxied_name_for_loopback": "http://sneaky.test/image/proxied",
    }.items()})
    outcomes["public_received"] = sorted(public.targets)
    outcomes["loopback_received"] = sorted(loopback.targets)
    print(json.dumps(outcomes))


@pytest.fixture(scope="module")
def unshare_command():
    command = ["unshare", "--net", "--mount"]
    if shutil.which("unshare") is None or subprocess.run([*command, "true"], capture_output=True,
                                                         check=False).returncode:
        pytest.skip("making a network namespace needs unshare and root")
    return command


def test_default_policy_in_a_private_network_namespace(unshare_command):
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    result = subprocess.run([*unshare_command, sys.executable, "-c",
                             f"from tests.test_http import namespace_scenario; namespace_scenario({FETCHER.name!r})"],
                            cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout.splitlines()[-1])
    assert outcomes.pop("unanswered_dns_seconds") < 1.0 + 1.5  # the resolver itself would wait 10 s
    public_received = outcomes.pop("public_received")
    loopback_blocked = "blocked: " + LOOPBACK_BLOCKED
    assert outcomes == {
        "public": "ok",
        "public_name": "ok",
        "name_for_loopback": loopback_blocked,
        "name_for_both": "ok",  # the loopback address is skipped, the public one used
        "redirect_to_loopback": loopback_blocked,
        "redirect_to_name_for_loopback": loopback_blocked,
        "unanswered_dns": "dns: <urlopen error [Errno -3] DNS lookup timed out>",
        "proxied_public": "ok",  # the proxy is trusted though it is on loopback
        "proxied_metadata": "blocked: blocked: 169.254.169.254 is a cloud metadata address "
                            "(set allow_link_local to allow)",
        "proxied_name_for_loopback": loopback_blocked,
        "loopback_received": [f"http://{UNROUTED_ADDRESS}/image/proxied"],  # only the proxied request
    }
    assert [target for target in public_received if target.startswith("/image/")] == [
        "/image/direct", "/image/mixed", "/image/name"]


# -- retries -----------------------------------------------------------------


def test_transient_503_is_retried(http_server):
    seen = Counter()

    def handler(request):
        if seen.hit(request) <= 2:
            request.send_error(503, "Service Unavailable")
        else:
            send_bytes(request, BODY)

    result = fetch(add_route(http_server, "503_then_ok", handler), retries=2, retry_backoff=0.01)
    assert result.body == BODY
    assert result.attempts == 3
    assert seen.count == 3


def test_retries_run_out(http_server):
    seen = Counter()

    def handler(request):
        seen.hit(request)
        request.send_error(503, "Service Unavailable")

    error = fetch_error(add_route(http_server, "503_always", handler), retries=1, retry_backoff=0.01)
    assert error.message == "HTTP Error 503: Service Unavailable"
    assert seen.count == 2


def test_429_retry_after_is_honoured(http_server):
    seen = Counter()

    def handler(request):
        if seen.hit(request) == 1:
            send_bytes(request, b"slow down", status=429, headers={"Retry-After": "1"})
        else:
            send_bytes(request, BODY)

    start = time.monotonic()
    result = fetch(add_route(http_server, "429", handler), retries=1, retry_backoff=0)
    assert time.monotonic() - start >= 1.0
    assert result.attempts == 2


def test_retry_after_is_capped(http_server):
    seen = Counter()

    def handler(request):
        if seen.hit(request) == 1:
            send_bytes(request, b"", status=503, headers={"Retry-After": "30"})
        else:
            send_bytes(request, BODY)

    start = time.monotonic()
    assert fetch(add_route(http_server, "retry_after_cap", handler), retries=1, max_retry_after=0.1).attempts == 2
    assert time.monotonic() - start < 1.0


def test_404_is_not_retried(http_server):
    seen = Counter()

    def handler(request):
        seen.hit(request)
        request.send_error(404, "Not Found")

    error = fetch_error(add_route(http_server, "404_once", handler), retries=3, retry_backoff=0.01)
    assert error.message == "HTTP Error 404: Not Found"
    assert seen.count == 1


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < parse_retry_after(future) <= 120
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- TLS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_url(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a fresh self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            send_bytes(self, BODY, headers={"X-Client-Port": str(self.client_address[1])})

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):  # refused handshakes are expected
            pass

    server = Server(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/file"
    server.shutdown()
    server.server_close()


def test_self_signed_certificate_is_refused(https_url):
    error = fetch_error(https_url)
    assert error.error_type == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in error.message
    assert not error.retryable


def test_ignore_ssl_certificate(https_url, recwarn):
    assert fetch(https_url, ignore_ssl_certificate=True).body == BODY
    assert not [w for w in recwarn if issubclass(w.category, urllib3.exceptions.InsecureRequestWarning)]


def test_tls_connections_are_kept_alive(https_url):
    """The check for bytes past a response's end sees TLS records, not just bytes: none is mistaken for them."""
    fetcher = make_fetcher(ignore_ssl_certificate=True, max_connections_per_host=0)  # no cap: kept alive
    try:
        results = [fetcher.fetch(Sample(key=str(i), shard_id=0, index=i, url=https_url)) for i in range(5)]
    finally:
        fetcher.close()
    assert [result.body for result in results] == [BODY] * 5
    assert len({result.headers["X-Client-Port"] for result in results}) == 1
