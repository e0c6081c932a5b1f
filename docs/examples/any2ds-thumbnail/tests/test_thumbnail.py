"""Tests of the installed plugin (`pip install -e .`): its entry point registers it, so runs need no plugin object."""

import io
import zipfile

import pytest
from PIL import Image, ImageDraw, ImageOps

from any2ds import ConfigError
from any2ds.testing import check_writer, download_in_process, read_dataset, serve_directory
from any2ds_thumbnail import ZipWriter, dhash


def scene(width, height, seed):
    """A picture with structure at every scale: a gradient sky, a mandelbrot patch and some shapes."""
    picture = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    picture.paste(Image.effect_mandelbrot((width // 2, height // 2), (-2, -1.2, 0.6, 1.2 + seed / 10), 64).convert("RGB"), (width // 4, height // 4))
    draw = ImageDraw.Draw(picture)
    for index in range(6):
        x, y = (seed * 37 + index * 71) % width, (seed * 53 + index * 29) % height
        draw.ellipse((x, y, x + width // 5, y + height // 6), fill=((seed * 90 + index * 40) % 256, index * 40, 200 - index * 30))
    return picture


def encoded(picture, format, **params):
    buffer = io.BytesIO()
    picture.save(buffer, format, **params)
    return buffer.getvalue()


def hamming(first, second):
    return bin(int(first, 16) ^ int(second, 16)).count("1")


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "wide.jpg").write_bytes(encoded(scene(800, 400, 1), "JPEG", quality=92))
    (folder / "tall.png").write_bytes(encoded(scene(300, 600, 2), "PNG"))
    (folder / "notes.txt").write_text("not a picture")
    logo = Image.new("RGBA", (200, 100), (0, 0, 0, 0))  # transparent black, but for a red right half
    logo.paste((255, 0, 0, 255), (100, 0, 200, 100))
    (folder / "logo.png").write_bytes(encoded(logo, "PNG"))
    return folder


def download(tmp_path, server, names, **options):
    (tmp_path / "urls.txt").write_text("\n".join(server.url(f"/allowed/{name}") for name in names))
    return download_in_process(url_list=str(tmp_path / "urls.txt"), output_folder=str(tmp_path / "out"),
                               allow_private_networks=True, **options)  # the server is on 127.0.0.1


def test_thumbnail_and_dhash_after_the_image_processor(tmp_path, pictures):
    with serve_directory(pictures) as server:
        download(tmp_path, server, ["wide.jpg", "tall.png", "notes.txt", "logo.png"], processors=["image", "thumbnail"],
                 output_format="zip", thumbnail={"size": 64, "quality": 90})
    dataset = read_dataset(tmp_path / "out")
    wide, tall, notes, logo = dataset.rows
    assert (wide["status"], tall["status"]) == ("success", "success")
    for row, name, expected_size in [(wide, "wide.jpg", (64, 32)), (tall, "tall.png", (32, 64))]:
        files = dataset.samples[row["key"]]
        assert {"jpg", "json", "thumb.jpg"} <= set(files)
        thumbnail = Image.open(io.BytesIO(files["thumb.jpg"]))
        assert (thumbnail.format, thumbnail.size) == ("JPEG", expected_size)
        assert len(row["dhash"]) == 16 and int(row["dhash"], 16) >= 0
        assert hamming(row["dhash"], dhash(Image.open(pictures / name))) <= 6  # the same picture, seen smaller
    assert hamming(wide["dhash"], tall["dhash"]) > 12
    # the image processor rejected the text file first: the chain stopped there
    assert (notes["status"], notes["error_type"], notes["dhash"]) == ("failed_to_resize", "decode", None)
    assert notes["key"] not in dataset.samples
    logo_thumbnail = Image.open(io.BytesIO(dataset.samples[logo["key"]]["thumb.jpg"]))
    assert logo_thumbnail.size == (64, 32)
    assert min(logo_thumbnail.getpixel((8, 16))) > 245  # transparency composited on white
    assert logo_thumbnail.getpixel((56, 16))[0] > 245 and max(logo_thumbnail.getpixel((56, 16))[1:]) < 10
    with zipfile.ZipFile(tmp_path / "out" / "00000.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"{row['key']}.{ext}" for row in (wide, tall, logo)
                                                    for ext in ("jpg", "json", "thumb.jpg"))


def test_thumbnail_alone_fails_a_non_image_sample_only(tmp_path, pictures):
    with serve_directory(pictures) as server:
        download(tmp_path, server, ["notes.txt", "wide.jpg"], processors=["thumbnail"], output_format="files")
    dataset = read_dataset(tmp_path / "out")
    notes, wide = dataset.rows
    assert (notes["status"], notes["error_type"], notes["error_message"]) == ("failed_to_process", "decode", "Image decoding error")
    assert wide["status"] == "success" and "width" not in wide  # the image processor's columns are not there
    assert set(dataset.samples[wide["key"]]) == {"json", "thumb.jpg"}


def test_dhash():
    brightening = Image.linear_gradient("L").rotate(90).resize((90, 80))  # dark left, bright right
    assert dhash(brightening) == "ffffffffffffffff"
    assert dhash(ImageOps.mirror(brightening)) == "0000000000000000"
    picture = scene(640, 480, 3)
    recompressed = Image.open(io.BytesIO(encoded(picture.resize((320, 240)), "JPEG", quality=40)))
    assert hamming(dhash(picture), dhash(recompressed)) <= 4
    assert hamming(dhash(picture), dhash(scene(640, 480, 7))) > 12


def test_zip_sink_conforms(tmp_path):
    check_writer(ZipWriter(None), tmp_path / "out")
    for path in (tmp_path / "out").glob("*.zip"):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None


@pytest.mark.parametrize("options, message", [({"quality": 0}, "processor 'thumbnail': 'quality' must be >= 1: 0"),
                                              ({"quality": 96}, "processor 'thumbnail': 'quality' must be <= 95: 96"),
                                              ({"size": 2}, "processor 'thumbnail': 'size' must be >= 8: 2")])
def test_bad_option_stops_the_run_at_startup(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        download_in_process(url_list=str(tmp_path / "missing.txt"), output_folder=str(tmp_path / "out"),
                            processors=["image", "thumbnail"], thumbnail=options)
    assert not (tmp_path / "out").exists()
