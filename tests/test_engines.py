"""The documented examples of any2ds inside engines (docs/library/*.md), run for real: Ray Data,
Spark, Hugging Face datasets, pandas and pyarrow loops, each on a local engine over a loopback
server, every row's result checked against a download() of the same pipeline_rows.

Each page shows its example file verbatim (checked here), so what the docs show is what runs.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from any2ds.testing import read_dataset
from tests.library_rows import OPTIONS, check_same_as_download, table_rows

DOCS = Path(__file__).resolve().parent.parent / "docs"
pytestmark = pytest.mark.usefixtures("workers_import_tests")


def example(page: str, name: str) -> ModuleType:
    """``docs/library/<name>.py``, after checking that ``page`` shows it whole."""
    path = DOCS / "library" / f"{name}.py"
    code = path.read_text()
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert code in blocks, f"{page} does not show {path.name} as it is"
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def input_parquet(pipeline_rows, tmp_path) -> str:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(pipeline_rows), path)
    return str(path)


def test_ray_data(input_parquet, pipeline_rows_downloaded, tmp_path):
    ray = pytest.importorskip("ray")
    module = example("library/ray.md", "ray_example")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        module.download_with_ray(input_parquet, str(tmp_path / "results"), OPTIONS)
    finally:
        ray.shutdown()
    results = table_rows(pq.read_table(tmp_path / "results"))
    check_same_as_download(results, pipeline_rows_downloaded, compare_keys=False)


def test_spark(input_parquet, pipeline_rows_downloaded, tmp_path):
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    module = example("library/spark.md", "spark_example")
    spark = (SparkSession.builder.master("local[2]").appName("any2ds-library-tests")
             .config("spark.ui.enabled", "false").config("spark.pyspark.python", sys.executable).getOrCreate())
    try:
        module.download_with_spark(spark, input_parquet, str(tmp_path / "results"), OPTIONS)
    finally:
        spark.stop()
    results = table_rows(pq.read_table(tmp_path / "results"))
    check_same_as_download(results, pipeline_rows_downloaded, compare_keys=False)


def test_hugging_face_datasets(input_parquet, pipeline_rows_downloaded, tmp_path):
    datasets = pytest.importorskip("datasets")
    module = example("library/datasets.md", "datasets_example")
    returned = module.download_with_datasets(input_parquet, str(tmp_path / "results"), OPTIONS)
    saved = datasets.load_from_disk(str(tmp_path / "results"))
    assert returned.num_rows == saved.num_rows
    check_same_as_download(table_rows(saved.with_format("arrow")[:]), pipeline_rows_downloaded, compare_keys=False)


def test_pandas_loop(pipeline_rows, pipeline_rows_downloaded, tmp_path):
    pd = pytest.importorskip("pandas")
    module = example("library/loops.md", "pandas_example")
    path = tmp_path / "rows.csv"
    pd.DataFrame(pipeline_rows).to_csv(path, index=False)
    kept = module.download_with_pandas(str(path), OPTIONS)
    expected = [(row, media) for row, media in pipeline_rows_downloaded
                if row["status"] == "success" and row["original_width"] >= 100]
    assert 0 < len(expected) < len(pipeline_rows_downloaded)
    got = table_rows(pa.Table.from_pandas(kept, preserve_index=False))
    check_same_as_download(got, expected, compare_keys=False)


def test_pyarrow_loop(input_parquet, pipeline_rows_downloaded, tmp_path):
    module = example("library/loops.md", "pyarrow_example")
    module.download_with_pyarrow(input_parquet, str(tmp_path / "results.parquet"), OPTIONS)
    assert table_rows(pq.read_table(tmp_path / "results.parquet")) == pipeline_rows_downloaded  # keys too: one stream


def test_shards_from_a_pipeline(pipeline_rows, pipeline_rows_downloaded, tmp_path):
    module = example("library.md", "shards_example")
    summary = module.landscape_shards(pipeline_rows, str(tmp_path / "out"), OPTIONS)
    dataset = read_dataset(tmp_path / "out")
    expected = [(row, media) for row, media in pipeline_rows_downloaded
                if row["status"] == "success" and row["original_width"] > row["original_height"]]
    assert summary["count"] == len(dataset.rows) == len(expected) > 0
    got = [(row, {"jpg": dataset.samples[row["key"]]["jpg"]}) for row in dataset.rows]
    check_same_as_download(got, expected, compare_keys=False)
