"""Stream a parquet file of URLs through a Pipeline into a parquet file of results, batch by batch."""

import sys

import pyarrow.parquet as pq

import any2ds


def download_with_pyarrow(input_path: str, output_path: str, options: dict) -> None:
    source = pq.ParquetFile(input_path)
    with any2ds.Pipeline(**options) as pipeline:
        schema = pipeline.output_schema(source.schema_arrow)
        with pq.ParquetWriter(output_path, schema) as results:
            for batch in pipeline.process_batches(source.iter_batches(batch_size=1000)):
                results.write_batch(batch)


if __name__ == "__main__":
    download_with_pyarrow(sys.argv[1], sys.argv[2], {"image_size": 256, "caption_col": "caption"})
