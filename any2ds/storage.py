"""Where files live: fsspec filesystems built with the run's ``storage_options``.

``storage_options`` holds fsspec's keyword arguments by protocol, the shape of fsspec's own
configuration files: ``{"s3": {"endpoint_url": "http://minio:9000", "profile": "minio"},
"gcs": {"token": "anon"}}``. By protocol, because one run may read from one store and write
to another. Every file the run opens (input lists, archives, the output folder) is reached
through :meth:`Storage.url_to_fs`, in the main process and in every worker: the options
travel in the RunConfig.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import fsspec
from fsspec.core import split_protocol

from any2ds.errors import ConfigError

# Option names whose values are secrets: replaced in run_summary.json and experiment trackers.
_SECRET_WORDS = ("key", "secret", "token", "password", "credential")
REDACTED = "<redacted>"


@attrs.frozen
class Storage:
    """The run's fsspec options by protocol; builds the filesystem of any URL with them."""

    options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)

    def url_to_fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem of ``url``, built with the options of its protocol, and the path on it.

        ``s3a://`` finds the ``s3`` options and ``gs://`` the ``gcs`` ones (one filesystem,
        several names). In a chained URL (``simplecache::s3://...``) each layer gets its own.
        """
        if "::" in url:
            return fsspec.core.url_to_fs(url, **{k: dict(v) for k, v in self.options.items()})
        return fsspec.core.url_to_fs(url, **self.options_for(url))

    def options_for(self, url: str) -> dict[str, Any]:
        """The options that apply to ``url``: those given under any name of its filesystem."""
        protocol = split_protocol(url)[0] or "file"
        if protocol in self.options:
            return dict(self.options[protocol])
        try:
            names = fsspec.get_filesystem_class(protocol).protocol
        except (ImportError, ValueError):  # not installed, or unknown: url_to_fs says so
            return {}
        for name in (names,) if isinstance(names, str) else names:
            if name in self.options:
                return dict(self.options[name])
        return {}


def check_storage_options(_instance: Any, _attribute: Any, value: Any) -> None:
    """attrs validator of ``storage_options``: a mapping of known fsspec protocols to mappings."""
    if not isinstance(value, Mapping):
        raise ValueError(f"storage_options must map protocols to fsspec options, not {value!r}")
    known = set(fsspec.available_protocols())
    for protocol, options in value.items():
        if protocol not in known:
            raise ValueError(
                f"storage_options: {protocol!r} is not an fsspec protocol; give each protocol's options under its "
                f"name, e.g. {{\"s3\": {{\"endpoint_url\": \"http://127.0.0.1:9000\"}}}}")
        if not isinstance(options, Mapping):
            raise ValueError(f"storage_options: the options of {protocol!r} must be a mapping, not {options!r}")


def storage_argument(text: str) -> Storage:
    """The ``--storage_options`` of the commands that read an output folder (report, verify): JSON
    or YAML, checked as the download option is."""
    import yaml  # here: the workers, which import this module, read no YAML (1 MB, 17 ms)

    try:
        options = yaml.safe_load(text)
        check_storage_options(None, None, options)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"--storage_options: {exc}") from exc
    return Storage(options)


STORAGE_ARGUMENT_HELP = ("fsspec options by protocol, as for download, in JSON or YAML: "
                         "'{s3: {endpoint_url: \"http://minio:9000\", profile: minio}}'.")


def redacted(storage_options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``storage_options`` with every secret value (keys, tokens, passwords) replaced."""
    return {protocol: {name: REDACTED if any(word in name.lower() for word in _SECRET_WORDS) else value
                       for name, value in options.items()}
            for protocol, options in storage_options.items()}
