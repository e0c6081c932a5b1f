"""any2ds's benchmark: any2ds side by side with img2dataset 1.47.0 on web-like JPEGs served by nginx.

Run it with ``python -m benchmarks.run`` (``--help`` for the flags); docs/performance.md
explains what it measures and holds the latest figures.
"""
