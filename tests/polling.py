"""Waiting in tests for something another thread, process or server does: one polling loop."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], seconds: float, interval: float = 0.05) -> bool:
    """Call ``condition`` every ``interval`` seconds until it returns a true value or ``seconds``
    have passed; whether it did. The caller asserts, with the message only it can give."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
