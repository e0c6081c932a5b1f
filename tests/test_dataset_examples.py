"""dataset_examples/: every YAML parses with the real download parser, and runs for real.

The parse tests build the same parser as ``any2ds download`` (from the plugin
registries) and read each file with ``--config``. The end-to-end test runs
each example's YAML through the CLI against the loopback HTTP server, with
only the input, output and process/thread counts overridden.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from PIL import Image

from any2ds.cli import main
from any2ds.manager import PluginHost
from any2ds.options import OptionSchema, read_plugins
from any2ds.run import IMG2DATASET_ARGUMENTS
from any2ds.testing import serve_directory
from any2ds_plugins.audio.processor import AudioOptions

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "dataset_examples"
YAMLS = sorted(EXAMPLES_DIR.rglob("*.yaml"))
# The datasets of img2dataset's dataset_examples/ that this folder must cover.
REQUIRED = ["laion400m", "laion5B", "mscoco", "cc3m", "cc12m", "datacomp"]

# img2dataset's download() parameters: an example may only use these names...
IMG2DATASET_OPTIONS = set(IMG2DATASET_ARGUMENTS)
# ...or one of any2ds's own options.
ANY2DS_OPTIONS = {
    "processors", "fetchers", "verifiers", "observers", "processing_threads",
    "max_body_bytes", "max_redirects", "retry_backoff", "max_retry_after", "max_image_pixels", "routing",
    "keep_source_keys", "min_offset", "max_offset", "media_extensions", "caption_extension", "max_member_bytes",
} | {field.metadata["flat"] for field in attrs.fields(AudioOptions)}

OUTPUT_FORMATS = {"files", "webdataset", "parquet", "tfrecord", "dummy"}
INPUT_FORMATS = {"txt", "txt.gz", "csv", "csv.gz", "tsv", "tsv.gz", "json", "json.gz", "jsonl", "jsonl.gz", "parquet",
                 "archive"}
RESIZE_MODES = {"no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"}

# Values that follow img2dataset's own dataset_examples (and DataComp's download script).
EXPECTED = {
    "laion400m": dict(input_format="parquet", url_col="URL", caption_col="TEXT", output_format="webdataset",
                      processes_count=16, thread_count=128, image_size=256,
                      save_additional_columns=["NSFW", "similarity", "LICENSE"]),
    "mscoco": dict(input_format="parquet", url_col="URL", caption_col="TEXT", output_format="webdataset",
                   processes_count=16, thread_count=64, image_size=256),
    "cc3m": dict(input_format="tsv", url_col="url", caption_col="caption", output_format="webdataset",
                 processes_count=16, thread_count=64, image_size=256),
    "cc12m": dict(input_format="tsv", url_col="url", caption_col="caption", output_format="webdataset",
                  processes_count=16, thread_count=64, image_size=256),
    "laion5B": dict(input_format="parquet", url_col="URL", caption_col="TEXT", output_format="webdataset",
                    image_size=384, resize_mode="keep_ratio", resize_only_if_bigger=True, skip_reencode=True,
                    oom_shard_count=6, thread_count=64),
    "datacomp": dict(input_format="parquet", url_col="url", caption_col="text", output_format="webdataset",
                     image_size=512, resize_mode="keep_ratio_largest", resize_only_if_bigger=True,
                     skip_reencode=True, oom_shard_count=8, save_additional_columns=["uid"]),
}

# The header line each tsv page tells users to add with sed (the files ship without one).
TSV_HEADERS = {"cc3m": ["caption", "url"], "cc12m": ["url", "caption"]}

IMAGES = ["123_456.jpg", "456_123.jpg", "800_600.jpg"]


def example_id(path: Path) -> str:
    return path.relative_to(EXAMPLES_DIR).with_suffix("").as_posix()


def is_audio_example(path: Path) -> bool:
    return "audio" in (yaml.safe_load(path.read_text()).get("processors") or [])


AUDIO_YAMLS = [path for path in YAMLS if is_audio_example(path)]
IMAGE_YAMLS = [path for path in YAMLS if not is_audio_example(path)]


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost.load()


def parse(host: PluginHost, *argv: str) -> dict:
    """Every option's value, by flag name, as ``any2ds download argv`` would run with."""
    schema = OptionSchema(host)
    return schema.flat_values(schema.parse_args(read_plugins(argv)[1]))


def raw_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: expected a flat mapping of options"
    return data


def test_every_required_example_exists():
    for name in REQUIRED:
        assert (EXAMPLES_DIR / f"{name}.yaml").is_file(), name
        page = (EXAMPLES_DIR / f"{name}.md").read_text()
        assert f"any2ds download --config dataset_examples/{name}.yaml" in page, name
    index = (EXAMPLES_DIR / "README.md").read_text()
    for path in YAMLS:
        assert path.name in index, f"README.md does not index {path.name}"


@pytest.mark.parametrize("path", YAMLS, ids=example_id)
def test_example_keys_are_flat_known_option_names(host, path):
    data = raw_yaml(path)
    for key, value in data.items():
        assert not isinstance(value, dict), f"{key}: keys must be flat, as img2dataset's flags"
    keys = set(data)
    assert keys <= IMG2DATASET_OPTIONS | ANY2DS_OPTIONS, sorted(keys - IMG2DATASET_OPTIONS - ANY2DS_OPTIONS)
    known = OptionSchema(host).known_names()
    assert keys <= known, f"unknown to the installed plugins: {sorted(keys - known)}"
    assert "distributor" not in data or data["distributor"] == "multiprocessing", "only multiprocessing exists today"
    # A page mentions enable_wandb only when its YAML sets it.
    page = path.with_suffix(".md")
    if page.exists() and "enable_wandb" not in data:
        assert "enable_wandb" not in page.read_text()


@pytest.mark.parametrize("path", YAMLS, ids=example_id)
def test_example_parses_with_the_download_parser(host, path):
    values = parse(host, "--config", str(path))
    # Every key of the file reached the config with its value (nothing dropped or coerced away).
    for key, value in raw_yaml(path).items():
        assert values[key] == value, key
    assert values["output_format"] in OUTPUT_FORMATS
    assert values["input_format"] in INPUT_FORMATS
    assert values["resize_mode"] in RESIZE_MODES
    assert isinstance(values["url_list"], str) and values["url_list"]
    assert isinstance(values["output_folder"], str) and values["output_folder"]
    assert isinstance(values["url_col"], str)
    assert values["caption_col"] is None or isinstance(values["caption_col"], str)
    for name in ("processes_count", "thread_count", "image_size", "oom_shard_count", "number_sample_per_shard"):
        assert type(values[name]) is int and values[name] >= 1, name
    for name in ("resize_only_if_bigger", "skip_reencode"):
        assert type(values[name]) is bool, name
    extra = values["save_additional_columns"]
    assert extra is None or (isinstance(extra, list) and all(isinstance(c, str) for c in extra))
    directives = values.get("disallowed_header_directives")
    assert directives is None or (isinstance(directives, list) and all(isinstance(d, str) for d in directives))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_values_follow_img2dataset(host, name):
    values = parse(host, "--config", str(EXAMPLES_DIR / f"{name}.yaml"))
    for key, value in EXPECTED[name].items():
        assert values[key] == value, key
    # Placeholder paths are local and relative: the commands in the pages run from one folder.
    assert "://" not in values["url_list"] and not values["url_list"].startswith("/")
    assert "://" not in values["output_folder"] and not values["output_folder"].startswith("/")


def test_flags_override_the_yaml(host):
    values = parse(host, "--config", str(EXAMPLES_DIR / "laion400m.yaml"), "--thread_count", "4", "--url_list", "x.parquet")
    assert values["thread_count"] == 4 and values["url_list"] == "x.parquet" and values["processes_count"] == 16


# ---------------------------------------------------------------- end to end

def column_values(name: str, values: dict, urls: list[str]) -> dict[str, list]:
    """The input columns the example reads, with plausible values of the real datasets' types."""
    n = len(urls)
    columns = {values["url_col"]: urls}
    if values.get("caption_col"):
        columns[values["caption_col"]] = [f"{name} caption {i}" for i in range(n)]
    samples = {"NSFW": ["UNLIKELY"] * n, "similarity": [0.31, 0.32, 0.33][:n], "LICENSE": ["?"] * n,
               "uid": [f"{i:032x}" for i in range(n)]}
    for col in values.get("save_additional_columns") or []:
        columns[col] = samples.get(col, [f"{col} {i}" for i in range(n)])
    if values.get("bbox_col"):
        # One face box on the last image (which is resized anyway); none on the others.
        columns[values["bbox_col"]] = [[] for _ in range(n - 1)] + [[[0.1, 0.1, 0.4, 0.5]]]
    return columns


def write_input(path: Path, input_format: str, columns: dict[str, list], order: list[str] | None) -> None:
    names = order or list(columns)
    if input_format == "parquet":
        pq.write_table(pa.Table.from_pydict({c: columns[c] for c in names}), path)
    elif input_format in ("tsv", "csv"):
        sep = "\t" if input_format == "tsv" else ","
        lines = [sep.join(names)] + [sep.join(str(columns[c][i]) for c in names) for i in range(len(columns[names[0]]))]
        path.write_text("\n".join(lines) + "\n")
    elif input_format == "jsonl":
        rows = [{c: columns[c][i] for c in names} for i in range(len(columns[names[0]]))]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pytest.fail(f"no input writer for input_format {input_format!r} in this test")


def write_archive_input(folder: Path, image_dir: Path, columns: dict[str, list], url_col: str) -> Path:
    """A folder holding one webdataset tar of the test images, as a finished download stores them:
    the image, a caption and a json with the url and the other columns."""
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i, image in enumerate(IMAGES):
            record = {"url" if name == url_col else name: values[i] for name, values in columns.items()}
            for name, data in [(f"{i:09d}.jpg", (image_dir / image).read_bytes()),
                               (f"{i:09d}.txt", f"caption {i}".encode()),
                               (f"{i:09d}.json", json.dumps(record).encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder


def expected_size(w: int, h: int, size: int, mode: str, only_if_bigger: bool) -> tuple[int, int] | None:
    """img2dataset's output geometry for the modes the examples use (None: not checked)."""
    if mode in ("keep_ratio", "keep_ratio_largest"):
        side = min(w, h) if mode == "keep_ratio" else max(w, h)
        if side == size or (only_if_bigger and side <= size):
            return w, h
        scale = size / side
        return round(w * scale), round(h * scale)
    if mode == "border":
        if only_if_bigger and max(w, h) <= size:
            return w, h
        return size, size
    if mode == "no":
        return w, h
    return None


@pytest.mark.parametrize("path", IMAGE_YAMLS, ids=example_id)
def test_example_downloads_end_to_end(host, http_server, image_dir, image_sizes, tmp_path, path):
    name = example_id(path)
    values = parse(host, "--config", str(path))
    fmt = values["input_format"]
    tag = name.replace("/", "_")
    # The query string marks this test's requests in the shared server's log; the server ignores it.
    urls = [http_server.url(f"/allowed/{image}?example={tag}") for image in IMAGES]
    columns = column_values(name, values, urls)
    if fmt == "archive":
        input_file = write_archive_input(tmp_path / "input", image_dir, columns, values["url_col"])
    else:
        input_file = tmp_path / f"input.{fmt}"
        write_input(input_file, fmt, columns, TSV_HEADERS.get(name) if fmt == "tsv" else None)
    out = tmp_path / "out"

    code = main(["download", "--allow_private_networks", "true", "--config", str(path), "--url_list", str(input_file),
                 "--output_folder", str(out), "--processes_count", "1", "--thread_count", "4"])
    assert code == 0

    shard = "0".zfill(values["oom_shard_count"])
    stats = json.loads((out / f"{shard}_stats.json").read_text())
    assert stats["count"] == 3 and stats["successes"] == 3, stats
    summary = json.loads((out / "_any2ds" / "run_summary.json").read_text())
    assert summary["successes"] == 3 and summary["shards_failed"] == []
    assert not (out / "_tmp").exists()

    output_format = values["output_format"]
    ext = values["encode_format"]
    if output_format != "dummy":
        meta = pq.read_table(out / f"{shard}.parquet").to_pylist()
        assert len(meta) == 3 and {r["status"] for r in meta} == {"success"}
        by_url = {r["url"]: r for r in meta}
        for col in values.get("save_additional_columns") or []:
            assert [by_url[u][col] for u in urls] == columns[col], col
        if values.get("caption_col"):
            assert [by_url[u]["caption"] for u in urls] == columns[values["caption_col"]]
        for image, url in zip(IMAGES, urls):
            w, h = image_sizes[image]
            want = expected_size(w, h, values["image_size"], values["resize_mode"], values["resize_only_if_bigger"])
            if want is not None:
                assert (by_url[url]["width"], by_url[url]["height"]) == want, image

    if output_format == "webdataset":
        with tarfile.open(out / f"{shard}.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        images = {k: v for k, v in members.items() if k.endswith(f".{ext}")}
        assert len(images) == 3
        kept_bytes = 0
        for key_file, data in images.items():
            key = key_file[: -len(ext) - 1]
            record = json.loads(members[f"{key}.json"])
            assert Image.open(io.BytesIO(data)).size == (record["width"], record["height"])
            if values.get("caption_col"):
                assert members[f"{key}.txt"].decode() == record["caption"]
            image = record["url"].split("/allowed/")[1].split("?")[0]
            if values["skip_reencode"] and (record["width"], record["height"]) == image_sizes[image]:
                assert data == (image_dir / image).read_bytes(), f"{key}: skip_reencode should keep the original bytes"
                kept_bytes += 1
        if values["skip_reencode"] and values["resize_only_if_bigger"]:
            assert kept_bytes >= 1  # 123x456 and 456x123 are below every example's image_size
    elif output_format == "files":
        assert len(list((out / shard).glob(f"*.{ext}"))) == 3
    elif output_format == "parquet":
        assert all(r[ext] for r in pq.read_table(out / f"{shard}.parquet").to_pylist())

    token = values.get("user_agent_token")
    if token:
        agents = [h.get("User-Agent", "") for p, h in list(http_server.requests) if f"example={tag}" in p]
        assert agents and all(token.strip().lower() in a.lower() for a in agents), agents


def test_the_audio_example_exists_and_is_documented():
    assert AUDIO_YAMLS == [EXAMPLES_DIR / "audio.yaml"]
    assert "any2ds download --config dataset_examples/audio.yaml" in (EXAMPLES_DIR / "audio.md").read_text()


# (name, soundfile format, rate, channels, seconds): what audio sites serve, and one clip below audio_min_duration.
AUDIO_CLIPS = [("rain.mp3", "MP3", 44100, 2, 2.0), ("bird.ogg", "OGG", 22050, 1, 1.5),
               ("door.wav", "WAV", 96000, 6, 1.2), ("click.flac", "FLAC", 48000, 1, 0.2)]


@pytest.mark.parametrize("path", AUDIO_YAMLS, ids=example_id)
def test_audio_example_downloads_end_to_end(host, tmp_path, path):
    values = parse(host, "--config", str(path))
    clips = tmp_path / "clips"
    clips.mkdir()
    for name, fmt, rate, channels, seconds in AUDIO_CLIPS:
        t = np.arange(round(rate * seconds)) / rate
        sf.write(clips / name, np.tile(0.3 * np.sin(2 * np.pi * 440 * t)[:, None], (1, channels)), rate, format=fmt)
    with serve_directory(clips) as server:
        urls = [server.url(f"/allowed/{name}") for name, *_ in AUDIO_CLIPS]
        columns = {values["url_col"]: urls, values["caption_col"]: [f"the sound of {n}" for n, *_ in AUDIO_CLIPS],
                   "license": ["CC0"] * len(urls)}
        input_file = tmp_path / "input.parquet"
        write_input(input_file, values["input_format"], columns, None)
        out = tmp_path / "out"
        code = main(["download", "--allow_private_networks", "true", "--config", str(path), "--url_list",
                     str(input_file), "--output_folder", str(out), "--processes_count", "1", "--thread_count", "4"])
    assert code == 0
    meta = {row["url"]: row for row in pq.read_table(out / "00000.parquet").to_pylist()}
    statuses = [(meta[url]["status"], meta[url]["error_message"]) for url in urls]
    assert statuses == [("success", None)] * 3 + [("failed_to_process", "audio too short")]
    with tarfile.open(out / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for (name, _fmt, rate, channels, seconds), url in zip(AUDIO_CLIPS[:3], urls):
        key = meta[url]["key"]
        audio, stored_rate = sf.read(io.BytesIO(members[f"{key}.flac"]))
        assert (stored_rate, audio.ndim, len(audio)) == (48000, 1, round(48000 * seconds)), name
        record = json.loads(members[f"{key}.json"])
        assert (record["original_sample_rate"], record["original_channels"]) == (rate, channels)
        assert record["license"] == "CC0" and members[f"{key}.txt"].decode() == f"the sound of {name}"


def test_the_mixed_example_routes_a_mixed_list(host, tmp_path, image_dir):
    """mixed.yaml over pictures, a sound and a PDF: each row says which processor handled it."""
    path = EXAMPLES_DIR / "mixed.yaml"
    values = parse(host, "--config", str(path))
    files = tmp_path / "files"
    files.mkdir()
    for name in IMAGES:
        (files / name).write_bytes((image_dir / name).read_bytes())
    sf.write(files / "bird.wav", 0.2 * np.sin(np.arange(22050) / 10), 22050)
    (files / "paper.pdf").write_bytes(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n")
    names = [*IMAGES, "bird.wav", "paper.pdf"]
    with serve_directory(files) as server:
        urls = [server.url(f"/allowed/{name}") for name in names]
        input_file = tmp_path / "media.parquet"
        write_input(input_file, "parquet", {values["url_col"]: urls, values["caption_col"]: names}, None)
        out = tmp_path / "out"
        assert main(["download", "--allow_private_networks", "true", "--config", str(path), "--url_list",
                     str(input_file), "--output_folder", str(out), "--processes_count", "1",
                     "--thread_count", "4"]) == 0
    rows = {row["caption"]: row for row in pq.read_table(out / "00000.parquet").to_pylist()}
    assert {name: rows[name]["processor"] for name in names} == {
        **{name: "image" for name in IMAGES}, "bird.wav": "audio", "paper.pdf": "file"}
    assert rows["bird.wav"]["sample_rate"] == 48000 and rows["bird.wav"]["channels"] == 1
    assert max(rows["800_600.jpg"]["width"], rows["800_600.jpg"]["height"]) == 512
    with tarfile.open(out / "00000.tar") as tar:
        extensions = sorted(name.split(".", 1)[1] for name in tar.getnames() if not name.endswith((".json", ".txt")))
    assert extensions == ["flac", "jpg", "jpg", "jpg", "pdf"]
