"""The loopback HTTP server of the tests, now public as ``any2ds.testing.LocalHTTPServer``."""

from any2ds.testing import LocalHTTPServer, send_bytes

__all__ = ["LocalHTTPServer", "send_bytes"]
