"""The built-in output formats: img2dataset's files, webdataset, parquet, tfrecord and dummy, and lance."""

from __future__ import annotations

from any2ds import hookimpl
from any2ds_plugins.writers.dummy import DummyWriter
from any2ds_plugins.writers.files import FilesWriter
from any2ds_plugins.writers.lance import LanceWriter
from any2ds_plugins.writers.parquet import ParquetWriter
from any2ds_plugins.writers.tfrecord import TFRecordWriter
from any2ds_plugins.writers.webdataset import WebDatasetWriter

WRITERS = (FilesWriter, WebDatasetWriter, ParquetWriter, TFRecordWriter, DummyWriter, LanceWriter)


@hookimpl
def any2ds_register_writers(register):
    """Register the built-in writers under their ``output_format`` names."""
    for writer in WRITERS:
        register(writer)
