"""any2ds: turn lists of URLs into sharded training datasets, through plugins."""

from any2ds.components import (
    Component,
    Distributor,
    Fetcher,
    Observer,
    Processor,
    Reader,
    SampleReader,
    ShardWriter,
    Verifier,
    Writer,
)
from any2ds.config import NoOptions, option
from any2ds.errors import ConfigError, FetchError, PluginError, ProcessError, SampleError, VerifyError
from any2ds.hookspecs import hookimpl
from any2ds.mediatypes import MediaType, detect_media_type
from any2ds.metadata import MetadataLayout
from any2ds.output import OutputFolder, ShardTarget
from any2ds.types import (
    FetchResult, InputSource, KeyFormat, Media, Sample, SampleResult, Shard, ShardFailure, ShardStats,
)

__version__ = "0.1.0"


def download(*args, **kwargs):
    """Run a download; takes img2dataset's ``download()`` arguments, positionally in its order
    too (``download("urls.txt", 256, "out")``), and every plugin's options by keyword.

    Returns the run summary (also written to ``<output_folder>/run_summary.json``).
    """
    from any2ds.run import download as _download

    return _download(*args, **kwargs)


__all__ = [
    "Component", "ConfigError", "Distributor", "FetchError", "FetchResult", "Fetcher", "InputSource",
    "KeyFormat", "Media", "MediaType", "MetadataLayout", "NoOptions", "Observer", "OutputFolder", "PluginError",
    "ProcessError", "Processor", "Reader", "Sample", "SampleError", "SampleReader", "SampleResult", "Shard",
    "ShardFailure", "ShardStats", "ShardTarget", "ShardWriter", "Verifier", "VerifyError", "Writer",
    "detect_media_type", "download", "hookimpl", "option",
]
