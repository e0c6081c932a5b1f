"""Download the URLs of a CSV file chunk by chunk with pandas; keep the pictures at least 100 px wide."""

import sys

import pandas as pd
import pyarrow as pa

import any2ds


def download_with_pandas(input_path: str, options: dict) -> pd.DataFrame:
    kept = []
    with any2ds.Pipeline(**options) as pipeline:
        for chunk in pd.read_csv(input_path, chunksize=1000):
            results = pipeline.process_batch(pa.Table.from_pandas(chunk, preserve_index=False)).to_pandas()
            kept.append(results[(results.status == "success") & (results.original_width >= 100)])
    return pd.concat(kept, ignore_index=True)


if __name__ == "__main__":
    download_with_pandas(sys.argv[1], {"image_size": 256, "caption_col": "caption"}).to_parquet(sys.argv[2])
