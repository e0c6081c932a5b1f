"""robots.txt (RFC 9309), when ``respect_robots_txt`` is set: fetched once per site, cached for every
thread and process of the machine, checked before each request.

Rules are parsed and matched by protego (Scrapy's robots.txt parser, maintained, pure Python):
it implements RFC 9309's matching (the longest matching rule wins, Allow on a tie, ``*`` and
``$`` in paths), which ``urllib.robotparser`` does not (it takes the first matching rule and
knows no wildcards). Rules are matched on ``user_agent_token``; without one, only the ``*``
group applies.

A site is an origin (scheme, host, port), as robots.txt's scope. The first thread needing a
site's robots.txt takes the site's lock (an OFD lock, ``hosts.SharedLocks``) and fetches it;
every other thread, in any process, waits for the lock, then reads the verdict from the cache
directory. What a fetch says, by the usual convention (RFC 9309 section 2.3.1):

- 2xx: its rules, for ``RULES_SECONDS`` (24 h, the RFC's longest; only the first
  ``ROBOTS_MAX_BYTES`` are read, as the RFC allows);
- 4xx but 429 (none, forbidden, gone...): no restriction, for ``RULES_SECONDS``;
- 429, 5xx, a timeout or a connection failure: unreachable, so everything is disallowed, for
  ``UNREACHABLE_SECONDS``, then robots.txt is fetched again.

A refused URL fails with error type ``ROBOTS_TXT_REFUSAL`` and is never retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs
from protego import Protego

from any2ds import FetchError
from any2ds_plugins.http.hosts import HOST_HASH_BITS, ROBOTS_REGION, SharedLocks, authority, key_hash
from any2ds_plugins.http.retry import HTTPStatusError

ROBOTS_TXT_REFUSAL = "opt_out"  # the error type of every row robots.txt refuses, as of an X-Robots-Tag refusal
ROBOTS_MAX_BYTES = 500 * 1024
RULES_SECONDS = 24 * 3600.0
UNREACHABLE_SECONDS = 600.0
MEMORY_ENTRIES = 4096  # parsed robots.txt kept per process
PRUNE_EVERY = 3600.0  # seconds between sweeps of expired cache files (one process of the machine sweeps)


@attrs.frozen
class RobotsAnswer:
    """What fetching a robots.txt gave: an HTTP status and body, or no answer (``status`` None, ``problem``
    the error type)."""

    status: int | None
    body: bytes = b""
    problem: str = ""

    @classmethod
    def of_failure(cls, error: FetchError) -> RobotsAnswer:
        """What a robots.txt fetch that failed with ``error`` answered: its error status; a 404
        for a redirect loop or one off http(s) (RFC 9309 treats the file as unavailable); else no
        answer (the site is unreachable)."""
        if isinstance(error, HTTPStatusError):
            return cls(error.http_status)
        if error.error_type == "redirect":
            return cls(404)
        return cls(None, problem=error.error_type)


@attrs.frozen
class Verdict:
    """A site's robots.txt as it applies until ``expires``: its ``text`` (rules), everything allowed, or
    everything disallowed because it was unreachable (``unreachable`` says how)."""

    expires: float
    text: str | None = None
    unreachable: str | None = None
    _rules: Protego | None = attrs.field(default=None, eq=False)

    @classmethod
    def from_answer(cls, answer: RobotsAnswer, now: float) -> Verdict:
        status = answer.status
        if status is not None and 200 <= status < 300:
            return cls(now + RULES_SECONDS, text=answer.body[:ROBOTS_MAX_BYTES].decode("utf-8", "replace"))
        if status is not None and 400 <= status < 500 and status != 429:
            return cls(now + RULES_SECONDS)
        return cls(now + UNREACHABLE_SECONDS, unreachable=f"HTTP {status}" if status is not None else answer.problem)

    def refusal(self, url: str, agent: str) -> FetchError | None:
        if self.unreachable is not None:
            return FetchError(f"robots.txt unreachable ({self.unreachable}): the site is disallowed for now",
                              retryable=False, error_type=ROBOTS_TXT_REFUSAL)
        if self.text is None:
            return None
        rules = self._rules
        if rules is None:
            rules = Protego.parse(self.text)
            object.__setattr__(self, "_rules", rules)
        if rules.can_fetch(url, agent):
            return None
        return FetchError("disallowed by robots.txt", retryable=False, error_type=ROBOTS_TXT_REFUSAL)

    def to_json(self) -> str:
        return json.dumps({"expires": self.expires, "text": self.text, "unreachable": self.unreachable})

    @classmethod
    def from_json(cls, data: str) -> Verdict:
        values = json.loads(data)
        return cls(float(values["expires"]), text=values["text"], unreachable=values["unreachable"])


def site_of(url: str) -> str:
    """``scheme://host:port`` of a URL, robots.txt's scope."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{authority(parts)}"


class RobotsTxt:
    """The robots.txt verdicts a fetcher applies: a small memory cache per process over the machine's
    cache directory, filled by ``fetch(robots_url)`` once per site."""

    def __init__(self, directory: Path, locks: SharedLocks, token: str | None) -> None:
        self.directory = directory
        self.locks = locks
        self.agent = token or "*"
        self._memory: OrderedDict[str, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def refusal(self, url: str, fetch: Callable[[str], RobotsAnswer]) -> FetchError | None:
        """The error refusing ``url``, or None if robots.txt allows it."""
        if urlsplit(url).path == "/robots.txt":
            return None
        return self._verdict(site_of(url), fetch).refusal(url, self.agent)

    def _verdict(self, site: str, fetch: Callable[[str], RobotsAnswer]) -> Verdict:
        now = time.time()
        with self._lock:
            verdict = self._memory.get(site)
            if verdict is not None and verdict.expires > now:
                self._memory.move_to_end(site)
                return verdict
        path = self._path(site)
        verdict = self._read(path, now)
        if verdict is None:
            with self.locks.held(ROBOTS_REGION + key_hash(site) % (1 << HOST_HASH_BITS)):
                verdict = self._read(path, time.time())  # another thread or process may have fetched it
                if verdict is None:
                    verdict = Verdict.from_answer(fetch(f"{site}/robots.txt"), time.time())
                    self._write(path, verdict)
        with self._lock:
            self._memory[site] = verdict
            self._memory.move_to_end(site)
            while len(self._memory) > MEMORY_ENTRIES:
                self._memory.popitem(last=False)
        return verdict

    def _path(self, site: str) -> Path:
        digest = hashlib.sha256(site.encode()).hexdigest()
        return self.directory / digest[:2] / digest[2:]

    @staticmethod
    def _read(path: Path, now: float) -> Verdict | None:
        """The cached verdict, if there is one still valid (a damaged file counts as none)."""
        try:
            verdict = Verdict.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return verdict if verdict.expires > now else None

    def _write(self, path: Path, verdict: Verdict) -> None:
        """Store atomically, so a reader sees the whole verdict or none; now and then sweep expired ones."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(verdict.to_json())
        os.replace(temporary, path)
        self._maybe_prune()

    def _maybe_prune(self) -> None:
        marker = self.directory / ".pruned"
        try:
            if time.time() - marker.stat().st_mtime < PRUNE_EVERY:
                return
        except FileNotFoundError:
            pass
        marker.touch()
        threading.Thread(target=self._prune, name="any2ds-robots-prune", daemon=True).start()

    def _prune(self) -> None:
        """Delete cache files older than any verdict lives (they are 24 h past their fetch)."""
        oldest = time.time() - RULES_SECONDS
        for folder in self.directory.iterdir():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                try:
                    if entry.stat().st_mtime < oldest:
                        os.unlink(entry.path)
                except OSError:
                    pass
