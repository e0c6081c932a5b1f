"""No fetcher stores the wrong bytes, whatever a server does to the keep-alive connection it shares.

On a reused connection, an answer left unread (the final response after a
``103 Early Hints``, a second response to one request, the rest of a body
longer than its Content-Length) would be read as the next request's answer,
and that row stored with another URL's bytes. Every test here runs on one
thread, so that bad and good rows share one connection, and checks each
stored body against the bytes served for its own URL.

The tests run against every registered fetcher that claims the http scheme.
"""

from __future__ import annotations

import hashlib
import uuid

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from any2ds import FetchError, Sample
from any2ds.manager import PluginHost
from any2ds.testing import download_in_process, read_dataset
from tests.fault_server import FaultServer, served_body

HTTP_FETCHERS = [registration.cls for registration in PluginHost.load().registries["fetcher"].registrations()
                 if "http" in registration.cls.schemes]
FLOOD = 50  # informational responses before the final one: more than any fetcher should accept
# How a failed fetch may be classified; anything else (a Timeout: a fetcher waiting for bytes
# that never come) is a bug.
CLEAN_FAILURES = {"protocol", "connect", "http_4xx", "http_5xx"}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def server():
    server = FaultServer(image=b"")
    yield server
    server.close()


def fetcher_options(cls, **wanted):
    """``cls``'s options with those of ``wanted`` it declares."""
    declared = {field.name for field in attrs.fields(cls.Options)}
    return cls.Options(**{name: value for name, value in wanted.items() if name in declared})


@pytest.fixture(scope="module", params=HTTP_FETCHERS, ids=lambda cls: cls.name)
def fetcher(request):
    """One fetcher for the module: its thread's connections live on from test to test."""
    cls = request.param
    # No cap on connections per host: under one, a connection carries one request and none is reused.
    fetcher = cls(fetcher_options(cls, timeout=5.0, allow_private_networks=True, max_connections_per_host=0))
    yield fetcher
    fetcher.close()


def outcome(fetcher, url: str) -> bytes | FetchError:
    try:
        return fetcher.fetch(Sample(key="0", shard_id=0, index=0, url=url)).body
    except FetchError as error:
        return error


def name_of(path: str) -> str:
    return path.split("?")[0].rsplit("/", 1)[1]


# (path, what the row must come back as: None for its own bytes, else the error type). Each
# misbehaving path comes between good ones (/body/...) on the same connection.
SCENARIOS = {
    "103 then 200": [("/informational/103/{}", None)],
    "100 then 200": [("/informational/100/{}", None)],
    "three 102 then 200": [("/informational/102/{}?count=3", None)],
    # old clients took the 103 as the answer; the 200 then arrived for the next request
    "103, 200 later": [("/informational/103/{}?delay=0.3", None)],
    "1xx flood": [(f"/informational/103/{{}}?count={FLOOD}", "protocol")],
    "101 switching protocols": [("/informational/101/{}", "protocol")],
    "two responses at once": [("/two_responses/{}", "protocol")],
    # the second response waits for the next request: that one reads it first, then its own
    "two responses, second late": [("/two_responses/{}?late=1", None), ("/body/{}", "protocol")],
    "headers then close": [("/headers_then_close/{}", "connect")],
    "stale connection closed on request": [("/stale/{}", None)],
}


def scenario_rows(scenario: str) -> list[tuple[str, str | None]]:
    """The scenario's rows between good rows, each path naming a fresh body."""
    rows = [("/body/{}", None), *SCENARIOS[scenario], ("/body/{}", None), ("/body/{}", None)]
    return [(path.format(uuid.uuid4().hex[:12]), expected) for path, expected in rows]


def check_rows(rows, got) -> None:
    wrong = []
    for (path, expected), result in zip(rows, got, strict=True):
        if expected is None and result != served_body(name_of(path)):
            wrong.append(f"{path}: {result if isinstance(result, FetchError) else 'other bytes'}")
        if expected is not None and not (isinstance(result, FetchError) and result.error_type == expected
                                         and result.status == "failed_to_download"):
            wrong.append(f"{path}: expected {expected}, got {result!r}"[:300])
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_row_gets_its_own_answer(server, fetcher, scenario):
    rows = scenario_rows(scenario)
    got = [outcome(fetcher, server.url(path)) for path, _ in rows]
    check_rows(rows, got)
    # the good rows after the first did reuse a connection: the test met keep-alive
    assert [path for path, _ in rows[2:] if path in server.targets_on_reused_connections()], server.requests


@pytest.mark.parametrize("cls", HTTP_FETCHERS, ids=lambda cls: cls.name)
def test_a_run_stores_each_url_its_own_bytes(tmp_path, server, cls):
    """End to end on one fetch thread: the metadata's sha256 and the stored file are each row's own bytes."""
    rows = [row for scenario in SCENARIOS for row in scenario_rows(scenario)]
    url_list = tmp_path / "urls.txt"
    url_list.write_text("".join(server.url(path) + "\n" for path, _ in rows))
    download_in_process(url_list=str(url_list), output_folder=str(tmp_path / "out"), thread_count=1,
                        fetchers=[cls.name], processors=["file"], file_extension="bin", timeout=5.0, retries=0,
                        allow_private_networks=True, **{f"{cls.name}.max_connections_per_host": 0})
    dataset = read_dataset(tmp_path / "out")
    assert [row["url"] for row in dataset.rows] == [server.url(path) for path, _ in rows]
    assert set(server.targets_on_reused_connections()) & {path for path, _ in rows}  # the run met keep-alive
    wrong = []
    for (path, expected), row in zip(rows, dataset.rows, strict=True):
        body = served_body(name_of(path))
        if expected is None:
            stored = dataset.samples.get(row["key"], {}).get("bin")
            if (row["status"], row["sha256"], stored) != ("success", hashlib.sha256(body).hexdigest(), body):
                wrong.append(f"{path}: {row['status']} {row['error_type']} {row['error_message']}")
        elif (row["status"], row["error_type"]) != ("failed_to_download", expected) or row["key"] in dataset.samples:
            wrong.append(f"{path}: expected {expected}, got {row['status']} {row['error_type']}")
    assert not wrong, "\n".join(wrong)


# -- any framing a server may send -------------------------------------------


@attrs.frozen
class Served:
    """One generated answer: the bytes sent, whether the connection then stays open, and what a
    correct client makes of it: ``payload`` if it succeeds; it must succeed, or must fail, or may
    do either (a malformed chunked body may still be read right)."""

    wire: bytes
    keep_alive: bool
    payload: bytes
    must_succeed: bool
    must_fail: bool


PROPER_LAST_CHUNKS = (b"0\r\n\r\n", b"0\r\nX-Trailer: t\r\n\r\n")


def chunked(payload: bytes, cuts: list[int], lies: list[int], terminators: list[bytes], last: bytes) -> bytes:
    """``payload`` in chunks cut at ``cuts``; chunk i declares its size plus ``lies[i]`` (never 0:
    that would be a last chunk, framing a shorter payload correctly) and ends with ``terminators[i]``
    (correctly CRLF); ``last`` is the last chunk and trailer."""
    bounds = [0, *sorted(set(cuts)), len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    wire = b""
    for i, piece in enumerate(pieces):
        declared = len(piece) + lies[i % len(lies)] or len(piece)
        wire += b"%x\r\n" % declared + piece + terminators[i % len(terminators)]
    return wire + last


@st.composite
def answers(draw) -> Served:
    """Status lines (with 1xx before them), header counts and sizes, a Content-Length equal to the
    body, shorter, longer or absent, chunked bodies with any chunk sizes and terminators, bytes
    after the response, and closes at any point. A third of the answers are well formed."""
    faulty = draw(st.integers(0, 2)) > 0

    def pick(fine: list, faults: list):
        return draw(st.sampled_from(fine + faults if faulty else fine))

    # payload bytes are all >= 0x80: misframed data never reads as a status line or a chunk size
    payload = bytes(b | 0x80 for b in draw(st.binary(max_size=3000)))
    interim = [draw(st.sampled_from([100, 102, 103])) for _ in range(pick([0, 0, 0, 1, 2, 3], [11]))]
    if pick([False], [False] * 4 + [True]):
        interim.insert(draw(st.integers(0, len(interim))), 101)
    status = pick([200, 200, 203, 204], [404, 500])
    fillers = [draw(st.integers(0, 200)) for _ in range(pick([0, 3, 10, 50], [98, 110]))]
    big_header = pick([0, 0, 8000], [30000])
    stray = b""  # bytes sent after the response, as part of none
    framing = "length" if status == 204 else draw(st.sampled_from(["length", "chunked", "until-close"]))
    head_lines = [f"HTTP/1.1 {status} Whatever", "Content-Type: application/octet-stream",
                  *(f"X-Filler-{i}: {'v' * size}" for i, size in enumerate(fillers))]
    if big_header:
        head_lines.append("X-Big: " + "b" * big_header)
    if framing == "length":
        declared = max(0, len(payload) + pick([0], [-1, 1, -len(payload), 17]))
        head_lines.append(f"Content-Length: {declared}")
        body = payload
        valid, waits_for_more = declared == len(body), declared > len(body)
        if status == 204:  # no body, whatever Content-Length says: what is sent is more than the response
            body, stray, payload = b"", payload, b""
            valid, waits_for_more = True, False
    elif framing == "chunked":
        head_lines.append("Transfer-Encoding: chunked")
        cuts = draw(st.lists(st.integers(0, len(payload)), max_size=6))
        lies = [pick([0], [0, -1, 1, 2]) for _ in range(4)]
        terminators = [pick([b"\r\n"], [b"\r\n", b"\n", b"", b"XX"]) for _ in range(4)]
        last = pick(list(PROPER_LAST_CHUNKS), [b"0\r\n", b""])
        body = chunked(payload, cuts, lies, terminators, last)
        valid = last in PROPER_LAST_CHUNKS and body == chunked(payload, cuts, [0], [b"\r\n"], last)
        waits_for_more = not valid  # perhaps: a misread chunk size may ask for more
    else:
        body = payload  # ends where the connection closes
        valid, waits_for_more = True, True
    head = ("".join(f"HTTP/1.1 {code} Interim\r\n\r\n" for code in interim)
            + "\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1")
    message = head + body
    if framing != "until-close":  # there it would be body
        stray += pick([b""], [b"", b"\x80garbage", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nother"])
    wire = message + stray
    cut = draw(st.integers(0, len(wire) - 1)) if pick([False], [False, True]) else None
    truncated = cut is not None and cut < len(message)
    if truncated and framing == "until-close" and cut >= len(head):
        payload, truncated = payload[:cut - len(head)], False  # a shorter body, framed by the close all the same
    if cut is not None:
        wire, stray = wire[:cut], stray[:max(0, cut - len(message))]
    # a server that leaves the client waiting closes, or the fetch would only end at the deadline
    keep_alive = cut is None and not waits_for_more and draw(st.booleans())
    few_plain_headers = 101 not in interim and len(interim) <= 3 and len(fillers) <= 50 and big_header <= 8000
    return Served(
        wire=wire, keep_alive=keep_alive, payload=payload,
        must_succeed=few_plain_headers and valid and not truncated and not stray and status < 300,
        must_fail=(101 in interim or status >= 400 or (valid and bool(stray))
                   or (framing == "length" and not valid) or (truncated and (framing == "length" or cut < len(head)))))


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers())
def test_any_framing_yields_the_served_bytes_or_a_clean_failure(server, fetcher, answer):
    result = outcome(fetcher, server.url(server.script(answer.wire, keep_alive=answer.keep_alive)))
    if isinstance(result, FetchError):
        assert result.status == "failed_to_download"
        assert result.error_type in CLEAN_FAILURES, result
        assert not answer.must_succeed, result
    else:
        assert result == answer.payload
        assert not answer.must_fail
    name = uuid.uuid4().hex
    assert outcome(fetcher, server.url(f"/body/{name}")) == served_body(name)
