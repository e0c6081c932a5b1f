"""The machine's compute ceiling: any2ds's own image processing in a tight loop, one process per core.

Each worker builds the ``image`` processor with the benchmark's settings and
calls ``process()`` on the corpus files' bytes, so the ceiling makes the same
decisions as a run (shrink-on-load decoding, EXIF reading, cv2 resize and
encode) and leaves out only what is not image work: HTTP, hashing, writing
shards, thread hand-offs. A run's images/s over this is how close it gets.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path

from any2ds import FetchResult, ProcessError, Sample, SampleResult
from any2ds_plugins.image.processor import ImageOptions, ImageProcessor

from benchmarks.tools import Settings

CHUNK = 32  # files per task: small enough to balance the cores at the end, large enough to be cheap

_processor: ImageProcessor | None = None


def measure_ceiling(folder: Path, names: Sequence[str], settings: Settings, processes: int) -> dict:
    """images/s and CPU ms per image of the processor over ``names``, with ``processes`` workers."""
    options = ImageOptions(image_size=settings.image_size, resize_mode=settings.resize_mode,
                           encode_format=settings.encode_format, encode_quality=settings.encode_quality,
                           extract_exif=settings.extract_exif)
    chunks = [[str(folder / name) for name in names[i:i + CHUNK]] for i in range(0, len(names), CHUNK)]
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_start, initargs=(options,)) as pool:
        pool.map(time.sleep, [0.2] * processes)  # every worker is up and has imported before the clock starts
        start = time.perf_counter()
        done = list(pool.imap_unordered(_process_files, chunks))
        seconds = time.perf_counter() - start
    processed = sum(count for count, _failed, _cpu in done)
    cpu = sum(cpu for _count, _failed, cpu in done)
    return {"processes": processes, "images": processed, "failures": sum(failed for _c, failed, _cpu in done),
            "seconds": seconds, "images_per_second": processed / seconds if seconds else 0.0,
            "cpu_ms_per_image": 1000 * cpu / processed if processed else None}


def _start(options: ImageOptions) -> None:
    global _processor
    _processor = ImageProcessor(options)


def _process_files(paths: list[str]) -> tuple[int, int, float]:
    """(processed, failed, CPU seconds) for one chunk of files."""
    processed = failed = 0
    start = time.process_time()
    for index, path in enumerate(paths):
        body = Path(path).read_bytes()
        result = SampleResult(Sample(key=str(index), shard_id=0, index=index, url=path))
        try:
            _processor.process(FetchResult(body, path), result)
            processed += 1
        except ProcessError:
            failed += 1
    return processed, failed, time.process_time() - start
