"""Built-in input readers: txt, csv, tsv, json, jsonl and parquet (URL lists read in the main
process), and archive (tar, tgz, zip files whose members are read in the workers).

Row readers stream their file: memory stays bounded by a few blocks (or one
row group) plus one output batch, whatever the file's size. img2dataset
loaded each input file whole, with every column, which crashed large runs at
start-up (#338).

Every row reader also has ``available_columns(source)``: the file's column
names, found cheaply (header, schema, first records), so that the core can
report a requested column that is missing together with the columns that exist.
"""

from __future__ import annotations

from collections.abc import Callable

from any2ds import Reader, hookimpl
from any2ds_plugins.readers.archive import ArchiveReader
from any2ds_plugins.readers.csv_tsv import CsvReader, TsvReader
from any2ds_plugins.readers.json_jsonl import JsonlReader, JsonReader
from any2ds_plugins.readers.parquet import ParquetReader
from any2ds_plugins.readers.txt import TxtReader

READERS: tuple[type[Reader], ...] = (TxtReader, CsvReader, TsvReader, JsonReader, JsonlReader, ParquetReader)
"""The row readers (URL lists)."""


@hookimpl
def any2ds_register_readers(register: Callable[[type[Reader]], None]) -> None:
    """Register the built-in readers."""
    for reader in (*READERS, ArchiveReader):
        register(reader)
