"""Serve a folder on 127.0.0.1: nginx when installed (a child process with its own config), else Python's server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
NGINX_MISSING = ("nginx is not installed (apt-get install -y nginx): serving with Python's http.server instead, "
                 "which is slower and single-process; figures are not comparable with nginx-served ones")

# HTTP/1.1 so clients keep their connections alive, as with nginx; quiet, on a given port.
PYTHON_SERVER = textwrap.dedent("""
    import sys
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), partial(Handler, directory=sys.argv[1])).serve_forever()
""")


@attrs.frozen
class Server:
    """A running server: the base URL of the folder, its kind, its process (for its CPU time) and, for
    nginx, its access log (for the requests it served)."""

    base_url: str
    kind: str
    process: subprocess.Popen
    access_log: Path | None = None

    def requests_served(self) -> int | None:
        """Requests answered so far (nginx only; None for Python's server)."""
        if self.access_log is None:
            return None
        with self.access_log.open("rb") as log:
            return sum(block.count(b"\n") for block in iter(lambda: log.read(2**20), b""))


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((path for path in NGINX_CANDIDATES if Path(path).exists()), None)


@contextmanager
def serve(folder: Path, work: Path, prefer_nginx: bool = True) -> Iterator[Server]:
    """Serve ``folder`` on a free loopback port for the block."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    nginx = find_nginx() if prefer_nginx else None
    if nginx:
        command, kind = [nginx, "-c", str(_nginx_conf(folder, work, port)), "-e", str(work / "nginx-error.log")], \
            "nginx"
    else:
        if prefer_nginx:
            print(f"benchmark: {NGINX_MISSING}", file=sys.stderr)
        command, kind = [sys.executable, "-c", PYTHON_SERVER, str(folder), str(port)], "python http.server"
    errors = work / "server-stderr.log"
    with errors.open("wb") as stderr:  # a file, not a pipe: a pipe nobody reads would block the server once full
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for(port, process, errors)
        yield Server(f"http://127.0.0.1:{port}", kind, process, work / "access.log" if nginx else None)
    finally:
        process.terminate()
        process.wait()


def _nginx_conf(folder: Path, work: Path, port: int) -> Path:
    """A minimal nginx.conf: one worker in the foreground, keep-alive, temp files in ``work``; the access
    log is one short line per request, to count the requests each run made."""
    temporary = work / "nginx-temp"
    temporary.mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        daemon off;
        master_process off;
        worker_processes 1;
        pid {work}/nginx.pid;
        error_log {work}/nginx-error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            log_format count "$status";
            access_log {work}/access.log count;
            sendfile on;
            tcp_nopush on;
            keepalive_timeout 65;
            keepalive_requests 1000000;
            open_file_cache max=20000 inactive=60s;
            types {{ image/jpeg jpg jpeg; }}
            default_type application/octet-stream;
            client_body_temp_path {temporary}/body;
            proxy_temp_path {temporary}/proxy;
            fastcgi_temp_path {temporary}/fastcgi;
            uwsgi_temp_path {temporary}/uwsgi;
            scgi_temp_path {temporary}/scgi;
            server {{
                listen 127.0.0.1:{port};
                root {folder};
            }}
        }}
    """))
    return conf


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen, errors: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}: "
                               f"{errors.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on 127.0.0.1:{port} within {seconds:.0f} s")
