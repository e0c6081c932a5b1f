"""Download the URLs of a parquet file with Hugging Face datasets and save the results."""

import sys

import datasets

import any2ds


def download_with_datasets(input_path: str, output_path: str, options: dict) -> datasets.Dataset:
    rows = datasets.Dataset.from_parquet(input_path)
    with any2ds.Pipeline(**options) as pipeline:
        # Arrow format: each batch is a pyarrow Table, and process_batch returns one.
        results = rows.with_format("arrow").map(pipeline.process_batch, batched=True, batch_size=256,
                                                remove_columns=rows.column_names)
    results = results.with_format(None)
    results.save_to_disk(output_path)
    return results


if __name__ == "__main__":
    download_with_datasets(sys.argv[1], sys.argv[2], {"image_size": 256, "caption_col": "caption"})
