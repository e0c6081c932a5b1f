"""any2ds as a library: Pipeline (rows in, results out) and ShardSink (results in, shards out),
over a real loopback server, checked row by row against a download() of the same rows."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import threading
import time

import pyarrow as pa
import pytest

from any2ds import ConfigError, Pipeline
from any2ds.testing import read_dataset, send_bytes
from any2ds.verify import verify_output
from tests.library_rows import (
    OPTIONS, check_same_as_download, result_rows, table_rows,
)


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline(**OPTIONS) as pipeline:
        yield pipeline


# -- rows in, results out ---------------------------------------------------------------------


def test_process_gives_each_row_what_a_download_stores(pipeline, pipeline_rows, pipeline_rows_downloaded):
    results = list(pipeline.process(iter(pipeline_rows)))  # an iterator: read as the work goes
    assert [r.sample.url for r in results] == [row["url"] for row in pipeline_rows], "input order"
    check_same_as_download(result_rows(results), pipeline_rows_downloaded)  # keys included: a download's keys


def test_arrow_in_arrow_out(pipeline, pipeline_rows, pipeline_rows_downloaded):
    table = pa.Table.from_pylist(pipeline_rows)
    out = pipeline.process_batch(table)
    assert isinstance(out, pa.Table) and out.schema == pipeline.output_schema(table.schema)
    assert out.schema.names[-1] == "jpg" and out.schema.field("jpg").type == pa.binary()
    assert table_rows(out) == pipeline_rows_downloaded  # row for row, keys, metadata and media

    batch = pipeline.process_batch(table.to_batches()[0])
    assert isinstance(batch, pa.RecordBatch) and table_rows(batch) == pipeline_rows_downloaded


def test_a_stream_of_batches_gives_one_batch_out_per_batch_in(pipeline, pipeline_rows, pipeline_rows_downloaded):
    schema = pa.Table.from_pylist(pipeline_rows).schema
    sizes = [0, 5, 1, 0, 10, len(pipeline_rows) - 16, 0]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [pa.RecordBatch.from_pylist(pipeline_rows[start:start + size], schema=schema)
               for start, size in zip(starts, sizes)]
    out = list(pipeline.process_batches(iter(batches)))
    assert [b.num_rows for b in out] == sizes
    assert [pair for b in out for pair in table_rows(b)] == pipeline_rows_downloaded  # keys continue across batches


def test_as_completed_a_slow_row_holds_back_no_other(http_server, pipeline_rows):
    def slow(request):
        time.sleep(1.5)
        send_bytes(request, (http_server.root / "64_64.jpg").read_bytes(), "image/jpeg")

    http_server.route("/slow/", slow)
    slow_rows = [{"url": http_server.url("/slow/a.jpg"), "caption": None, "extra": -1}, *pipeline_rows[:6]]
    with Pipeline(**OPTIONS) as pipeline:
        completed = [r.sample.url for r in pipeline.process(slow_rows, in_order=False)]
        ordered = [r.sample.url for r in pipeline.process(slow_rows)]
    assert completed[-1] == slow_rows[0]["url"] and sorted(completed, key=str) == sorted(ordered, key=str)
    assert ordered == [row["url"] for row in slow_rows]


def test_the_watchdog_and_the_limits_are_the_executors(http_server):
    def hang(request):
        time.sleep(5)
        send_bytes(request, b"late")

    http_server.route("/hang/", hang)
    with Pipeline(**{**OPTIONS, "sample_timeout": 0.5, "timeout": 30}) as pipeline:
        (result,) = pipeline.process([{"url": http_server.url("/hang/x.jpg")}])
    assert (result.status, result.error_type) == ("failed_to_download", "watchdog")


def test_missing_input_columns_are_named(pipeline):
    with pytest.raises(ConfigError, match=r"Pipeline input: column\(s\) 'extra' not found"):
        pipeline.process_batch(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["c"]}))
    with pytest.raises(TypeError, match="a row is a mapping"):
        list(pipeline.process(["http://127.0.0.1:9/a.jpg"]))


def test_a_dict_missing_a_url_is_a_failed_row(pipeline):
    (result,) = pipeline.process([{"caption": "no url"}])
    assert (result.status, result.error_type, result.sample.caption) == ("failed_to_download", "missing", "no url")


def test_a_url_that_is_not_text_is_a_failed_row(pipeline):
    results = list(pipeline.process([{"url": 5, "caption": "int"}, {"url": b"http://127.0.0.1:9/a.jpg"}]))
    assert [(r.sample.url, r.status, r.error_type) for r in results] == [
        ("5", "failed_to_download", "invalid_url"), ("http://127.0.0.1:9/a.jpg", "failed_to_download", "connect")]


@pytest.mark.parametrize("options, message", [
    ({"image_size": 0}, "image_size"),
    ({"processors": ["nope"]}, "processors: unknown processor 'nope'"),
    ({"imagesize": 3}, "did you mean 'image_size'"),
    ({"url_list": "urls.txt", "distributor": "ray"}, "distributor, url_list: download\\(\\) options only"),
])
def test_options_are_checked_at_construction(options, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline(**options)


# -- sharing: threads, processes, copies --------------------------------------------------------


def test_threads_share_one_pipeline(pipeline, pipeline_rows, pipeline_rows_downloaded):
    parts = [pipeline_rows[i::3] for i in range(3)]
    got: list = [None] * 3

    def work(i):
        got[i] = result_rows(pipeline.process(parts[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    check_same_as_download([pair for part in got for pair in part], pipeline_rows_downloaded, compare_keys=False)


def _process_in_child(pipeline, rows, queue):
    queue.put(result_rows(pipeline.process(rows)))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_pipeline_works_in_forked_and_spawned_processes(pipeline, pipeline_rows, pipeline_rows_downloaded,
                                                          start_method):
    """Forked after use (its threads and connections do not exist in the child) or pickled
    into a spawned process (which builds its own plugins): the child processes rows, and so
    does the parent afterwards."""
    list(pipeline.process(pipeline_rows[:4]))  # the parent's threads and connections are up
    context = multiprocessing.get_context(start_method)
    queue = context.Queue()
    child = context.Process(target=_process_in_child, args=(pipeline, pipeline_rows, queue))
    child.start()
    from_child = queue.get(timeout=120)
    child.join(30)
    assert child.exitcode == 0
    check_same_as_download(from_child, pipeline_rows_downloaded)
    check_same_as_download(result_rows(pipeline.process(pipeline_rows)), pipeline_rows_downloaded)


def test_pipelines_of_the_same_options_share_their_plugins_until_the_last_closes(pipeline_rows):
    first, second = Pipeline(**OPTIONS), Pipeline(**OPTIONS)
    copy = pickle.loads(pickle.dumps(first))
    assert first._stages() is second._stages() is copy._stages()
    first.close()
    copy.close()
    assert [r.sample.url for r in second.process(pipeline_rows[:3])] == [row["url"] for row in pipeline_rows[:3]]
    second.close()
    with pytest.raises(ValueError, match="closed"):
        second.process(pipeline_rows)


# -- results in, shards out ----------------------------------------------------------------------


def test_filtered_results_written_as_a_runs_shards(pipeline_rows, pipeline_rows_downloaded, tmp_path):
    out = tmp_path / "out"
    with Pipeline(**OPTIONS, output_format="webdataset", number_sample_per_shard=4) as pipeline:
        with pipeline.writer(str(out)) as sink:
            kept = []
            for result in pipeline.process(pipeline_rows):
                if result.ok and result.metadata["original_width"] >= 100:
                    result.metadata["height"] = 7  # enriched on the way
                    sink.write(result)
                    kept.append(result)
    dataset = read_dataset(out)
    assert len(kept) >= 8
    assert sink.summary["state"] == "done" and dataset.summary["count"] == len(kept)
    assert dataset.summary["config"]["output_folder"] == str(out)  # the folder written, not the option's default
    assert dataset.summary["shards_done"] == -(-len(kept) // 4)
    assert [row["key"] for row in dataset.rows] == [f"{i // 4:05d}{i % 4}" for i in range(len(kept))]
    expected = {row["url"]: media for row, media in pipeline_rows_downloaded}
    for row, result in zip(dataset.rows, kept):
        assert row["url"] == result.sample.url and row["extra"] == result.sample.columns["extra"]
        assert row["height"] == 7 and row["width"] == result.metadata["width"]
        files = dataset.samples[row["key"]]
        assert files["jpg"] == expected[row["url"]]["jpg"] and json.loads(files["json"])["key"] == row["key"]
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["count"] == 4 and stats["successes"] == 4
    assert not (out / "_tmp").exists()
    verification = verify_output(str(out))  # the shards' sha256 and the summary's manifest, as a run's
    assert verification.ok and verification.files == 2 * dataset.summary["shards_done"], verification.problems


def test_a_sink_refuses_a_folder_with_shards_unless_told(pipeline_rows, tmp_path):
    out = str(tmp_path / "out")
    with Pipeline(**OPTIONS, output_format="parquet") as pipeline:
        with pipeline.writer(out) as sink:
            for result in pipeline.process(pipeline_rows[:3]):
                sink.write(result)
        with pytest.raises(ConfigError, match="has shards already"):
            pipeline.writer(out)
    with Pipeline(**OPTIONS, output_format="parquet", incremental_mode="extend") as pipeline:
        with pipeline.writer(out, input_schema=pa.schema([("extra", pa.int64())])) as sink:
            for result in pipeline.process(pipeline_rows[3:5]):
                sink.write(result)
    dataset = read_dataset(out)
    assert [row["url"] for row in dataset.rows] == [row["url"] for row in pipeline_rows[:5]]
    assert sorted(p.name for p in (tmp_path / "out").glob("*_stats.json")) == ["00000_stats.json", "00001_stats.json"]


def test_an_error_in_the_block_drops_the_open_shard_and_keeps_the_committed(pipeline_rows, tmp_path):
    out = tmp_path / "out"
    with Pipeline(**OPTIONS, number_sample_per_shard=2) as pipeline:
        with pytest.raises(RuntimeError, match="stop"):
            with pipeline.writer(str(out)) as sink:
                for i, result in enumerate(pipeline.process(pipeline_rows[:5])):
                    sink.write(result)
                    if i == 2:
                        raise RuntimeError("stop")
        with pytest.raises(ValueError, match="closed"):
            sink.write(result)
    assert sorted(p.name for p in out.glob("*_stats.json")) == ["00000_stats.json"]
    assert not list((out / "_tmp").glob("*")) and json.loads((out / "_any2ds/run_summary.json").read_text())[
        "state"] == "running"

