"""Rows for the library and engine tests, and the download() of the same rows that every
result of a Pipeline must equal: status, error fields, metadata and media bytes, row by row."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import any2ds
from any2ds.testing import LocalHTTPServer, read_dataset
from tests.conftest import JPEG_SIZES

# The options of both sides; 127.0.0.1 is allowed for the loopback server.
OPTIONS = {"caption_col": "caption", "save_additional_columns": ["extra"], "image_size": 32, "thread_count": 8,
           "allow_private_networks": True}
STREAMS = ("jpg",)


def make_rows(server: LocalHTTPServer, count: int = 24) -> list[dict[str, Any]]:
    """``count`` rows of pictures, with a non-image, a 404, a refused download and a missing URL
    among them; each URL is unique (a query string numbers it) so rows can be matched by URL."""
    names = [name for name, _w, _h in JPEG_SIZES] + ["alpha.png", "gray.jpg"]
    rows = []
    for i in range(count):
        path = {3: "/allowed/not_an_image.jpg", 7: "/allowed/missing.jpg",
                11: "/disallowed/64_64.jpg"}.get(i, f"/allowed/{names[i % len(names)]}")
        url = None if i == 13 else server.url(f"{path}?row={i}")
        rows.append({"url": url, "caption": f"caption {i}" if i % 5 else None, "extra": i})
    return rows


def download_rows(rows: list[dict[str, Any]], folder: Path, **options: Any) -> list[tuple[dict, dict[str, bytes]]]:
    """What download() stores for ``rows``: (metadata row, {stream: bytes}) per row, in row order."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    any2ds.download(url_list=str(folder / "rows.parquet"), input_format="parquet", output_folder=str(folder / "out"),
                    output_format="parquet", distributor="inprocess", observers=[], **{**OPTIONS, **options})
    dataset = read_dataset(folder / "out")
    statuses = {row["status"] for row in dataset.rows}
    assert {"success", "failed_to_download", "failed_to_resize"} <= statuses, "the rows must cover failures"
    return [(row, dataset.samples.get(row["key"], {})) for row in dataset.rows]


def table_rows(table: pa.Table | pa.RecordBatch) -> list[tuple[dict, dict[str, bytes]]]:
    """An Arrow output (metadata columns, then a binary column per stream) as (row, {stream: bytes})."""
    pairs = []
    for row in table.to_pylist():
        media = {stream: row.pop(stream) for stream in STREAMS}
        pairs.append((row, {stream: data for stream, data in media.items() if data is not None}))
    return pairs


def result_rows(results: Iterable[any2ds.SampleResult]) -> list[tuple[dict, dict[str, bytes]]]:
    """Pipeline.process results as (row, {stream: bytes}), the row made as a shard's would be."""
    pairs = []
    for result in results:
        sample = result.sample
        row = {"extra": sample.columns.get("extra"), "caption": sample.caption, "url": sample.url, "key": sample.key,
               "status": result.status, "error_message": result.error_message, "error_type": result.error_type}
        pairs.append(({**row, **result.metadata}, {stream: media.data for stream, media in result.media.items()}))
    return pairs


def check_same_as_download(got: list[tuple[dict, dict]], expected: list[tuple[dict, dict]],
                           compare_keys: bool = True) -> None:
    """Every row of ``got`` equals the downloaded row of its URL: all metadata and media bytes
    (keys too when ``compare_keys``; engines calling process_batch per batch number each batch
    from 0)."""
    def by_url(pairs):
        return {row["url"]: (_without_key(row, compare_keys), media) for row, media in pairs}

    assert len(got) == len(expected), f"{len(got)} results for {len(expected)} rows"
    got_by_url, expected_by_url = by_url(got), by_url(expected)
    assert sorted(got_by_url, key=str) == sorted(expected_by_url, key=str)
    for url, (row, media) in expected_by_url.items():
        got_row, got_media = got_by_url[url]
        assert {k: got_row.get(k) for k in row} == row, url
        assert got_media == media, f"{url}: media differ"


def _without_key(row: dict, keep: bool) -> dict:
    return dict(row) if keep else {k: v for k, v in row.items() if k != "key"}
