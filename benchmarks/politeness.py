"""What per-host politeness costs per request: the shared table alone, then whole fetches on loopback.

    python -m benchmarks.politeness

1. ``HostTurn.go`` + ``leave`` on one thread, no contention: a slot (OFD lock and unlock) and a
   table look-up (a bucket lock, a read), for a cap only, then a cap and a rate.
2. Fetches of a 1 KiB body from a loopback server by 32 threads of one ``HttpFetcher``: no cap
   (connections kept alive), the default cap (a connection per request), and the cap with
   robots.txt (cached after the first request): requests per second and CPU per request
   of the client process (the server runs in another).
"""

from __future__ import annotations

import multiprocessing
import random
import resource
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from any2ds import Sample
from any2ds_plugins.http.fetcher import HttpFetcher
from any2ds_plugins.http.hosts import HostLimits, HostTurn, shared_table, state_directory

BODY = b"x" * 1024


def table_cost(rounds: int = 50_000) -> None:
    table = shared_table(state_directory())
    for label, limits in (("cap 32", HostLimits(table, 32, 0)), ("cap 32 + 1e6 req/s", HostLimits(table, 32, 1e6))):
        urls = [f"http://bench-{random.random()}.example:80/x" for _ in range(1000)]
        start = time.perf_counter()
        for i in range(rounds):
            turn = HostTurn(limits)
            turn.go(urls[i % len(urls)])
            turn.leave()
        print(f"table, {label}: {(time.perf_counter() - start) / rounds * 1e6:.1f} us per request")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"" if self.path == "/robots.txt" else BODY
        self.send_response(404 if self.path == "/robots.txt" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(ports) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    ports.put(server.server_address[1])
    server.serve_forever()


def fetch_cost(requests_count: int = 6000, threads: int = 32) -> None:
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=_serve, args=(ports,), daemon=True)  # its CPU is not counted
    server.start()
    url = f"http://127.0.0.1:{ports.get()}/image"
    for label, options in (("no cap (keep-alive)", {"max_connections_per_host": 0}),
                           ("cap 32 (default)", {}),
                           ("cap 32 + robots.txt", {"respect_robots_txt": True})):
        fetcher = HttpFetcher(HttpFetcher.Options(allow_private_networks=True, **options))
        fetcher.fetch(Sample(key="0", shard_id=0, index=0, url=url))

        def work() -> None:
            for i in range(requests_count // threads):
                fetcher.fetch(Sample(key="0", shard_id=0, index=i, url=url))

        workers = [threading.Thread(target=work) for _ in range(threads)]
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
        done = requests_count // threads * threads
        print(f"fetch, {label}: {done / wall:.0f} requests/s, {used / done * 1e6:.0f} us CPU per request "
              f"(client process)")
        fetcher.close()
    server.terminate()


if __name__ == "__main__":
    table_cost()
    fetch_cost()
