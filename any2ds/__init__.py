"""any2ds: turn lists of URLs and archives into sharded training datasets, through plugins.

This module is the public API, for users (:func:`download`) and for plugins: a
plugin, built-in or third-party, imports only from here (and from
:mod:`any2ds.testing` in its tests). Everything listed in ``__all__`` is stable
within a major :data:`HOOKSPEC_VERSION`.
"""

from any2ds.components import (
    Component,
    Distributor,
    Fetcher,
    Observer,
    Processor,
    Reader,
    SampleReader,
    ShardFunction,
    ShardWriter,
    Verifier,
    Writer,
)
from any2ds.config import CoreOptions, NoOptions, RunConfig, option
from any2ds.errors import (
    ERROR_TYPES, Any2dsError, ConfigError, FetchError, PluginError, ProcessError, SampleError, VerifyError,
    clean_message,
)
from any2ds.hookspecs import HOOKSPEC_VERSION, hookimpl
from any2ds.mediatypes import MediaType, detect_media_type
from any2ds.metadata import TRUNCATION_MARK, MetadataLayout, MetadataParquetWriter, read_parquet, to_json
from any2ds.output import OutputFolder, ShardTarget
from any2ds.progress import RunProgress, ShardProgress
from any2ds.storage import Storage
from any2ds.validators import at_least, between, greater_than, one_of
from any2ds.types import (
    FetchResult, InputSource, KeyFormat, Media, Sample, SampleResult, Shard, ShardFailure, ShardStats,
)
from any2ds.writers import (
    MetadataShardWriter, SampleFilesWriter, caption_text, read_metadata, sample_files, split_file_name,
)

from any2ds.library import Pipeline
from any2ds.sink import ShardSink

__version__ = "0.1.0"


def download(*args, **kwargs):
    """Run a download; takes img2dataset's ``download()`` arguments, positionally in its order
    too (``download("urls.txt", 256, "out")``), and every plugin's options by keyword: flat for
    the built-ins (``image_size=256``), by component otherwise (``thumbnail={"size": 32}``).

    Returns the run summary (also written to ``<output_folder>/_any2ds/run_summary.json``).
    """
    from any2ds.run import download as _download

    return _download(*args, **kwargs)


__all__ = [
    # running
    "download", "Pipeline", "ShardSink",
    # the contract: hooks and base classes
    "HOOKSPEC_VERSION", "hookimpl", "Component", "Reader", "SampleReader", "Fetcher", "Verifier", "Processor",
    "Writer", "ShardWriter", "SampleFilesWriter", "MetadataShardWriter", "Distributor", "ShardFunction", "Observer",
    # options
    "option", "NoOptions", "CoreOptions", "RunConfig", "at_least", "greater_than", "between", "one_of",
    # typed values
    "Sample", "FetchResult", "Media", "MediaType", "SampleResult", "Shard", "ShardStats", "ShardFailure",
    "KeyFormat", "InputSource", "RunProgress", "ShardProgress",
    # output
    "OutputFolder", "ShardTarget", "Storage", "MetadataLayout", "MetadataParquetWriter", "TRUNCATION_MARK",
    "caption_text", "sample_files", "split_file_name", "read_metadata", "read_parquet", "to_json",
    # errors and helpers
    "Any2dsError", "ConfigError", "PluginError", "SampleError", "FetchError", "ProcessError", "VerifyError",
    "ERROR_TYPES", "clean_message", "detect_media_type",
]
