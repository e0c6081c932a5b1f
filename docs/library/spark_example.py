"""Download the URLs of a parquet file with Spark and write the results as parquet."""

import sys

from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

import any2ds


def download_with_spark(spark: SparkSession, input_path: str, output_path: str, options: dict) -> None:
    rows = spark.read.parquet(input_path)
    with any2ds.Pipeline(**options) as pipeline:
        schema = from_arrow_schema(pipeline.output_schema(to_arrow_schema(rows.schema)))
        # Each task streams its partition's Arrow batches through one flow: no wait at batch ends.
        results = rows.mapInArrow(pipeline.process_batches, schema)
        results.write.mode("overwrite").parquet(output_path)


if __name__ == "__main__":
    download_with_spark(SparkSession.builder.getOrCreate(), sys.argv[1], sys.argv[2],
                        {"image_size": 256, "caption_col": "caption"})
