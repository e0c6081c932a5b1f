"""Download rows held in memory, keep the landscape pictures, and write them as webdataset shards."""

import sys

import any2ds


def landscape_shards(rows: list[dict], output_folder: str, options: dict) -> dict:
    with any2ds.Pipeline(output_format="webdataset", **options) as pipeline:
        with pipeline.writer(output_folder) as shards:
            for result in pipeline.process(rows):
                if result.ok and result.metadata["original_width"] > result.metadata["original_height"]:
                    shards.write(result)
    return shards.summary


if __name__ == "__main__":
    urls = [line.strip() for line in open(sys.argv[1]) if line.strip()]
    print(landscape_shards([{"url": url} for url in urls], sys.argv[2], {"image_size": 256}))
