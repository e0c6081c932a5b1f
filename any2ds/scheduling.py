"""Which threads of a worker give way: the ones that coordinate and fetch, to the ones that process.

A worker's processing threads have the CPU work (decoding, resizing, encoding); the flow's thread
and the fetch loop wake thousands of times a run, each time for a few dozen microseconds. Under
Linux's default policy each such wake may preempt the processing thread on that core, which then
refills its caches: 16,000-19,000 preemptions in a 10,000-image run on 2 cores, 7,400-10,500 with
this module. ``SCHED_BATCH`` keeps a thread's fair share of the CPU but lets its wakes wait for
the running thread's time slice to end; the bodies in flight give the flow and the fetches that
slack.

Only threads this process runs for any2ds are changed, and only from the default policy: a
process started under another one (``chrt``) keeps it. Threads inherit their creator's policy,
so the processing threads, started by the flow's thread, take the default one back
(:func:`restore_default_policy`). Off Linux both are no-ops.
"""

from __future__ import annotations

import os

_BATCH = getattr(os, "SCHED_BATCH", None)
_OTHER = getattr(os, "SCHED_OTHER", None)
_gave_way = False  # whether a thread of this process was moved to SCHED_BATCH here


def give_way() -> None:
    """Run the calling thread under ``SCHED_BATCH`` if it runs under the default policy: its wakes
    no longer preempt the processing threads. Threads it starts inherit it."""
    global _gave_way
    if _BATCH is None:
        return
    try:
        if os.sched_getscheduler(0) == _OTHER:
            os.sched_setscheduler(0, _BATCH, os.sched_param(0))
            _gave_way = True
    except OSError:  # a sandbox refusing the call: the default policy stays
        pass


def restore_default_policy() -> None:
    """Put the calling thread back under the default policy if it inherited ``SCHED_BATCH`` from
    a thread :func:`give_way` moved (a processing thread started by the flow's thread)."""
    if not _gave_way:
        return
    try:
        if os.sched_getscheduler(0) == _BATCH:
            os.sched_setscheduler(0, _OTHER, os.sched_param(0))
    except OSError:
        pass
