"""Download the URLs of a parquet file with Ray Data and write the results as parquet."""

import sys

import ray

import any2ds


def download_with_ray(input_path: str, output_path: str, options: dict) -> None:
    rows = ray.data.read_parquet(input_path)
    with any2ds.Pipeline(**options) as pipeline:
        # Each task gets a copy of the pipeline's options; its worker process builds the plugins once.
        results = rows.map_batches(pipeline.process_batch, batch_format="pyarrow", batch_size=256)
        results.write_parquet(output_path)


if __name__ == "__main__":
    download_with_ray(sys.argv[1], sys.argv[2], {"image_size": 256, "caption_col": "caption"})
