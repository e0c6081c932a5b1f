"""PSNR of any2ds's outputs against a full-resolution reference, to check that its speed costs no quality.

The reference decodes each source at full resolution with Pillow (no
``draft``, so no shrink-on-load), applies EXIF orientation, then the same
geometry and interpolation (any2ds's resize plan, applied as with
``exact_resize``: one cv2 resize at the exact ratio, as img2dataset) and the
same encoding (cv2 JPEG at the run's quality). Both are decoded and compared
pixel by pixel. Images any2ds neither shrinks on load nor downscales by area
through twice the target size (``resize.AREA_BY_HALVING_MAX_RATIO``) come out
identical; the mean is taken over the others (those that differ).
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from PIL import Image, ImageOps

from any2ds_plugins.image.geometry import plan_resize
from any2ds_plugins.image.resize import crop_or_pad, scale

from benchmarks.tools import Settings

MEAN_TARGET_DB = 40.0  # issue 14's targets
MIN_TARGET_DB = 30.0
WORST_LISTED = 5  # the lowest-PSNR images (of those that differ), named in the report to look at


def psnr_report(output_folder: Path, corpus: Path, settings: Settings, processes: int) -> dict:
    """Mean and minimum PSNR (dB) of the webdataset shards in ``output_folder`` against their references."""
    jobs = [(str(corpus / name), data, settings) for name, data in _outputs(output_folder, settings.encode_format)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        values = pool.map(_psnr_of, jobs, chunksize=16)
    named = zip(values, (Path(source).name for source, _data, _settings in jobs))
    worst = sorted((value, name) for value, name in named if value != math.inf)[:WORST_LISTED]
    differing = [value for value in values if math.isfinite(value)]
    mean = float(np.mean(differing)) if differing else math.inf
    lowest = min(values) if values else math.nan
    return {"compared": len(values), "identical": len(values) - len(differing),
            "mean_db_over_differing": mean, "min_db": lowest,
            "worst": [{"image": name, "db": value} for value, name in worst],
            "targets": {"mean_db": MEAN_TARGET_DB, "min_db": MIN_TARGET_DB},
            "passed": bool(values) and mean >= MEAN_TARGET_DB and lowest >= MIN_TARGET_DB}


def _outputs(output_folder: Path, extension: str) -> Iterator[tuple[str, bytes]]:
    """(source file name, stored image bytes) of every sample in the folder's tar shards."""
    for shard in sorted(output_folder.glob("*.tar")):
        images, sources = {}, {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                if suffix == extension:
                    images[key] = tar.extractfile(member).read()
                elif suffix == "json":
                    url = json.loads(tar.extractfile(member).read())["url"]
                    sources[key] = Path(urlsplit(url).path).name
        for key, data in images.items():
            yield sources[key], data


def _psnr_of(job: tuple[str, bytes, Settings]) -> float:
    source, stored, settings = job
    produced = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = cv2.imdecode(np.frombuffer(reference(Path(source).read_bytes(), settings), np.uint8),
                            cv2.IMREAD_UNCHANGED)
    if produced.shape != expected.shape:
        return -math.inf  # a geometry difference is a failure, whatever the pixels
    return psnr(produced, expected)


def psnr(produced: np.ndarray, expected: np.ndarray) -> float:
    """PSNR (dB) of 8-bit ``produced`` against ``expected``, same shape; infinite when identical."""
    error = np.mean((produced.astype(np.float64) - expected.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0 ** 2 / error)


def reference(body: bytes, settings: Settings) -> bytes:
    """The output a full-resolution decode gives: same geometry, interpolation and encoding as any2ds."""
    with Image.open(io.BytesIO(body)) as opened:
        opened.load()
        upright = ImageOps.exif_transpose(opened)
    pixels = np.asarray(upright if upright.mode in ("RGB", "L") else upright.convert("RGB"))
    height, width = pixels.shape[:2]
    plan = plan_resize(width, height, image_size=settings.image_size, resize_mode=settings.resize_mode,
                       resize_only_if_bigger=False, downscale_interpolation="area",
                       upscale_interpolation="lanczos")
    pixels = crop_or_pad(scale(pixels, plan, exact=True), plan)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(f".{settings.encode_format}", pixels,
                               [cv2.IMWRITE_JPEG_QUALITY, settings.encode_quality])
    if not ok:
        raise RuntimeError("cv2 could not encode the reference")
    return encoded.tobytes()
