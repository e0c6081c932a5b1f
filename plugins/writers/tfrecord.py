"""``output_format: tfrecord``: one TFRecord file of ``tf.train.Example`` per shard.

tensorflow is optional and heavy, so it is imported only when a shard is opened.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from any2ds import (
    ConfigError, MetadataLayout, MetadataShardWriter, OutputFolder, SampleResult, ShardTarget, Writer, caption_text,
    read_metadata,
)

MISSING_TENSORFLOW = "output_format tfrecord needs tensorflow: pip install 'any2ds[tfrecord]'"


def import_tensorflow() -> Any:
    """The tensorflow module, with its C++ logging quieted; ConfigError if it is missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow
    except ImportError as exc:
        raise ConfigError(MISSING_TENSORFLOW) from exc
    return tensorflow


def to_feature(tf: Any, value: Any) -> Any:
    """A metadata value as a ``tf.train.Feature``, following img2dataset: ints become
    int64_list, floats float_list, None ``b""``, anything else bytes. Lists of numbers
    or strings become the matching list; other containers are stored as JSON bytes.
    """
    train = tf.train
    if isinstance(value, numbers.Integral):
        return train.Feature(int64_list=train.Int64List(value=[int(value)]))
    if isinstance(value, numbers.Real):
        return train.Feature(float_list=train.FloatList(value=[float(value)]))
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, numbers.Integral) for v in value):
            return train.Feature(int64_list=train.Int64List(value=[int(v) for v in value]))
        if all(isinstance(v, numbers.Real) for v in value):
            return train.Feature(float_list=train.FloatList(value=[float(v) for v in value]))
        if all(isinstance(v, (str, bytes)) for v in value):
            return train.Feature(bytes_list=train.BytesList(value=[_as_bytes(v) for v in value]))
        value = json.dumps(value, default=str)
    elif isinstance(value, dict):
        value = json.dumps(value, default=str)
    return train.Feature(bytes_list=train.BytesList(value=[_as_bytes(value)]))


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


class TFRecordWriter(Writer):
    """img2dataset's ``tfrecord`` layout: ``<shard>.tfrecord`` with one Example per
    success (``key``, one bytes feature per media stream, ``txt`` when captioned, and
    every metadata field), plus ``<shard>.parquet``."""

    name = "tfrecord"

    def check(self) -> None:
        """Fail at startup without importing tensorflow (slow, and large in memory)."""
        if importlib.util.find_spec("tensorflow") is None:
            raise ConfigError(MISSING_TENSORFLOW)

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> TFRecordShardWriter:
        return TFRecordShardWriter(import_tensorflow(), target, layout)

    def read_output(self, output: OutputFolder) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """Rows from ``<shard>.parquet``; files from each Example's bytes features that are not
        metadata columns (the media streams, ``txt``)."""
        tf = import_tensorflow()
        for shard_name in output.done_shard_names():
            rows = read_metadata(output, shard_name)
            columns = set(rows[0]) if rows else set()
            files: dict[str, dict[str, bytes]] = {}
            with tempfile.TemporaryDirectory(prefix="any2ds-tfrecord-") as folder:
                local = os.path.join(folder, "shard.tfrecord")
                output.fs.get(output.join(f"{shard_name}.tfrecord"), local)  # tensorflow reads local files
                for serialized in tf.data.TFRecordDataset(local).as_numpy_iterator():
                    features = tf.train.Example.FromString(serialized).features.feature
                    files[features["key"].bytes_list.value[0].decode()] = {
                        name: feature.bytes_list.value[0] for name, feature in features.items()
                        if name not in columns and name != "key" and feature.bytes_list.value}
            for row in rows:
                yield row, files.get(row["key"], {})


class TFRecordShardWriter(MetadataShardWriter):
    """Writes Examples to a local file (tensorflow cannot write through fsspec); the
    core uploads it on commit when the output is remote."""

    def __init__(self, tf: Any, target: ShardTarget, layout: MetadataLayout) -> None:
        super().__init__(target, layout)
        self._tf = tf
        self._writer = tf.io.TFRecordWriter(target.local_path(".tfrecord"))

    def write_sample(self, result: SampleResult, record: dict[str, Any]) -> None:
        tf = self._tf
        features = {name: to_feature(tf, value) for name, value in record.items()}
        # The sample's own fields come last so a metadata column can never hide them.
        features["key"] = to_feature(tf, result.sample.key)
        for stream, media in result.media.items():
            features[stream] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[media.data]))
        if self.layout.has_caption:
            features["txt"] = to_feature(tf, caption_text(record))
        example = tf.train.Example(features=tf.train.Features(feature=features))
        # deterministic: a map field (the features) is otherwise serialised in a per-process order.
        self._writer.write(example.SerializeToString(deterministic=True))

    def close_container(self) -> None:
        self._writer.close()
