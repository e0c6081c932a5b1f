"""The thumbnail plugin, tested with any2ds.testing: a local HTTP server, a download run in
this process, the output read back.

Run after installing the package (its entry point is how any2ds finds the processor):
``pip install -e '.[test]' && pytest``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from any2ds import ConfigError
from any2ds.testing import download_in_process, read_dataset, serve_directory
from PIL import Image

from any2ds_thumbnail import dhash, hamming, load_picture


def blocks(width: int, height: int, seed: int) -> Image.Image:
    """A picture of random colour blocks: structure a perceptual hash can see."""
    cells = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((width, height), Image.Resampling.NEAREST)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_near_duplicates_hash_alike_and_different_pictures_do_not():
    picture = blocks(400, 300, seed=1)
    assert len(dhash(picture)) == 16
    assert hamming(dhash(picture), dhash(load_picture(jpeg(picture.resize((200, 150)))))) <= 4
    assert hamming(dhash(picture), dhash(blocks(400, 300, seed=2))) > 10


@pytest.fixture
def url_list(tmp_path):
    """Three URLs on a local server: two pictures and a file that is not one."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "wide.jpg").write_bytes(jpeg(blocks(400, 300, seed=1)))
    (images / "tall.jpg").write_bytes(jpeg(blocks(150, 300, seed=2)))
    (images / "broken.jpg").write_bytes(b"not a picture")
    with serve_directory(images) as server:
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(server.url(f"/allowed/{name}") for name in ("wide.jpg", "tall.jpg", "broken.jpg")))
        yield urls


def test_download_stores_a_thumbnail_and_a_dhash(tmp_path, url_list):
    out = tmp_path / "out"
    summary = download_in_process(url_list=str(url_list), output_folder=str(out), output_format="webdataset",
                                  processors=["image", "thumbnail"], image_size=128, thumbnail={"size": 32},
                                  allow_private_networks=True)  # the server is on 127.0.0.1
    assert summary["successes"] == 2
    dataset = read_dataset(out)
    assert [row["status"] for row in dataset.rows] == ["success", "success", "failed_to_resize"]
    for row in dataset.rows[:2]:
        files = dataset.samples[row["key"]]
        thumbnail = Image.open(io.BytesIO(files["thumb.jpg"]))
        assert max(thumbnail.size) == 32
        # Made from what the image processor stored, the resized jpg.
        assert row["dhash"] == dhash(load_picture(files["jpg"]))


def test_options_are_validated(tmp_path, url_list):
    with pytest.raises(ConfigError, match="size"):
        download_in_process(url_list=str(url_list), output_folder=str(tmp_path / "out"),
                            processors=["image", "thumbnail"], thumbnail={"size": 4}, allow_private_networks=True)
