"""The built-in input readers, on real files written to tmp_path."""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from any2ds_plugins import readers
from any2ds_plugins.readers import READERS
from any2ds_plugins.readers.common import CHUNK_BYTES
from any2ds_plugins.readers.json_jsonl import SAMPLE_ROWS

from any2ds.components import InputSource
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost
from any2ds.sharding import ShardCutter

READER = {cls.name: cls for cls in READERS}

# Text that breaks naive parsers: newlines, quotes, delimiters, tabs, emoji.
NASTY = 'line one\nline "two"\t, tab;\r\nemoji 😀 \\ end'

ROWS = [
    {"url": "https://example.com/a.jpg", "caption": "a cat", "n": 1},
    {"url": "https://example.com/b.jpg?x=1,2", "caption": NASTY, "n": 2},
    {"url": "https://example.com/c.jpg", "caption": "", "n": 3},
]


def source(path: Path, compression: str | None = None) -> InputSource:
    return InputSource(str(path), fsspec.filesystem("file"), compression=compression)


def read(fmt: str, path: Path, columns, batch_size: int = 1000, compression: str | None = None) -> pa.Table:
    """Every batch of the file, as one table (and check the batches share a schema)."""
    batches = list(READER[fmt](None).read(source(path, compression), columns, batch_size))
    assert all(b.schema == batches[0].schema for b in batches)
    return pa.Table.from_batches(batches) if batches else pa.table({})


def write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", gz: bool = False) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write(path, buf.getvalue().encode(), gz)


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(), gz)


def write_json(path: Path, rows, gz: bool = False, indent=None) -> Path:
    return write(path, json.dumps(rows, ensure_ascii=False, indent=indent).encode(), gz)


def write_parquet(path: Path, rows: list[dict], gz: bool = False) -> Path:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return write(path, buf.getvalue(), gz)


WRITERS = {
    "csv": write_csv,
    "tsv": lambda path, rows, gz=False: write_csv(path, rows, "\t", gz),
    "jsonl": write_jsonl,
    "json": write_json,
    "parquet": write_parquet,
}


# --------------------------------------------------------------------------
# every format, plain and gzip
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_format_round_trip(tmp_path, fmt, gz):
    path = WRITERS[fmt](tmp_path / f"in.{fmt}", ROWS, gz=gz)
    table = read(fmt, path, ["url", "caption", "n"], compression="gzip" if gz else None)
    assert table.column_names == ["url", "caption", "n"]
    assert table.to_pylist() == ROWS
    assert table.schema.field("url").type == pa.string()
    assert table.schema.field("n").type == pa.int64()
    assert READER[fmt](None).available_columns(source(path, "gzip" if gz else None)) == ["url", "caption", "n"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_remote_filesystem(tmp_path, fmt, gz):
    # A non-local fsspec filesystem: csv is copied to a local temporary file for pyarrow, the rest stream.
    local = WRITERS[fmt](tmp_path / f"in.{fmt}", ROWS, gz=gz)
    memory = fsspec.filesystem("memory")
    path = f"/{tmp_path.name}/{local.name}"
    memory.pipe(path, local.read_bytes())
    try:
        remote = InputSource(path, memory, compression="gzip" if gz else None)
        batches = list(READER[fmt](None).read(remote, ["url", "caption", "n"], 2))
        assert pa.Table.from_batches(batches).to_pylist() == ROWS
    finally:
        memory.rm(path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_txt(tmp_path, gz):
    data = b"https://a.com/x,y,z\n\nhttps://b.com/\"q\"\ttab\r\n\r\nhttps://c.com/last"
    path = write(tmp_path / "in.txt", data, gz)
    table = read("txt", path, ["link", "caption"], compression="gzip" if gz else None)
    # The single column takes the URL column's name; empty lines are skipped, commas kept.
    assert table.column_names == ["link"]
    assert table.column("link").to_pylist() == ["https://a.com/x,y,z", 'https://b.com/"q"\ttab', "https://c.com/last"]
    assert READER["txt"](None).available_columns(source(path)) is None


def test_a_shard_carries_only_its_own_rows(tmp_path):
    """Shards go to the workers pickled: cut from an 8,192-row batch, each must hold its 100 rows only."""
    path = tmp_path / "in.txt"
    path.write_text("".join(f"https://example.com/{n:06d}.jpg\n" for n in range(20_000)))
    shards = list(ShardCutter(READER["txt"](None), [source(path)], ["url"], rows_per_shard=100))
    assert [shard.rows.num_rows for shard in shards] == [100] * 200
    assert shards[57].rows.column("url").to_pylist()[:2] == ["https://example.com/005700.jpg",
                                                              "https://example.com/005701.jpg"]
    # 100 URLs of 30 characters: about 3.5 KB of row data; a slice pickles its whole batch (280 KB).
    assert max(len(pickle.dumps(shard)) for shard in shards) < 10_000


@pytest.mark.parametrize("urls", [pa.array([1, 2]), pa.array([["https://a"], ["https://b"]])], ids=["int", "list"])
def test_a_url_column_that_is_not_text_stops_the_run(tmp_path, urls):
    """As jsonl refuses an int URL: one line naming the file and the column, before any shard."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": urls}), path)
    with pytest.raises(ConfigError) as info:
        list(ShardCutter(READER["parquet"](None), [source(path)], ["url"], rows_per_shard=100))
    url_type = pq.read_schema(path).field("url").type
    assert str(info.value) == f"input file {path}: column 'url' is {url_type}, not text (URLs must be strings)"


@pytest.mark.parametrize("url_type", [pa.binary(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_a_url_column_of_another_text_type_is_cut(tmp_path, url_type):
    path = tmp_path / "in.parquet"
    urls = [b"https://a", b"https://b"] if url_type == pa.binary() else ["https://a", "https://b"]
    pq.write_table(pa.table({"url": pa.array(urls).cast(url_type)}), path)
    (shard,) = ShardCutter(READER["parquet"](None), [source(path)], ["url"], rows_per_shard=100)
    assert shard.rows.num_rows == 2


def test_txt_bom_and_trailing_newline(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfhttps://a\nhttps://b\n")
    assert read("txt", path, ["url"]).column("url").to_pylist() == ["https://a", "https://b"]


def test_registered_through_the_hook():
    host = PluginHost.load([readers], entry_points=False)
    assert host.registries["reader"].names() == ["archive", "csv", "json", "jsonl", "parquet", "tsv", "txt"]


# --------------------------------------------------------------------------
# columns and types
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_column_selection_and_missing_columns(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"in.{fmt}", ROWS)
    table = read(fmt, path, ["url", "missing", "n", "url"])
    assert table.column_names == ["url", "n"]  # requested order, missing left out, no duplicates
    assert table.column("n").to_pylist() == [1, 2, 3]
    assert read(fmt, path, ["nothing"]).num_rows == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "json"])
def test_types_kept(tmp_path, fmt):
    rows = [{"url": f"https://e.com/{i}", "n": i * 1000, "score": i / 4, "flag": i % 2 == 0} for i in range(50)]
    path = WRITERS[fmt](tmp_path / f"in.{fmt}", rows)
    schema = read(fmt, path, ["url", "n", "score", "flag"]).schema
    assert [f.type for f in schema] == [pa.string(), pa.int64(), pa.float64(), pa.bool_()]


def test_csv_url_and_text_columns_are_strings_even_if_they_look_numeric(tmp_path):
    # The first block is numeric or empty; later blocks are text. Forced to strings, nothing breaks.
    rows = [{"url": str(i), "caption": "", "n": i} for i in range(100_000)]
    rows += [{"url": "https://e.com/x", "caption": "now text", "n": 7}]
    path = write_csv(tmp_path / "in.csv", rows)
    table = read("csv", path, ["url", "caption", "n"], batch_size=30_000)
    assert table.schema.field("url").type == pa.string()
    assert table.schema.field("caption").type == pa.string()
    assert table.column("url").to_pylist()[-2:] == ["99999", "https://e.com/x"]
    assert table.column("caption").to_pylist()[-1] == "now text"


def test_nulls_stay_null(tmp_path):
    rows = [{"url": "https://a", "caption": None, "n": None}, {"url": "https://b", "caption": "c", "n": 2}]
    for fmt in ["jsonl", "json", "parquet"]:
        path = WRITERS[fmt](tmp_path / f"in.{fmt}", rows)
        assert read(fmt, path, ["url", "caption", "n"]).to_pylist() == rows
    # csv has no null string; an empty int field is null.
    assert read("csv", write_csv(tmp_path / "in.csv", rows), ["url", "n"]).column("n").to_pylist() == [None, 2]


def test_json_missing_keys_are_null(tmp_path):
    rows = [{"url": "https://a", "caption": "x"}, {"url": "https://b"}, {"caption": "z", "url": "https://c", "n": 5}]
    for fmt in ["jsonl", "json"]:
        path = WRITERS[fmt](tmp_path / f"in.{fmt}", rows)
        table = read(fmt, path, ["url", "caption", "n"])
        assert table.to_pydict() == {"url": ["https://a", "https://b", "https://c"], "caption": ["x", None, "z"],
                                     "n": [None, None, 5]}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet", "txt"])
def test_batches_are_batch_size_rows(tmp_path, fmt):
    rows = [{"url": f"https://e.com/{i}", "n": i} for i in range(1000)]
    if fmt == "txt":
        path = tmp_path / "in.txt"
        path.write_text("".join(r["url"] + "\n" for r in rows))
    else:
        path = WRITERS[fmt](tmp_path / f"in.{fmt}", rows)
    batches = list(READER[fmt](None).read(source(path), ["url"], 64))
    assert [b.num_rows for b in batches] == [64] * 15 + [40]
    assert [u for b in batches for u in b.column(0).to_pylist()] == [r["url"] for r in rows]


EARLY_EXIT = textwrap.dedent("""
    import sys
    import fsspec
    from any2ds import InputSource
    from any2ds_plugins.readers import READERS

    readers = {cls.name: cls(None) for cls in READERS}
    for _ in range(5):
        for fmt, path in zip(sys.argv[1::2], sys.argv[2::2]):
            batches = readers[fmt].read(InputSource(path, fsspec.filesystem("file")), ["url"], 100)
            next(batches)
            batches.close()
""")


def test_process_exits_after_stopping_early(tmp_path):
    # pyarrow threads reading a Python file object made the process hang or abort at exit.
    rows = [{"url": f"https://e.com/{i}", "n": i} for i in range(300_000)]
    args = [arg for fmt in ["csv", "jsonl", "parquet"]
            for arg in (fmt, str(WRITERS[fmt](tmp_path / f"in.{fmt}", rows)))]
    subprocess.run([sys.executable, "-c", EARLY_EXIT, *args], check=True, timeout=60)


def test_stopping_early_closes_cleanly(tmp_path):
    rows = [{"url": f"https://e.com/{i}", "n": i} for i in range(50_000)]
    for fmt in ["csv", "jsonl", "json", "parquet"]:
        batches = READER[fmt](None).read(source(WRITERS[fmt](tmp_path / f"in.{fmt}", rows)), ["url"], 100)
        assert next(batches).num_rows == 100
        batches.close()


@pytest.mark.parametrize("position", [0, 5000], ids=["first-row", "later"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_longer_than_a_block(tmp_path, fmt, position):
    # pyarrow cannot parse a row longer than its block; the reader starts over with larger blocks.
    rows = [{"url": f"https://e.com/{i}", "caption": f"c{i}", "n": i} for i in range(20_000)]
    rows[position]["caption"] = "long, \"quoted\"\n" * 300_000  # ~5 MiB
    path = WRITERS[fmt](tmp_path / f"in.{fmt}", rows)
    assert read(fmt, path, ["url", "caption", "n"], batch_size=3000).to_pylist() == rows


# --------------------------------------------------------------------------
# json specifics
# --------------------------------------------------------------------------


def test_json_array_streams_across_chunks(tmp_path):
    # Pretty-printed, several MiB, with one element far larger than a read chunk.
    rows = [{"url": f"https://e.com/{i}", "caption": NASTY * (i % 5), "n": i} for i in range(40_000)]
    rows[12_345]["caption"] = "x" * (3 * CHUNK_BYTES)
    path = write_json(tmp_path / "in.json", rows, indent=2)
    assert path.stat().st_size > 4 * CHUNK_BYTES
    assert read("json", path, ["url", "caption", "n"], batch_size=5000).to_pylist() == rows


def test_json_columns_orientation(tmp_path):
    # pandas' default DataFrame.to_json layout, and its dict-of-lists cousin.
    path = write_json(tmp_path / "columns.json", {"url": {"0": "https://a", "1": "https://b"},
                                                  "caption": {"0": NASTY, "1": None}, "n": {"0": 1, "1": 2}})
    assert read("json", path, ["url", "caption", "n"]).to_pylist() == [
        {"url": "https://a", "caption": NASTY, "n": 1}, {"url": "https://b", "caption": None, "n": 2}]
    assert READER["json"](None).available_columns(source(path)) == ["url", "caption", "n"]
    path = write_json(tmp_path / "lists.json", {"url": ["https://a", "https://b"], "n": [1, 2]})
    assert read("json", path, ["url", "n"]).to_pydict() == {"url": ["https://a", "https://b"], "n": [1, 2]}


def test_json_keys_beyond_the_sample_are_not_columns(tmp_path):
    rows = [{"url": f"https://e.com/{i}"} for i in range(SAMPLE_ROWS)] + [{"url": "https://late", "late": 1}]
    for fmt in ["jsonl", "json"]:
        path = WRITERS[fmt](tmp_path / f"in.{fmt}", rows)
        assert READER[fmt](None).available_columns(source(path)) == ["url"]
        assert read(fmt, path, ["url", "late"]).column_names == ["url"]


def test_nested_json_values(tmp_path):
    rows = [{"url": "https://a", "meta": {"w": 1, "tags": ["x", "y"]}}, {"url": "https://b", "meta": None}]
    for fmt in ["jsonl", "json", "parquet"]:
        assert read(fmt, WRITERS[fmt](tmp_path / f"in.{fmt}", rows), ["url", "meta"]).to_pylist() == rows


# --------------------------------------------------------------------------
# bad input: one clear ConfigError line
# --------------------------------------------------------------------------


def config_error(fmt: str, path: Path, compression: str | None = None, columns=("url", "n")) -> str:
    with pytest.raises(ConfigError) as info:
        list(READER[fmt](None).read(source(path, compression), list(columns), 100))
    message = str(info.value)
    assert message.startswith(f"input file {path}: ")
    assert "\n" not in message
    return message


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "json", "jsonl", "parquet"])
def test_binary_garbage(tmp_path, fmt):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    message = config_error(fmt, path)
    assert ("not a parquet file" if fmt == "parquet" else f"is binary data, not a {fmt} file") in message
    if fmt != "txt":
        with pytest.raises(ConfigError):
            READER[fmt](None).available_columns(source(path))


@pytest.mark.parametrize("fmt", ["txt", "csv", "json", "jsonl"])
def test_compressed_file_read_as_plain_text(tmp_path, fmt):
    path = write_jsonl(tmp_path / "in.x", ROWS, gz=True)
    assert f"is gzip-compressed, not a plain {fmt} file; use input_format {fmt}.gz" in config_error(fmt, path)


@pytest.mark.parametrize("fmt", ["txt", "csv", "json", "jsonl", "parquet"])
def test_not_gzip_data(tmp_path, fmt):
    path = tmp_path / "in.gz"
    path.write_bytes(b"plain text, not gzip\n" * 100)
    assert "not valid gzip data" in config_error(fmt, path, compression="gzip")


def test_truncated_gzip(tmp_path):
    # Past the head that the type inference reads, so that pyarrow's own decompression meets the end.
    rows = [{"url": f"https://e.com/{i}", "caption": f"caption {i}", "n": i} for i in range(100_000)]
    for fmt in ["csv", "jsonl", "txt"]:
        full = WRITERS.get(fmt, write_jsonl)(tmp_path / f"in.{fmt}", rows, gz=True).read_bytes()
        truncated = tmp_path / f"truncated.{fmt}.gz"
        truncated.write_bytes(full[: len(full) * 2 // 3])
        assert "not valid gzip data" in config_error(fmt, truncated, compression="gzip", columns=["url"])


def test_parquet_file_read_as_csv(tmp_path):
    path = write_parquet(tmp_path / "in.csv", ROWS)
    assert "is a parquet file, not a csv file; use input_format parquet" in config_error("csv", path)


def test_csv_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("url,caption,n\n" + "".join(f'https://e/{i},"a\nb",{i}\n' for i in range(10)) + "https://x,2\n")
    assert config_error("csv", path).endswith("line 22: expected 3 fields, got 2")


def test_csv_value_breaking_an_inferred_type(tmp_path):
    path = write_csv(tmp_path / "in.csv", [{"url": f"https://e/{i}", "n": i} for i in range(100_000)]
                     + [{"url": "https://e/x", "n": "abc"}])
    message = config_error("csv", path)
    assert "column 'n'" in message and "'abc'" in message


def test_csv_empty_file(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"")
    assert "needs a header line" in config_error("csv", path)


def test_csv_header_only(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("url,n\n")
    assert read("csv", path, ["url", "n"]).num_rows == 0
    assert READER["csv"](None).available_columns(source(path)) == ["url", "n"]


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "in.json"
    path.write_text('[\n  {"url": "https://a"},\n  {"url": nope}\n]')
    assert "invalid JSON at line 3" in config_error("json", path)
    path.write_text('[{"url": "https://a"}, 5]')
    assert "element 1 (line 1) is not a JSON object" in config_error("json", path)
    path.write_text('[{"url": "https://a"}')
    assert "the file ends inside the array" in config_error("json", path)
    path.write_text('[{"url": "https://a"}] [')
    assert "extra data after the array" in config_error("json", path)
    path.write_text("url,n\nhttps://a,1\n")
    assert "invalid JSON at line 1: expected an array" in config_error("json", path)
    path.write_text('{"url": "https://a"}')
    assert "pandas 'columns' orientation" in config_error("json", path)


def test_invalid_jsonl_names_the_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"url": "https://a"}\n\n{"url": "https://b"\n')
    assert "invalid JSON at line 3" in config_error("jsonl", path)
    path.write_text('{"url": "https://a"}\n["https://b"]\n')
    assert "line 2 is not a JSON object" in config_error("jsonl", path)


def test_invalid_jsonl_after_the_sample_names_the_line(tmp_path):
    # Past the Python-read sample, pyarrow parses; its error is located by a rescan.
    lines = [json.dumps({"url": f"https://e/{i}", "n": i}) for i in range(5000)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines[:3000] + ['{"url": "https://e/bad", "n": "x"}'] + lines[3000:]) + "\n")
    assert "line 3001: column 'n' holds 'x', which does not fit its type int64" in config_error("jsonl", path)
    path.write_text("\n".join(lines[:3000] + ['{"url": "https://e/bad" "n": 1}'] + lines[3000:]) + "\n")
    assert "invalid JSON at line 3001" in config_error("jsonl", path)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_value_types_that_do_not_mix(tmp_path, fmt):
    rows = [{"url": f"https://e/{i}", "n": i} for i in range(3000)]
    rows[10]["n"] = "ten"  # inside the sample
    where = "element 10 (line 1)" if fmt == "json" else "line 11"
    message = config_error(fmt, WRITERS[fmt](tmp_path / f"a.{fmt}", rows))
    assert f"{where}: column 'n' holds 'ten', which does not fit the type int64" in message
    rows[10]["n"], rows[2500]["n"] = 10, "late"  # after the sample
    where = "element 2500 (line 1)" if fmt == "json" else "line 2501"
    message = config_error(fmt, WRITERS[fmt](tmp_path / f"b.{fmt}", rows))
    assert f"{where}: column 'n' holds 'late', which does not fit its type int64" in message


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"https://a\nhttps://b\xff\n")
    assert "not UTF-8 text at line 2" in config_error("txt", path)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"url": "https://a"}\n{"url": "https://b\xff"}\n')
    assert "not UTF-8 text at line 2" in config_error("jsonl", path)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("position", ["first block", "later"])
def test_csv_invalid_utf8_names_the_line(tmp_path, fmt, position):
    """In the first block pyarrow typed the column binary, and every caption came out as b'...'."""
    sep = "," if fmt == "csv" else "\t"
    before = 0 if position == "first block" else 60_000  # about 1.4 MiB: past the first block
    lines = [f"url{sep}caption"] + [f"https://e/{i}{sep}caption {i}" for i in range(before + 1)]
    path = tmp_path / f"in.{fmt}"
    text = "\n".join(lines) + f"\nhttps://e/x{sep}caf"
    path.write_bytes(text.encode() + b"\xe9\n" + f"https://e/y{sep}z\n".encode())
    assert f"not UTF-8 text at line {before + 3}: " in config_error(fmt, path, columns=["url", "caption"])


def test_corrupt_parquet_pages(tmp_path):
    table = pa.table({"url": [f"https://e.com/{i}" for i in range(20_000)], "n": list(range(20_000))})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=5000)
    data = bytearray(path.read_bytes())
    data[1000:5000] = bytes(4000)
    path.write_bytes(bytes(data))
    assert "corrupt parquet data" in config_error("parquet", path)


# --------------------------------------------------------------------------
# bounded memory on large files
# --------------------------------------------------------------------------

MEASURE = textwrap.dedent("""
    import json, sys, tracemalloc
    import fsspec, pyarrow as pa
    from any2ds import InputSource
    from any2ds_plugins.readers import READERS

    fmt, path, columns, batch_size = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
    reader = {cls.name: cls for cls in READERS}[fmt](None)
    source = InputSource(path, fsspec.filesystem("file"))
    # A first batch before measuring: what it imports lazily (pyarrow loads pandas, ~20 MB, when
    # installed) is not the reader's memory.
    next(iter(reader.read(source, columns, batch_size)))
    tracemalloc.start()
    rows = sum(batch.num_rows for batch in reader.read(source, columns, batch_size))
    peak = pa.default_memory_pool().max_memory() + tracemalloc.get_traced_memory()[1]
    print(json.dumps({"rows": rows, "peak": peak}))
""")


def peak_memory(fmt: str, path: Path, columns: list[str], batch_size: int = 10_000) -> tuple[int, int]:
    """Read the file in a fresh process: (rows, peak of Arrow's memory pool + peak of Python allocations).

    RSS is no use here: allocators keep freed pages, so it plateaus near 100 MB
    whatever the file's size.
    """
    out = subprocess.run([sys.executable, "-c", MEASURE, fmt, str(path), ",".join(columns), str(batch_size)],
                         capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    return stats["rows"], stats["peak"]


N_BIG = 2_000_000


@pytest.fixture(scope="module")
def big_table() -> pa.Table:
    ids = pc.cast(pa.array(np.arange(N_BIG)), pa.string())
    return pa.table({
        "url": pc.binary_join_element_wise("https://example.com/images/", ids, ".jpg", ""),
        "caption": pc.binary_join_element_wise("a photo, number ", ids, ""),
        "n": pa.array(np.arange(N_BIG)),
    })


def write_lines(path: Path, strings: pa.ChunkedArray) -> None:
    """Write one string per line, straight from the Arrow buffers (no Python strings: fast)."""
    lines = pc.binary_join_element_wise(strings, "\n", "").combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    path.write_bytes(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])


def test_parquet_memory_is_bounded(tmp_path, big_table):
    path = tmp_path / "big.parquet"
    pq.write_table(big_table, path, row_group_size=100_000)
    rows, peak = peak_memory("parquet", path, ["url", "caption", "n"])
    assert rows == N_BIG
    assert peak < big_table.nbytes / 5, (peak, big_table.nbytes)


def test_csv_memory_is_bounded(tmp_path, big_table):
    path = tmp_path / "big.csv"
    pacsv.write_csv(big_table, path)
    rows, peak = peak_memory("csv", path, ["url", "caption", "n"])
    assert rows == N_BIG
    assert peak < big_table.nbytes / 5, (peak, big_table.nbytes)


def test_jsonl_memory_is_bounded(tmp_path, big_table):
    ids = pc.cast(big_table.column("n"), pa.string())
    lines = pc.binary_join_element_wise('{"url": "', big_table.column("url"), '", "caption": "',
                                        big_table.column("caption"), '", "n": ', ids, "}", "")
    path = tmp_path / "big.jsonl"
    write_lines(path, lines)
    rows, peak = peak_memory("jsonl", path, ["url", "caption", "n"])
    assert rows == N_BIG
    assert peak < big_table.nbytes / 5, (peak, big_table.nbytes)


def test_txt_memory_is_bounded(tmp_path, big_table):
    urls = big_table.column("url")
    path = tmp_path / "big.txt"
    write_lines(path, urls)
    rows, peak = peak_memory("txt", path, ["url"])
    assert rows == N_BIG
    # Materialized, the URLs would take urls.nbytes in Arrow, several times that as Python strings.
    assert peak < urls.nbytes / 5, (peak, urls.nbytes)
