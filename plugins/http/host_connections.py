"""fast_http's connections to capped hosts: kept alive, each holding one of its host's connection slots.

Under ``max_connections_per_host`` every open connection to a host holds one of the host's slots
in the machine-wide table (``hosts.HostTable``). The connections of one event loop live in its
libcurl multi handle, which reuses an idle connection to a host before it opens another. For
each host, ``HostConnections`` counts what may hold a connection and keeps that many slots:

- ``connections``: the open connections, each carrying a request or idle;
- ``pending``: the attempts admitted to the host that are not on a connection (about to send a
  request, pacing, or between two hops), each of which may open one.

Slots needed: ``len(connections) + max(0, pending - idle)``. libcurl picks a request's connection
when the request starts, which can be before the books hear that an earlier one ended: it may then
open a connection while the books show one idle, and the host has more connections than slots.
Such a connection takes a free slot from the table at once (else every attempt would wait for slots
held elsewhere, until the next slot came back). An attempt is admitted at once when
that allows one more (an idle connection is there for it), or, for a host's first slot here,
when one is free in the table. Else it waits in a first-come line; for as many attempts as wait,
threads block in the kernel on slots this loop does not hold (each on its own), and whichever
slot arrives goes to the first in line. A slot no longer needed goes to the first in line, else
back to the table. A waiting thread cannot be called off: one whose attempt was served meanwhile
gives back what it gets, and threads are only asked for while the line is longer than the waits.

Kept-alive connections are bounded in time, so that a process never keeps slots for itself:
- libcurl reuses no connection idle for ``IDLE_SECONDS``;
- a host's connections are retired one at a time, so that each lasts about ``HOLD_SECONDS``:
  the request chosen asks libcurl to close its connection after it, and a slot goes back to the
  table before any goes to the line. Threads of other processes blocked on that slot get it as
  well as this process's (this loop asks for none for ``YIELD_SECONDS``);
- a loop that has started no transfer for ``QUIET_SECONDS`` shuts its idle connections down.
Only libcurl closes a connection it may reuse: it skips its health check of a connection checked
within the last second, and would send a request on one shut down under it.

libcurl closes connections without telling (pycurl cannot run a close callback for a handle
that is not in a transfer), so a connection is known by its socket's inode: one whose socket is
gone or is another socket now is forgotten when it is next looked at (after its request, when a
connection opens, or idle, every ``CHECK_SECONDS``). Until then its slot stays held: the count
errs on the side of the cap.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from any2ds_plugins.http.hosts import HostTable

# libcurl closes a connection idle this long instead of reusing it (its MAXAGE_CONN, whole
# seconds), when it next looks for one (at most a second apart while it has transfers).
IDLE_SECONDS = 1
# A host's connections here last about this long: one request in HOLD_SECONDS / connections
# closes its connection after it (libcurl closes it, as it would on ``Connection: close``).
HOLD_SECONDS = 1.0
# After a retired connection's slot goes back to the table, this loop asks for none for this long:
# a thread of another process blocked on it wakes and takes it before one of this loop's scans.
YIELD_SECONDS = 0.05
# How often the books of a host with idle connections are checked for the ones libcurl closed.
CHECK_SECONDS = 0.25
# A loop that has started no transfer for this long has its idle connections shut down: libcurl
# looks at its connections only when a transfer starts, so it has checked none within the last
# second and checks each before it would reuse it.
QUIET_SECONDS = 1.5


class _Connection:
    __slots__ = ("inode", "opened", "address", "idle_since", "carrier")

    def __init__(self, inode: int | None, opened: float, address: tuple) -> None:
        self.inode = inode
        self.opened = opened
        self.address = address  # (remote address, port, local address, port)
        self.idle_since: float | None = None  # None while it carries a request
        self.carrier: Any = None  # the transfer whose request it carries


class HostState:
    """One host's connections on one loop, the slots they hold and the attempts waiting for one."""

    def __init__(self, owner: HostConnections, key: str) -> None:
        self.owner = owner
        self.key = key
        self.slots: list[tuple[int, int]] = []
        self.connections: dict[int, _Connection] = {}  # socket fd -> connection
        self.idle = 0  # connections not carrying a request
        self.pending = 0
        self.owed = 0  # slots to give back to the table before any goes to the line
        self.line: deque[asyncio.Future] = deque()
        self.waits: set[int] = set()  # offsets of the slots threads are blocked on for this host
        self.yield_until = 0.0  # no new thread waits for a slot before this (one was just given back)
        self.retired_at = time.monotonic()  # when a request last retired its connection
        self.sweep: asyncio.TimerHandle | None = None

    def needed(self, pending: int) -> int:
        """Slots needed with ``pending`` attempts off a connection."""
        return len(self.connections) + max(0, pending - self.idle)

    @property
    def empty(self) -> bool:
        return not (self.slots or self.connections or self.pending or self.line or self.waits)


class HostConnections:
    """The capped hosts of one event loop's libcurl multi handle (see the module). Used on its loop only."""

    def __init__(self, table: HostTable, cap: int, loop: asyncio.AbstractEventLoop,
                 wait_pool: Callable[[], DaemonThreads], last_start: Callable[[], float]) -> None:
        self.table = table
        self.last_start = last_start  # when the loop's multi handle last started a transfer
        self.cap = cap
        self.loop = loop
        self.wait_pool = wait_pool
        self.hosts: dict[str, HostState] = {}
        self.closed = False
        # Slots the waiting threads got, for the loop to take: once closed, given back instead.
        self._arrivals: list[tuple[str, int, Future]] = []
        self._arrivals_lock = threading.Lock()

    def _host(self, key: str) -> HostState:
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = HostState(self, key)
        return host

    # -- an attempt's turn at a host ------------------------------------------

    async def enter(self, key: str) -> HostState:
        """Wait until an attempt may use a connection to ``key``: one idle here, or a new slot."""
        host = self._host(key)
        if not host.line and host.needed(host.pending + 1) <= len(host.slots):
            host.pending += 1
            return host
        if not host.slots:  # more slots come through the line: none taken here ahead of others' waiters
            slot = self.table.try_acquire_slot(key, self.cap)
            if slot is not None:
                host.slots.append(slot)
                host.pending += 1
                return host
        turn = self.loop.create_future()
        host.line.append(turn)
        self._ask_for_slots(host)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # admitted as it was cancelled
                self.leave(host)
            else:
                if turn in host.line:
                    host.line.remove(turn)
                self._settle(host)
            raise
        return host

    def leave(self, host: HostState) -> None:
        """The attempt is done with the host."""
        host.pending -= 1
        self._settle(host)

    # -- its requests, as libcurl reports them ---------------------------------

    @staticmethod
    def retires(host: HostState) -> bool:
        """Whether the request about to start closes its connection after it (one in
        HOLD_SECONDS / connections, so that each lasts about HOLD_SECONDS)."""
        now = time.monotonic()
        if now - host.retired_at < HOLD_SECONDS / max(1, len(host.connections)):
            return False
        host.retired_at = now
        return True

    def carrying(self, host: HostState, transfer: Any, address: tuple, new_fd: int) -> None:
        """``transfer``'s request goes out on the connection of ``address`` (its addresses and
        ports), just opened on socket ``new_fd``, else (-1) kept alive here. ``transfer.on_fd``:
        the socket the attempt is on (-1: none, or none known; it then counts as pending)."""
        if new_fd >= 0:  # libcurl closes the dead idle connections before it opens one
            self._drop_idle(host, shut=False)
        fd = new_fd if new_fd >= 0 else next(
            (fd for fd, connection in host.connections.items() if connection.address == address), -1)
        if transfer.on_fd >= 0:  # a request libcurl resends on another connection
            self._put_down(host, transfer)
        if fd < 0:
            return
        connection = host.connections.get(fd)
        if connection is not None and connection.carrier is not None:
            # Its request ended before its attempt heard: libcurl reused the connection, or closed
            # it and gave its number to this new one.
            connection.carrier.on_fd = -1
            connection.carrier = None
            host.pending += 1
        if new_fd >= 0 or connection is None:  # an entry under a new socket's number is a socket closed since
            if connection is not None and connection.idle_since is not None:
                host.idle -= 1
            connection = host.connections[fd] = _Connection(socket_inode(fd), time.monotonic(), address)
        elif connection.idle_since is not None:
            connection.idle_since = None
            host.idle -= 1
        connection.carrier = transfer
        transfer.on_fd = fd
        host.pending -= 1
        if new_fd >= 0:
            self._cover(host)

    def _cover(self, host: HostState) -> None:
        """Slots for the connections libcurl opened beyond the host's slots, taken at once where free."""
        while len(host.connections) > len(host.slots) and not self.closed:
            slot = self.table.try_acquire_slot(host.key, self.cap)
            if slot is None:
                return
            host.slots.append(slot)

    def carried(self, host: HostState, transfer: Any) -> None:
        """``transfer``'s request is over: its attempt is off a connection again."""
        if transfer.on_fd >= 0:
            self._put_down(host, transfer)
            self._settle(host)

    def _put_down(self, host: HostState, transfer: Any) -> None:
        """The request on ``transfer.on_fd`` is over: the connection idles, or is forgotten if
        libcurl closed it."""
        fd, transfer.on_fd = transfer.on_fd, -1
        host.pending += 1
        connection = host.connections.get(fd)
        if connection is None or connection.carrier is not transfer:
            return
        connection.carrier = None
        if connection.inode != socket_inode(fd):  # closed by libcurl
            del host.connections[fd]
            host.owed += transfer.one_request  # retired (see ``retires``): its slot goes back
            return
        connection.idle_since = time.monotonic()
        host.idle += 1

    # -- slots -----------------------------------------------------------------

    def _settle(self, host: HostState) -> None:
        """Slots beyond the host's need: owed ones back to the table, then to the line, then back."""
        while host.owed and len(host.slots) > host.needed(host.pending):
            # The longest held: the next one goes back after it (another process's waiting thread
            # may be blocked on any of them).
            self.table.release_slot(host.slots.pop(0))
            host.owed -= 1
            host.yield_until = time.monotonic() + YIELD_SECONDS
        while host.line and host.needed(host.pending + 1) <= len(host.slots):
            turn = host.line.popleft()
            if not turn.done():
                host.pending += 1
                turn.set_result(None)
        while len(host.slots) > host.needed(host.pending):
            self.table.release_slot(host.slots.pop())
        host.owed = min(host.owed, len(host.slots))
        self._ask_for_slots(host)
        if host.idle and host.sweep is None and not self.closed:
            host.sweep = self.loop.call_later(CHECK_SECONDS, self._sweep, host)
        if host.empty:
            if host.sweep is not None:
                host.sweep.cancel()
                host.sweep = None
            if self.hosts.get(host.key) is host:
                del self.hosts[host.key]

    def _sweep(self, host: HostState) -> None:
        """Forget the idle connections libcurl closed; once the loop has started no transfer for
        QUIET_SECONDS, shut the idle ones down: their slots are no longer needed."""
        host.sweep = None
        self._drop_idle(host, shut=time.monotonic() - self.last_start() >= QUIET_SECONDS)
        self._settle(host)

    def _ask_for_slots(self, host: HostState) -> None:
        """A thread blocked on a slot for each attempt in line, as far as slots not held or waited
        for here go."""
        if len(host.waits) >= len(host.line) or self.closed or time.monotonic() < host.yield_until:
            return
        taken = host.waits | {offset for _, offset in host.slots}
        free = [i for i in range(self.cap) if self.table.slot_offset(host.key, i) not in taken]
        random.shuffle(free)
        for index in free[:len(host.line) - len(host.waits)]:
            host.waits.add(self.table.slot_offset(host.key, index))
            blocked = self.wait_pool().submit(self.table.acquire_slot, host.key, self.cap, index)
            blocked.add_done_callback(lambda done, index=index: self._deliver(host.key, index, done))

    @staticmethod
    def _drop_idle(host: HostState, shut: bool) -> None:
        """Drop the idle connections whose sockets libcurl closed (a server's keep-alive timeout, a
        connection found dead), and with ``shut`` the others too, shut down: their slots are no
        longer needed."""
        for fd, connection in list(host.connections.items()):
            if connection.idle_since is None:
                continue
            ours = connection.inode == socket_inode(fd)
            if ours and not shut:
                continue
            del host.connections[fd]
            host.idle -= 1
            if ours:
                _shut(fd)

    def _deliver(self, key: str, index: int, blocked: Future) -> None:
        """On the waiting thread: the slot it got goes to the loop; once closed, back to the table."""
        if blocked.cancelled():  # the fetcher closed its pools
            return
        with self._arrivals_lock:
            if not self.closed:
                self._arrivals.append((key, index, blocked))
                if len(self._arrivals) == 1:
                    self.loop.call_soon_threadsafe(self._take_arrivals)
                return
        if blocked.exception() is None:
            self.table.release_slot(blocked.result())

    def _take_arrivals(self) -> None:
        with self._arrivals_lock:
            arrivals, self._arrivals = self._arrivals, []
        for key, index, blocked in arrivals:
            self._arrived(key, index, blocked)

    def _arrived(self, key: str, index: int, blocked: Future) -> None:
        error = blocked.exception()
        host = self._host(key)
        host.waits.discard(self.table.slot_offset(key, index))
        if error is None:
            host.slots.append(blocked.result())
        else:  # the lock file failed: the first in line fails with it
            while host.line:
                turn = host.line.popleft()
                if not turn.done():
                    turn.set_exception(error)
                    break
        self._settle(host)

    def close(self) -> None:
        """Give every slot back (the loop's multi handle closes the connections)."""
        with self._arrivals_lock:
            self.closed = True
            arrivals, self._arrivals = self._arrivals, []
        for _key, _index, blocked in arrivals:
            if blocked.exception() is None:
                self.table.release_slot(blocked.result())
        for host in self.hosts.values():
            if host.sweep is not None:
                host.sweep.cancel()
            for slot in host.slots:
                self.table.release_slot(slot)
            host.slots.clear()
        self.hosts.clear()


def socket_inode(fd: int) -> int | None:
    """The inode of the socket ``fd`` is now (None if closed): tells a connection's socket from a
    later socket given the same number."""
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def _shut(fd: int) -> None:
    """Close the connection on ``fd`` (both ways) without closing the descriptor, which libcurl
    owns: libcurl finds it dead when it next checks it, and closes it (only for a connection it
    has not checked within the last second: see the module)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


class DaemonThreads:
    """Up to ``count`` daemon threads running calls submitted: the waits for slots. A thread blocked
    in the kernel cannot be called off, and must not keep the process from exiting (the threads of
    a ``ThreadPoolExecutor`` are joined at exit)."""

    def __init__(self, count: int, name: str) -> None:
        self.count = count
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = self._free = self._queued = 0

    def submit(self, function: Callable, *args) -> Future:
        future: Future = Future()
        with self._lock:
            self._calls.put((future, function, args))
            self._queued += 1
            if self._queued > self._free and self._threads < self.count:
                self._threads += 1
                self._free += 1
                threading.Thread(target=self._work, name=f"{self.name}_{self._threads}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            with self._lock:
                self._queued -= 1
                self._free -= 1
            future, function, args = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as error:  # noqa: BLE001 - handed to the waiting attempt
                    future.set_exception(error)
            with self._lock:
                self._free += 1

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        """Cancel the calls not started; each thread ends once free (``wait`` is not supported)."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call[0].cancel()
                with self._lock:
                    self._queued -= 1
        for _ in range(self.count):
            self._calls.put(None)
