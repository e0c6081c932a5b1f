"""Politeness per host, shared by every thread and process of a machine: connection slots, pacing, back-off.

A host is a host name and port (``example.com:443``). Every process of a
user on one machine shares one state directory (``state_directory()``), so
two workers of a run, two Spark executors on one node, or two runs at once
count against the same limits. The sharing is done by the kernel:

- **Connection slots** are open-file-description (OFD) locks on bytes of a
  lock file: a host capped at ``n`` connections has ``n`` slot bytes, and a
  request holds an exclusive lock on one of them, through a file
  description of its own, from before it connects until its connection is
  closed. The kernel drops an OFD lock when its file description closes,
  which includes its process dying, SIGKILL too: no slot can leak, so there
  are no leases to expire and nothing to clean up. A request finding every
  slot taken blocks in the kernel on one of them, chosen at random (no CPU
  spent polling; not first-come-first-served, but no process is favoured).
- **Pacing and back-off** are one "next start" time per host (wall clock) in
  a shared-memory table: a request starts no earlier than it, and moves it
  on by ``1 / requests_per_second``; a 429, a 503 or a ``Retry-After`` pushes
  it back for everyone. Entries are updated under an OFD lock on the entry's
  bucket; a table entry whose time has passed holds no information, so the
  table stays small (4 MiB, sparse) however many hosts a run meets.

OFD locks are Linux's (3.15+). Where they are missing, the slots and the
table are shared by the threads of one process only (``OFD_LOCKS`` false).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import mmap
import os
import random
import stat
import struct
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
# Lock file regions: connection slots, one byte per robots.txt origin (robots_txt), table buckets.
SLOT_REGION = 0
MAX_CONNECTIONS_PER_HOST = 1024  # slot bytes per host
ROBOTS_REGION = 1 << 60
TABLE_REGION = 1 << 61
HOST_HASH_BITS = 50  # a host's slots: (hash << 10) + i, below ROBOTS_REGION
# The pacing table: buckets of ways, each way a (host tag, next start) pair.
TABLE_BUCKETS = 1 << 16
TABLE_WAYS = 4
_WAY = struct.Struct("<Qd")
_BUCKET_BYTES = _WAY.size * TABLE_WAYS
# struct flock as Linux lays it out for OFD locks (l_type, l_whence, l_start, l_len, l_pid = 0).
_FLOCK = "hhqqi"
OFD_LOCKS = hasattr(fcntl, "F_OFD_SETLK")


def host_key(url: str) -> str:
    """``host:port`` of an http(s) URL, lower-cased, with the scheme's default port when none is given."""
    return authority(urlsplit(url))


def port_of(parts: SplitResult) -> int:
    """The port an http(s) URL goes to: its own, else its scheme's default."""
    return parts.port or DEFAULT_PORTS.get(parts.scheme, 80)


def authority(parts: SplitResult) -> str:
    """``host:port`` of a split URL (see ``host_key``)."""
    try:
        port = parts.port
    except ValueError:  # an invalid port: the request itself will fail
        port = None
    return f"{(parts.hostname or '').lower()}:{port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)}"


@functools.lru_cache(maxsize=1024)  # a request hashes its host's key about 11 times (slot offsets, start times)
def key_hash(key: str) -> int:
    """A stable 64-bit hash of a host key (the same in every process, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def state_directory() -> Path:
    """This user's directory for state shared by the processes of this machine, created private (0700).

    A path someone else owns, that others may write, or that is a symlink is
    not used: the state then lives in a fresh private directory of this
    process, shared with no other (with a warning).
    """
    base = Path(tempfile.gettempdir()) / f"any2ds-{os.getuid()}"
    try:
        for folder in (base, base / "http"):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)
            info = os.lstat(folder)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise PermissionError(f"{folder} is not a private directory of this user")
        return base / "http"
    except OSError as exc:
        warnings.warn(f"any2ds: per-host limits are per process only: {exc}", stacklevel=2)
        return Path(tempfile.mkdtemp(prefix="any2ds-http-"))


class SharedLocks:
    """Exclusive locks on bytes of one file, each owned by a file description of its own.

    OFD locks belong to a file description, not to a thread or a process, so
    each held lock gets a description from a pool: two threads of one
    process exclude each other as two processes do. Without OFD locks (not
    Linux) the locks are this process's only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._free: list[int] = []
        self._opened: set[int] = set()
        self._pool_lock = threading.Lock()
        self._held_here: set[int] = set()  # without OFD locks: the offsets locked in this process
        self._released = threading.Condition(self._pool_lock)

    def try_lock(self, offset: int) -> int | None:
        """A descriptor holding the lock on ``offset``, or None if someone holds it."""
        if not OFD_LOCKS:
            with self._released:
                if offset in self._held_here:
                    return None
                self._held_here.add(offset)
                return -1
        fd = self._take()
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
        except OSError as exc:
            self._give_back(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    def lock(self, offset: int) -> int:
        """A descriptor holding the lock on ``offset``, waiting as long as it takes."""
        if not OFD_LOCKS:
            with self._released:
                self._released.wait_for(lambda: offset not in self._held_here)
                self._held_here.add(offset)
                return -1
        fd = self._take()
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, offset))
        except BaseException:
            self._give_back(fd)
            raise
        return fd

    def unlock(self, fd: int, offset: int) -> None:
        if not OFD_LOCKS:
            with self._released:
                self._held_here.discard(offset)
                self._released.notify_all()
            return
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, offset))
        self._give_back(fd)

    @contextlib.contextmanager
    def held(self, offset: int) -> Iterator[None]:
        fd = self.lock(offset)
        try:
            yield
        finally:
            self.unlock(fd, offset)

    def _take(self) -> int:
        with self._pool_lock:
            if self._free:
                return self._free.pop()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._opened.add(fd)
            return fd

    def _give_back(self, fd: int) -> None:
        with self._pool_lock:
            self._free.append(fd)

    def forget(self) -> None:
        """In a forked child: the inherited descriptors share the parent's locks; closing the child's
        copies leaves the parent's locks as they are, and the child's own locks need new ones."""
        for fd in self._opened:
            os.close(fd)
        self._free, self._opened = [], set()
        self._pool_lock = threading.Lock()
        self._held_here = set()
        self._released = threading.Condition(self._pool_lock)


def _slot_base(key: str) -> int:
    """The offset of ``key``'s first connection slot in the lock file."""
    return SLOT_REGION + (key_hash(key) % (1 << HOST_HASH_BITS)) * MAX_CONNECTIONS_PER_HOST


def _flock(kind: int, offset: int) -> bytes:
    """A ``struct flock`` for one byte at ``offset`` (l_pid 0, as OFD locks require)."""
    return struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)


class HostTable:
    """The machine's per-host state: connection slots and next start times (see the module)."""

    def __init__(self, directory: Path) -> None:
        self.locks = SharedLocks(directory / "locks")
        self._table_path = directory / "hosts-table"
        self._table: mmap.mmap | None = None
        self._table_lock = threading.Lock()
        self._map_lock = threading.Lock()

    # -- connection slots --------------------------------------------------

    def acquire_slot(self, key: str, cap: int, wait_on: int | None = None) -> tuple[int, int]:
        """Hold one of ``key``'s ``cap`` connection slots, waiting in the kernel if all are taken: for
        slot number ``wait_on``, or one chosen at random."""
        slot = self.try_acquire_slot(key, cap)
        if slot is not None:
            return slot
        offset = self.slot_offset(key, random.randrange(cap) if wait_on is None else wait_on)
        return self.locks.lock(offset), offset

    @staticmethod
    def slot_offset(key: str, index: int) -> int:
        """Where ``key``'s slot number ``index`` is in the lock file (a held slot is ``(fd, offset)``)."""
        return _slot_base(key) + index

    def try_acquire_slot(self, key: str, cap: int) -> tuple[int, int] | None:
        """Hold one of ``key``'s ``cap`` connection slots if one is free, without waiting."""
        base = _slot_base(key)
        first = random.randrange(cap)  # spread holders over the slots: fewer collisions when trying them
        for i in range(cap):
            offset = base + (first + i) % cap
            fd = self.locks.try_lock(offset)
            if fd is not None:
                return fd, offset
        return None

    def release_slot(self, slot: tuple[int, int]) -> None:
        self.locks.unlock(*slot)

    # -- next start times --------------------------------------------------

    def reserve_start(self, key: str, interval: float) -> float:
        """The time (``time.time()``) the next request to ``key`` may start; the one after it may
        start ``interval`` seconds later."""
        if interval <= 0:  # nothing to write: read without the lock (a torn read delays one request at worst)
            return max(time.time(), self._peek(key))
        with self._entry(key) as (now, next_start, store):
            start = max(now, next_start)
            store(start + interval)
        return start

    def push_back(self, key: str, until: float) -> None:
        """No request to ``key`` starts before ``until``."""
        with self._entry(key) as (_now, next_start, store):
            if until > next_start:
                store(until)

    def _peek(self, key: str) -> float:
        """``key``'s next start time, 0 if the table has none."""
        tag, offset = self._place(key)
        table = self._mapped()
        for way in range(TABLE_WAYS):
            way_tag, next_start = _WAY.unpack_from(table, offset + way * _WAY.size)
            if way_tag == tag:
                return next_start
        return 0.0

    @staticmethod
    def _place(key: str) -> tuple[int, int]:
        """``key``'s tag and the offset of its bucket in the table."""
        tag = key_hash(key) or 1  # 0 marks a way never used
        return tag, (tag >> 32) % TABLE_BUCKETS * _BUCKET_BYTES

    @contextlib.contextmanager
    def _entry(self, key: str) -> Iterator[tuple[float, float, Callable[[float], None]]]:
        """``(now, next start, store)`` for ``key``'s entry, under its bucket's lock.

        The entry is the way tagged with the key; else a way whose time has
        passed (which says nothing); else, all four being live for other
        hosts, the one ending soonest is taken over.
        """
        tag, offset = self._place(key)
        with self._table_lock, self.locks.held(TABLE_REGION + offset // _BUCKET_BYTES):
            table = self._mapped()
            now = time.time()
            ways = [_WAY.unpack_from(table, offset + w * _WAY.size) for w in range(TABLE_WAYS)]
            mine = next((w for w, (t, _) in enumerate(ways) if t == tag), None)
            if mine is None:
                mine = min(range(TABLE_WAYS), key=lambda w: ways[w][1])
                next_start = now
            else:
                next_start = ways[mine][1]

            def store(value: float) -> None:
                _WAY.pack_into(table, offset + mine * _WAY.size, tag, value)

            yield now, next_start, store

    def _mapped(self) -> mmap.mmap:
        if self._table is not None:
            return self._table
        with self._map_lock:
            if self._table is not None:
                return self._table
            size = TABLE_BUCKETS * _BUCKET_BYTES
            fd = os.open(self._table_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)  # sparse: zeros, i.e. empty ways
                self._table = mmap.mmap(fd, size) if OFD_LOCKS else mmap.mmap(-1, size)
            finally:
                os.close(fd)
        return self._table

    def forget(self) -> None:
        self.locks.forget()
        self._table_lock = threading.Lock()
        self._map_lock = threading.Lock()


_TABLES: dict[Path, HostTable] = {}
_TABLES_LOCK = threading.Lock()


def shared_table(directory: Path) -> HostTable:
    """This process's one ``HostTable`` on ``directory`` (all fetchers of the process share it)."""
    with _TABLES_LOCK:
        table = _TABLES.get(directory)
        if table is None:
            table = _TABLES[directory] = HostTable(directory)
        return table


def _forget_after_fork() -> None:
    for table in _TABLES.values():
        table.forget()


os.register_at_fork(after_in_child=_forget_after_fork)


class HostLimits:
    """What a fetcher imposes on each host: at most ``max_connections`` at once (0: no cap) and
    at most ``requests_per_second`` request starts (0: no limit), plus everyone's back-off."""

    def __init__(self, table: HostTable, max_connections: int, requests_per_second: float) -> None:
        self.table = table
        self.max_connections = max_connections
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0

    def enter(self, key: str) -> tuple[int, int] | None:
        """Wait for a connection slot on ``key``, then for its next start time; returns the slot."""
        slot = self.table.acquire_slot(key, self.max_connections) if self.max_connections else None
        try:
            delay = self.start_delay(key)
            if delay > 0:
                time.sleep(delay)
        except BaseException:
            self.leave(slot)
            raise
        return slot

    def start_delay(self, key: str) -> float:
        """Seconds until the next request to ``key`` may start, that start taken (the pacing and
        everyone's back-off); call it holding a slot."""
        return self.table.reserve_start(key, self.interval) - time.time()

    def leave(self, slot: tuple[int, int] | None) -> None:
        if slot is not None:
            self.table.release_slot(slot)

    def slow_down(self, key: str, seconds: float) -> None:
        """No request to ``key`` starts in the next ``seconds`` (a 429, a 503, a Retry-After)."""
        self.table.push_back(key, time.time() + seconds)


class HostTurn:
    """A thread's turn at one host at a time: ``go(url)`` leaves the current host and waits for the URL's.

    The ``http`` fetcher's: it closes a request's connection before its turn ends (under a cap it
    keeps none alive), so the slot it gives back is a connection closed. ``fast_http`` keeps its
    connections alive and counts them itself (``host_connections``).
    """

    def __init__(self, limits: HostLimits) -> None:
        self.limits = limits
        self.key: str | None = None
        self._slot: tuple[int, int] | None = None

    def go(self, url: str) -> None:
        key = host_key(url)
        if key == self.key:
            return
        self.leave()
        self._slot = self.limits.enter(key)
        self.key = key

    def leave(self) -> None:
        if self.key is None:
            return
        slot, self._slot, self.key = self._slot, None, None
        self.limits.leave(slot)

    def __enter__(self) -> HostTurn:
        return self

    def __exit__(self, *exc_info) -> None:
        self.leave()
