"""Politeness per host, end to end and across processes: what loopback servers, one per host name, saw.

Each host is a server on its own loopback address (127.x.y.z: every such address is loopback on
Linux, no DNS needed). The addresses are drawn at random for each test session, so the
machine-wide robots.txt cache of an earlier session never answers for these servers. Nothing
here measures the run's duration: the assertions are on the times the servers recorded.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from any2ds.testing import read_dataset, send_bytes
from any2ds.types import Sample
from any2ds_plugins.http import hosts
from any2ds_plugins.http.fast import FastHttpFetcher
from any2ds_plugins.http.fetcher import HttpFetcher
from any2ds_plugins.http.hosts import HostLimits, HostTable, shared_table, state_directory
from any2ds_plugins.http.robots_txt import ROBOTS_MAX_BYTES, ROBOTS_TXT_REFUSAL
from tests.polling import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.0/8 is all loopback on Linux")

_NETWORK = f"127.{random.randrange(1, 255)}.{random.randrange(0, 255)}"
_next_address = iter(range(1, 255))


def loopback_address() -> str:
    return f"{_NETWORK}.{next(_next_address)}"


def most_at_once(windows: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` windows open at one instant (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    highest = current = 0
    for _, step in events:
        current += step
        highest = max(highest, current)
    return highest


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as web servers do for kept-alive connections (else 40 ms per answer)

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.opened = self.server.owner.connection_opened()  # type: ignore[attr-defined]

    def finish(self):
        super().finish()
        self.opened[2] = time.monotonic()

    def do_GET(self):
        self.server.owner.answer(self)  # type: ignore[attr-defined]


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # 512 threads may connect at once


class HostServer:
    """One host: an HTTP server on its own loopback address, recording every connection and request.

    ``robots``: the (status, body) of /robots.txt. ``delay``: seconds each other answer takes.
    ``throttle``: answer with 429 and ``Retry-After: retry_after`` the first request arriving once
    requests of both shards (paths /s0/..., /s1/...) have arrived, i.e. once both processes are at it.
    """

    def __init__(self, robots: tuple[int, bytes] = (404, b""), delay: float = 0.0, throttle: bool = False,
                 retry_after: int = 2) -> None:
        self.address = loopback_address()
        self.robots = robots
        self.delay = delay
        self.throttle = throttle
        self.shards_seen: set[str] = set()
        self.retry_after = retry_after
        self.robots_fetches = 0
        self.requests: list[tuple[str, float, float]] = []  # path, arrival, answer
        self.connections: list[list[float]] = []  # [opened, last answer, closed (inf while open)]
        self.throttled_at: float | None = None
        self._lock = threading.Lock()
        self._httpd = _Server((self.address, 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"

    def connection_opened(self) -> list[float]:
        record = [time.monotonic(), time.monotonic(), float("inf")]
        with self._lock:
            self.connections.append(record)
        return record

    def answer(self, request: _Handler) -> None:
        arrived = time.monotonic()
        headers = {}
        if request.path == "/robots.txt":
            with self._lock:
                self.robots_fetches += 1
            status, body = self.robots
        else:
            with self._lock:
                throttle = self.throttle and self.throttled_at is None and len(self.shards_seen) == 2
                if throttle:
                    self.throttled_at = float("inf")  # this request answers 429; no other one will
                self.shards_seen.add(request.path.split("/")[1])
            time.sleep(self.delay)
            status, body = 200, b"polite" * 20
            if throttle:
                status, headers = 429, {"Retry-After": str(self.retry_after)}
        # Taken before the answer goes out: the client cannot have it, close and give its slot to
        # another request before this instant, however late this thread runs afterwards.
        answered = time.monotonic()
        with self._lock:
            if request.path != "/robots.txt":
                self.requests.append((request.path, arrived, answered))
            if status == 429:
                self.throttled_at = answered
        request.opened[1] = answered
        send_bytes(request, body, "text/plain", status=status, headers=headers)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def servers():
    started: list[HostServer] = []

    def start(**kwargs) -> HostServer:
        server = HostServer(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


HTTP_FETCHERS = {"http": HttpFetcher, "fast_http": FastHttpFetcher}


@pytest.fixture(params=sorted(HTTP_FETCHERS))
def fetcher_name(request) -> str:
    """Each http fetcher keeps the same limits."""
    return request.param


def run_cli(tmp_path: Path, urls: list[str], shard_size: int, fetcher: str, *flags: str) -> dict[str, dict]:
    """``any2ds download`` with ``fetcher`` in a subprocess with 2 worker processes and the default 256
    threads each (256 transfers in flight for fast_http); returns the metadata rows by URL."""
    table = pa.table({"url": urls})
    pq.write_table(table, tmp_path / "urls.parquet")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    command = [sys.executable, "-m", "any2ds", "download", "--url_list", str(tmp_path / "urls.parquet"),
               "--input_format", "parquet", "--output_folder", str(tmp_path / "out"), "--output_format", "parquet",
               "--processors", "[]", "--processes_count", "2", "--number_sample_per_shard", str(shard_size),
               "--allow_private_networks", "true", "--retries", "0", "--observers", "[]",
               "--fetchers", f"[{fetcher}]", *flags]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    dataset = read_dataset(tmp_path / "out")
    return {row["url"]: row for row in dataset.rows}


# How long after a 429 leaves the server its client may still let a request out (see the test below).
READ_429_SECONDS = 0.25


def test_caps_robots_txt_and_429_are_shared_by_two_processes_of_256_threads(tmp_path, servers, fetcher_name):
    """Connections per host stay under the cap over both processes; robots.txt is fetched once per host and
    its refusals are rows of their own type; a 429 holds back every process's requests to its host."""
    cap = 4
    crowded = servers(delay=0.03)
    rules = servers(robots=(200, b"User-agent: *\nDisallow: /\n\n"
                                 b"User-agent: politebot\nDisallow: /private\nDisallow: /nobot\n"))
    no_robots = servers(robots=(404, b""))
    failing_robots = servers(robots=(503, b""))
    throttling = servers(delay=0.05, throttle=True, retry_after=2)
    shards = []
    for shard in range(2):
        urls = ([crowded.url(f"/s{shard}/{i}") for i in range(200)]
                + [throttling.url(f"/s{shard}/{i}") for i in range(150)]
                + [rules.url(f"/ok/s{shard}/{i}") for i in range(10)]
                + [rules.url(f"/private/s{shard}/{i}") for i in range(5)]
                + [rules.url(f"/nobot/s{shard}/{i}") for i in range(5)]
                + [no_robots.url(f"/s{shard}/{i}") for i in range(5)]
                + [failing_robots.url(f"/s{shard}/{i}") for i in range(5)])
        random.Random(shard).shuffle(urls)
        shards.append(urls)
    rows = run_cli(tmp_path, shards[0] + shards[1], len(shards[0]), fetcher_name,
                   f"--{fetcher_name}.max_connections_per_host", str(cap),
                   "--respect_robots_txt", "true", "--user_agent_token", "politebot")

    everyone = [crowded, rules, no_robots, failing_robots, throttling]
    for server in everyone:
        assert most_at_once([(arrived, answered) for _, arrived, answered in server.requests]) <= cap
        # A connection is open from its first byte to its last answer: a kept-alive connection idling
        # while its client waits for another host would show here as one more open connection.
        assert most_at_once([(opened, last) for opened, last, _ in server.connections]) <= cap
        assert server.robots_fetches == 1
    assert most_at_once([(arrived, answered) for _, arrived, answered in crowded.requests]) == cap  # the cap was reached

    def outcome(server: HostServer, prefix: str) -> set[tuple[str, str | None]]:
        return {(row["status"], row["error_type"]) for url, row in rows.items()
                if url.startswith(server.url(prefix))}

    assert outcome(rules, "/ok/") == {("success", None)}
    assert outcome(rules, "/private/") == outcome(rules, "/nobot/") == {("failed_to_download", ROBOTS_TXT_REFUSAL)}
    assert not [path for path in rules.paths() if not path.startswith("/ok/")]  # refused URLs were never sent
    assert {rows[url]["error_message"] for url in rows if url.startswith(rules.url("/private/"))} == {
        "disallowed by robots.txt"}
    assert outcome(no_robots, "/") == {("success", None)}
    assert outcome(failing_robots, "/") == {("failed_to_download", ROBOTS_TXT_REFUSAL)}
    assert failing_robots.requests == []
    assert outcome(crowded, "/") == {("success", None)}

    # The 429: at most the requests already holding a connection slot when it came (cap - 1) reach
    # the host during its Retry-After; the next ones, from both shards (both processes), wait. The
    # client takes a moment to read the 429 and record the back-off (its thread may wait for the
    # GIL among its process's 256): a slot freed meanwhile may let a request out, so the count starts after
    # READ_429_SECONDS. Without the back-off, 135 requests arrived in the rest of it.
    throttled = throttling.throttled_at
    assert throttled is not None and throttled != float("inf")
    during = [path for path, arrived, _ in throttling.requests
              if throttled + READ_429_SECONDS < arrived < throttled + 2]
    after = [path for path, arrived, _ in throttling.requests if arrived >= throttled + 2]
    before = [path for path, arrived, _ in throttling.requests if arrived < throttled]
    assert len(during) <= cap - 1, len(during)
    assert {path.split("/")[1] for path in before} == {path.split("/")[1] for path in after} == {"s0", "s1"}
    assert len(after) > 100


def test_request_rate_per_host_is_shared_by_two_processes(tmp_path, servers, fetcher_name):
    rate = 8.0
    first, second = servers(), servers()
    urls = [server.url(f"/s{shard}/{i}") for shard in range(2) for server in (first, second) for i in range(12)]
    rows = run_cli(tmp_path, urls, 24, fetcher_name, f"--{fetcher_name}.max_requests_per_second_per_host", str(rate))
    assert {row["status"] for row in rows.values()} == {"success"}
    # Starts are spaced 1/rate apart; an arrival lags its start by a connection's set-up, which a busy
    # machine may stretch: SCHEDULING_SLACK allows for that in every window of WINDOW arrivals.
    window, slack = 5, 0.25
    for server in (first, second):
        arrivals = sorted(arrived for _, arrived, _ in server.requests)
        assert len(arrivals) == 24
        for i in range(len(arrivals) - window + 1):
            assert arrivals[i + window - 1] - arrivals[i] >= (window - 1) / rate - slack
        assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) / rate - slack


# -- the shared table itself, across processes ----------------------------------------------------


def _hold_slots_in_a_loop(key: str, cap: int, threads: int, rounds: int, holding, most) -> None:
    table = shared_table(state_directory())

    def work():
        for _ in range(rounds):
            slot = table.acquire_slot(key, cap)
            with holding.get_lock():
                holding.value += 1
                most.value = max(most.value, holding.value)
            time.sleep(0.002)
            with holding.get_lock():
                holding.value -= 1
            table.release_slot(slot)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_connection_slots_are_shared_by_processes_and_threads():
    context = multiprocessing.get_context("spawn")
    holding, most = context.Value("i", 0), context.Value("i", 0)
    key = f"slots-{random.random()}:80"
    processes = [context.Process(target=_hold_slots_in_a_loop, args=(key, 3, 16, 20, holding, most))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert most.value == 3


def _hold_every_slot_then_wait(key: str, cap: int, ready) -> None:
    table = shared_table(state_directory())
    for _ in range(cap):
        table.acquire_slot(key, cap)
    table.push_back(key, time.time() + 30)
    ready.set()
    time.sleep(300)


def test_a_killed_process_leaks_no_slot_and_its_back_off_stays():
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    key = f"killed-{random.random()}:80"
    holder = context.Process(target=_hold_every_slot_then_wait, args=(key, 2, ready))
    holder.start()
    try:
        assert ready.wait(60)
        table = shared_table(state_directory())
        limits = HostLimits(table, 2, 0)
        assert table.reserve_start(key, 0) > time.time() + 20  # the back-off it set holds for everyone
        base = hosts.SLOT_REGION + hosts.key_hash(key) % (1 << hosts.HOST_HASH_BITS) * hosts.MAX_CONNECTIONS_PER_HOST
        assert [table.locks.try_lock(base + i) for i in range(2)] == [None, None]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    got: list = []
    taker = threading.Thread(target=lambda: got.extend(table.acquire_slot(key, 2) for _ in range(2)), daemon=True)
    taker.start()
    taker.join(10)
    assert len(got) == 2  # both slots of the killed process came back at once
    for slot in got:
        limits.leave(slot)


def test_fast_http_hands_slots_to_its_waiting_attempts_in_order_and_leaks_none():
    """fast_http's line of attempts waiting for a host's slots (cap 2, both held elsewhere): a
    cancelled attempt leaves the line, the others get the slots in order as they are freed, and
    every slot comes back at the end."""
    fetcher = FastHttpFetcher(FastHttpFetcher.Options(max_connections_per_host=2))
    table = fetcher.hosts.table
    key = f"line-{random.random()}:80"
    held = [table.acquire_slot(key, 2) for _ in range(2)]

    async def scenario() -> list[str]:
        got: list[str] = []

        async def attempt(name: str) -> None:
            host = await fetcher._enter_host(key)
            got.append(name)
            await asyncio.sleep(0.05)
            host.owner.leave(host)

        first = asyncio.create_task(attempt("first"))
        await asyncio.sleep(0.05)
        cancelled = asyncio.create_task(attempt("cancelled"))
        await asyncio.sleep(0.05)
        last = asyncio.create_task(attempt("last"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        assert got == [] and len(fetcher._connections().hosts[key].line) == 2
        for slot in held:
            table.release_slot(slot)
        await asyncio.wait_for(asyncio.gather(first, last), 10)
        await asyncio.sleep(0.2)  # the cancelled attempt's waiting thread gives back what it gets
        return got

    try:
        assert asyncio.run(scenario()) == ["first", "last"]
        assert [table.try_acquire_slot(key, 2) is not None for _ in range(2)] == [True, True]
    finally:
        fetcher.close()


def test_fast_http_covers_a_connection_libcurl_opens_beyond_its_slots_with_a_free_slot():
    """libcurl opens a connection for a request when none it keeps is free at that moment, which
    can be before the books show an earlier request over: the host then has more connections than
    slots. With a slot free in the table, the connection takes it at once; else no attempt would
    get in until a slot came (one per second, as others' connections are retired: the benchmark's
    fetches stalled 100-250 ms several times a shard)."""
    fetcher = FastHttpFetcher(FastHttpFetcher.Options(max_connections_per_host=4))
    key = f"cover-{random.random()}:80"
    sockets = [socket.socket() for _ in range(2)]

    class Transfer:
        on_fd = -1
        one_request = False

    async def scenario() -> None:
        connections = fetcher._connections()
        host = await connections.enter(key)
        first, second = Transfer(), Transfer()
        connections.carrying(host, first, ("127.0.0.1", 80, "127.0.0.1", 1001), sockets[0].fileno())
        connections.carried(host, first)
        connections.leave(host)  # its connection idles: the next attempt is admitted to reuse it
        await connections.enter(key)
        connections.carrying(host, second, ("127.0.0.1", 80, "127.0.0.1", 1002), sockets[1].fileno())
        assert (len(host.connections), len(host.slots)) == (2, 2)
        await asyncio.wait_for(connections.enter(key), 1)  # in at once: needs a slot, and one is free

    try:
        asyncio.run(scenario())
    finally:
        fetcher.close()
        for sock in sockets:
            sock.close()


def test_fast_http_keeps_connections_alive_under_the_cap_and_closes_idle_ones(servers):
    """Under a cap of 2, 80 requests from 4 threads go over a few kept-alive connections, at most 2
    open at once; once idle they are closed and both slots are free again."""
    server = servers()
    fetcher = FastHttpFetcher(FastHttpFetcher.Options(max_connections_per_host=2, allow_private_networks=True))
    key = hosts.host_key(server.url("/"))
    try:
        assert [result.attempts for result in fetch_from_threads(fetcher, server.url("/k"), 80, 4)] == [1] * 80
        assert len(server.requests) == 80
        assert len(server.connections) <= 20  # reused: about 2 per HOLD_SECONDS, not 80
        assert most_at_once([(opened, last) for opened, last, _ in server.connections]) <= 2
        table = fetcher.hosts.table
        free: list = []

        def both_slots_taken_back() -> bool:  # the idle connections' slots come back
            slot = table.try_acquire_slot(key, 2)
            if slot is not None:
                free.append(slot)
            return len(free) == 2

        assert wait_until(both_slots_taken_back, 10, 0.02)
        for slot in free:
            table.release_slot(slot)
        # closed, not left open
        assert wait_until(lambda: all(closed < float("inf") for _, _, closed in server.connections), 10, 0.02)
    finally:
        fetcher.close()


def fetch_from_threads(fetcher: FastHttpFetcher, url_prefix: str, count: int, threads: int) -> list:
    """The URLs ``url_prefix/0`` to ``url_prefix/count-1`` fetched by ``fetcher`` from ``threads``
    threads: their results (a fetch that raised has none)."""
    results: list = []

    def work(first: int) -> None:
        for i in range(first, count, threads):
            results.append(fetcher.fetch(Sample(key=str(i), shard_id=0, index=i, url=f"{url_prefix}/{i}")))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def _fetch_for_long(url_prefix: str, count: int, threads: int) -> None:
    """A process fetching ``count`` URLs from ``threads`` threads through one fast_http fetcher (cap 2)."""
    fetcher = FastHttpFetcher(FastHttpFetcher.Options(max_connections_per_host=2, allow_private_networks=True))
    assert len(fetch_from_threads(fetcher, url_prefix, count, threads)) == count
    fetcher.close()


def test_fast_http_keeping_connections_alive_does_not_shut_out_another_process(servers):
    """A process keeping both slots of a host (cap 2) busy with kept-alive connections, with attempts
    always waiting for more, gives slots back within HOLD_SECONDS: a process that starts later is
    served long before the first one is done."""
    server = servers(delay=0.01)
    context = multiprocessing.get_context("spawn")
    busy = context.Process(target=_fetch_for_long, args=(server.url("/a"), 1500, 3))
    busy.start()
    try:
        wait_until(lambda: len(server.requests) >= 50, 60, 0.01)
        assert busy.is_alive() and len(server.requests) >= 50
        later = FastHttpFetcher(FastHttpFetcher.Options(max_connections_per_host=2, allow_private_networks=True))
        try:
            for i in range(2):
                later.fetch(Sample(key=str(i), shard_id=0, index=i, url=server.url(f"/b/{i}")))
        finally:
            later.close()
        busy.join(120)
        assert busy.exitcode == 0
    finally:
        if busy.is_alive():
            busy.kill()
    arrivals = {path: arrived for path, arrived, _ in server.requests}
    first_done = max(arrived for path, arrived in arrivals.items() if path.startswith("/a/"))
    assert len(arrivals) == 1502
    assert max(arrivals["/b/0"], arrivals["/b/1"]) < first_done
    assert most_at_once([(opened, last) for opened, last, _ in server.connections]) <= 2


def test_without_ofd_locks_the_cap_holds_among_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(hosts, "OFD_LOCKS", False)
    table = HostTable(tmp_path)
    holding, most, lock = [0], [0], threading.Lock()

    def work():
        for _ in range(20):
            slot = table.acquire_slot("fallback:80", 3)
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
            time.sleep(0.002)
            with lock:
                holding[0] -= 1
            table.release_slot(slot)

    workers = [threading.Thread(target=work) for _ in range(12)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert most[0] == 3
    table.push_back("fallback:80", time.time() + 30)
    assert table.reserve_start("fallback:80", 0) > time.time() + 20


# -- robots.txt through one fetcher ------------------------------------------------------------------


def fetch_all(urls: list[str], fetcher_name: str, threads: int = 32, **options) -> dict[str, object]:
    """Each URL fetched by a ``fetcher_name`` fetcher called from ``threads`` threads."""
    fetcher = HTTP_FETCHERS[fetcher_name](HttpFetcher.Options(allow_private_networks=True, respect_robots_txt=True,
                                                              timeout=5.0, **options))
    outcomes: dict[str, object] = {}

    def work(i: int) -> None:
        for url in urls[i::threads]:
            try:
                outcomes[url] = fetcher.fetch(Sample(key="k", shard_id=0, index=0, url=url))
            except Exception as error:  # noqa: BLE001  (recorded and asserted on)
                outcomes[url] = error
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        fetcher.close()
    return outcomes


def test_robots_txt_without_token_applies_the_star_group_and_is_fetched_once(servers, fetcher_name):
    server = servers(robots=(200, b"User-agent: *\nDisallow: /private\nAllow: /private/open\n"))
    urls = [server.url(f"/private/{i}") for i in range(20)] + [server.url(f"/private/open/{i}") for i in range(20)]
    outcomes = fetch_all(urls, fetcher_name)
    assert server.robots_fetches == 1
    refused = {url for url, outcome in outcomes.items() if getattr(outcome, "error_type", None) == ROBOTS_TXT_REFUSAL}
    assert refused == set(urls[:20])  # the longest match wins: /private/open is allowed
    assert sorted(server.paths()) == sorted(f"/private/open/{i}" for i in range(20))


def test_unreachable_robots_txt_disallows_and_a_huge_one_is_read_in_part(servers, fetcher_name):
    silent = servers()
    silent.close()  # nothing listens there any more: connection refused
    huge = servers(robots=(200, b"User-agent: *\n" + b"Disallow: /a\n" * (ROBOTS_MAX_BYTES // 12) + b"Disallow: /b\n"))
    outcomes = fetch_all([silent.url("/x"), huge.url("/a"), huge.url("/b")], fetcher_name, threads=1)
    assert outcomes[silent.url("/x")].error_type == ROBOTS_TXT_REFUSAL
    assert "robots.txt unreachable (connect)" in outcomes[silent.url("/x")].message
    assert outcomes[huge.url("/a")].error_type == ROBOTS_TXT_REFUSAL
    assert outcomes[huge.url("/b")].body  # its rule lies past the first 500 KiB, which alone are read
