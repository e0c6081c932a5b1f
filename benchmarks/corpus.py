"""A deterministic corpus of web-like JPEGs cut from the photographs scikit-image ships, and URL lists over it.

Image ``i`` depends only on (seed, i), so a corpus of 10,000 images holds the
first 1,000 of any larger one and a cached folder is extended, never rebuilt.
The mix follows what a crawl of the web returns: longest side log-normal with a
median of 500 px (about 10% above 1024 px, a few near 2500 px, a few below
100 px), JPEG quality 75-95, some progressive or with optimized Huffman tables,
some 4:4:4, some grayscale, some with EXIF (camera tags, rotating orientations).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

CORPUS_VERSION = 1  # bump when the generator changes: cached folders are keyed by it
MEDIAN_LONGEST_SIDE = 500
LONGEST_SIDE_SPREAD = 0.56  # sigma of ln(side): P(side > 1024) = 10% around a 500 px median
LONGEST_SIDE_BOUNDS = (48, 2600)
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
GRAY_PHOTOS = ("camera", "moon", "coins", "clock", "text", "page", "cell", "brick", "grass", "gravel")
GRAY_SHARE = 0.08
ASPECTS = (4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3, 9 / 16, 2.0)
ASPECT_WEIGHTS = (0.3, 0.2, 0.12, 0.1, 0.1, 0.1, 0.04, 0.04)
EXIF_SHARE = 0.2
# EXIF orientation -> its share among images with EXIF; 6 and 8 (phone held upright) swap the sides.
ORIENTATION_WEIGHTS = {1: 0.55, 6: 0.2, 8: 0.08, 3: 0.08, 2: 0.03, 4: 0.02, 5: 0.02, 7: 0.02}
# What to do to the upright pixels so that a viewer applying the orientation shows them upright again.
UNDO_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                    6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
CAMERAS = (("Canon", "Canon EOS 80D"), ("NIKON CORPORATION", "NIKON D750"), ("Apple", "iPhone 12"),
           ("samsung", "SM-G991B"), ("SONY", "ILCE-7M3"))


def image_name(index: int) -> str:
    return f"{index:07d}.jpg"


def default_cache_dir(seed: int) -> Path:
    """Where the corpus of ``seed`` is kept between runs (ignored by git)."""
    return Path(__file__).resolve().parent / ".cache" / f"corpus-v{CORPUS_VERSION}-seed{seed}"


def ensure_corpus(folder: Path, count: int, seed: int = 0, processes: int | None = None) -> list[str]:
    """Images 0..count-1 of the ``seed`` corpus in ``folder`` (made only where missing); their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [image_name(i) for i in range(count)]
    missing = [i for i, name in enumerate(names) if not (folder / name).exists()]
    if missing:
        jobs = [(folder, seed, i) for i in missing]
        workers = min(processes or os.cpu_count() or 1, len(missing))
        if workers == 1:
            for job in jobs:
                _write_image(job)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_image, jobs, chunksize=16):
                    pass
    return names


def _write_image(job: tuple[Path, int, int]) -> None:
    folder, seed, index = job
    target = folder / image_name(index)
    temporary = target.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_bytes(make_image(seed, index))
    temporary.rename(target)  # atomic: an interrupted run leaves no half-written image under a real name


def make_image(seed: int, index: int) -> bytes:
    """The JPEG bytes of image ``index``: a random crop of a bundled photograph, scaled, flipped, encoded."""
    rng = np.random.default_rng([seed, index])
    gray = rng.random() < GRAY_SHARE
    source = _photo(str(rng.choice(GRAY_PHOTOS if gray else COLOUR_PHOTOS)))
    aspect = float(rng.choice(ASPECTS, p=ASPECT_WEIGHTS))
    longest = int(np.clip(round(MEDIAN_LONGEST_SIDE * np.exp(LONGEST_SIDE_SPREAD * rng.standard_normal())),
                          *LONGEST_SIDE_BOUNDS))
    width, height = (longest, max(1, round(longest / aspect))) if aspect >= 1 else (max(1, round(longest * aspect)),
                                                                                   longest)
    crop = _random_crop(source, width / height, rng)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.05:
        crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    upscale = width / crop.width
    picture = crop.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if upscale > 1.25:  # an enlarged crop is smoother than a real photo of that size: add sensor-like grain
        picture = _with_grain(picture, float(rng.uniform(1.5, 3.0)), rng)
    save: dict = {"quality": int(rng.integers(75, 96)), "progressive": bool(rng.random() < 0.2),
                  "optimize": bool(rng.random() < 0.3)}
    if not gray and save["quality"] >= 90 and rng.random() < 0.3:
        save["subsampling"] = 0  # 4:4:4, as some cameras and editors save high-quality files
    if rng.random() < EXIF_SHARE:
        orientation = int(rng.choice(list(ORIENTATION_WEIGHTS), p=list(ORIENTATION_WEIGHTS.values())))
        if orientation in UNDO_ORIENTATION:
            picture = picture.transpose(UNDO_ORIENTATION[orientation])
        save["exif"] = _exif(orientation, rng).tobytes()
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", **save)
    return buffer.getvalue()


@cache
def _photo(name: str) -> Image.Image:
    from skimage import data  # the benchmark's only use of scikit-image: its bundled photographs

    pixels = getattr(data, name)()
    return Image.fromarray(pixels).convert("L" if pixels.ndim == 2 else "RGB")


def _random_crop(source: Image.Image, aspect: float, rng: np.random.Generator) -> Image.Image:
    """A crop of ``aspect`` (width / height) covering 50-100% of the largest one that fits, at a random place."""
    if source.width / source.height > aspect:
        full_width, full_height = source.height * aspect, source.height
    else:
        full_width, full_height = source.width, source.width / aspect
    fraction = rng.uniform(0.5, 1.0)
    width, height = max(1, round(full_width * fraction)), max(1, round(full_height * fraction))
    left = int(rng.integers(0, source.width - width + 1))
    top = int(rng.integers(0, source.height - height + 1))
    return source.crop((left, top, left + width, top + height))


def _with_grain(picture: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(picture, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), picture.mode)


def _exif(orientation: int, rng: np.random.Generator) -> Image.Exif:
    exif = Image.Exif()
    make, model = CAMERAS[int(rng.integers(len(CAMERAS)))]
    exif[0x010F] = make
    exif[0x0110] = model
    exif[0x0112] = orientation
    exif[0x0131] = "benchmark corpus"
    exif[0x0132] = f"2023:{rng.integers(1, 13):02d}:{rng.integers(1, 29):02d} {rng.integers(0, 24):02d}:" \
                   f"{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}"
    return exif


def url_rows(names: Sequence[str], rows: int, duplicates: int = 1, seed: int = 0) -> list[str]:
    """``rows`` paths over ``names``: each listed ``duplicates`` times under the same URL (as MS-COCO lists
    each image once per caption), in a seeded shuffle when duplicated."""
    if duplicates < 1:
        raise ValueError(f"duplicates must be at least 1, got {duplicates}")
    distinct = -(-rows // duplicates)
    if distinct > len(names):
        raise ValueError(f"{rows} rows with {duplicates} copies each need {distinct} images, have {len(names)}")
    order = [i for i in range(distinct) for _ in range(duplicates)][:rows]
    if duplicates > 1:
        order = list(np.random.default_rng(seed).permutation(order))
    return [names[i] for i in order]


def cycled_rows(names: Sequence[str], rows: int, missing_share: float = 0.0) -> list[str]:
    """``rows`` paths cycling over ``names`` (a long run served from a fixed set of files); a
    ``missing_share`` of them point at files that do not exist (404), spread evenly."""
    paths = []
    every = round(1 / missing_share) if missing_share > 0 else 0
    for row in range(rows):
        if every and row % every == every - 1:
            paths.append(f"missing.jpg?row={row}")
        else:
            paths.append(f"{names[row % len(names)]}?row={row}")
    return paths


def write_url_list(path: Path, base_url: str, paths: Sequence[str]) -> Path:
    path.write_text("".join(f"{base_url}/{p}\n" for p in paths))
    return path


def describe(folder: Path, names: Sequence[str]) -> dict:
    """Figures about the corpus for the report: bytes, longest sides, and how many are progressive, gray, with EXIF."""
    sides, sizes = [], []
    progressive = gray = with_exif = 0
    for name in names:
        path = folder / name
        sizes.append(path.stat().st_size)
        with Image.open(path) as image:
            sides.append(max(image.size))
            progressive += bool(image.info.get("progressive") or image.info.get("progression"))
            gray += image.mode == "L"
            with_exif += "exif" in image.info
    sides_array = np.array(sides)
    return {
        "images": len(names),
        "bytes": int(sum(sizes)),
        "median_bytes": int(np.median(sizes)),
        "longest_side_median": int(np.median(sides_array)),
        "longest_side_over_1024": float(np.mean(sides_array > 1024)),
        "longest_side_max": int(sides_array.max()),
        "longest_side_under_100": int(np.sum(sides_array < 100)),
        "progressive": progressive,
        "grayscale": gray,
        "with_exif": with_exif,
    }

