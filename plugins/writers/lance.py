"""``output_format: lance``: one Lance dataset, ``<output_folder>/<name>.lance``, holding every row.

Lance commits a dataset's files once, in a manifest, so the work splits in two:

- per shard, in a worker: the rows (metadata columns and one binary column per media
  stream, as in the parquet output) are written as Lance data files of fragments that no
  version references yet, and the fragments' metadata goes to ``<shard>.lance-fragments``,
  committed by the core together with the shard (``<shard>_stats.json`` last);
- once per run, in the main process (:meth:`LanceWriter.finalize`): the fragments of every
  done shard, this run's and earlier runs', are committed as one new version.

The data files of a shard that fails or crashes are referenced by no version (its
``.lance-fragments`` is never committed), so the dataset has every committed row exactly once
however many runs it took; ``LanceDataset.cleanup_old_versions`` deletes such files together
with those of superseded versions.

pylance is optional (``any2ds[lance]``): imported when a shard is opened or a run finalized.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import pyarrow as pa
from attrs import validators as v
from fsspec.implementations.local import LocalFileSystem

from any2ds import ConfigError, ShardWriter, Writer, option
from any2ds_plugins.writers.parquet import RowGroups, rows_and_media

if TYPE_CHECKING:
    import fsspec

    from any2ds import MetadataLayout, OutputFolder, SampleResult, ShardTarget

MISSING_LANCE = "output_format lance needs pylance: pip install 'any2ds[lance]'"
MANIFEST_SUFFIX = ".lance-fragments"
_MANIFEST_NAME = re.compile(r"^(\d+)" + re.escape(MANIFEST_SUFFIX) + "$")
# How often a blocked hand-over to the writing thread checks that the thread is still alive.
_POLL_SECONDS = 1.0
_END = object()
_ABORT = object()


def import_lance() -> Any:
    """The lance module; ConfigError if pylance is missing."""
    # Every shard's write_fragments warns that the dataset does not exist yet: it is created
    # by finalize, on purpose. LANCE_LOG, when set, still chooses the level.
    os.environ.setdefault("LANCE_LOG", "error")
    try:
        import lance
        import lance.fragment
    except ImportError as exc:
        raise ConfigError(MISSING_LANCE) from exc
    return lance


def lance_location(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, dict[str, str] | None]:
    """The URI Lance opens for ``path`` on ``fs``, and its storage options.

    Lance reaches object stores with its own client, not through fsspec: it reads
    credentials from the environment (``AWS_ACCESS_KEY_ID``, ...) itself, but what the
    run's s3fs was given (storage_options: endpoint, region, keys, a credentials profile,
    anonymous access) must be handed over in Lance's own terms.
    """
    if isinstance(fs, LocalFileSystem):
        return path, None
    options: dict[str, str] = {}
    if "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        client_kwargs = getattr(fs, "client_kwargs", None) or {}
        endpoint = getattr(fs, "endpoint_url", None) or client_kwargs.get("endpoint_url")
        if endpoint:
            options["aws_endpoint"] = endpoint
            if endpoint.startswith("http://"):
                options["allow_http"] = "true"
        key, secret, token = getattr(fs, "key", None), getattr(fs, "secret", None), getattr(fs, "token", None)
        profile = (getattr(fs, "kwargs", None) or {}).get("profile")
        region = client_kwargs.get("region_name")
        if profile and not key:  # Lance has no profiles: read the profile's keys as s3fs would
            import botocore.session

            session = botocore.session.Session(profile=profile)
            credentials = session.get_credentials()
            if credentials is not None:
                frozen = credentials.get_frozen_credentials()
                key, secret, token = frozen.access_key, frozen.secret_key, frozen.token
            region = region or session.get_config_variable("region")
        if getattr(fs, "anon", False):
            options["aws_skip_signature"] = "true"
        if region:
            options["aws_region"] = region
        for name, value in (("aws_access_key_id", key), ("aws_secret_access_key", secret),
                            ("aws_session_token", token)):
            if value:
                options[name] = value
    return fs.unstrip_protocol(path), options or None


def _schema_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


class LanceWriter(Writer):
    """Every row of every shard in one Lance dataset, ``<output_folder>/<lance_dataset_name>.lance``
    (columns as in the parquet output), committed once at the end of each run."""

    name = "lance"

    @attrs.frozen
    class Options:
        lance_dataset_name: str = option(
            "dataset", "Name of the Lance dataset written in output_folder: <output_folder>/<name>.lance.",
            v.matches_re(r"[A-Za-z0-9_][A-Za-z0-9._-]*"))

    def check(self) -> None:
        """Fail at startup without importing lance (a large native library)."""
        if importlib.util.find_spec("lance") is None:
            raise ConfigError(MISSING_LANCE)

    def dataset_path(self, output: OutputFolder) -> str:
        return output.join(f"{self.options.lance_dataset_name}.lance")

    def open_shard(self, target: ShardTarget, layout: MetadataLayout) -> LanceShardWriter:
        uri, storage_options = lance_location(target.fs, self.dataset_path(target.folder))
        return LanceShardWriter(import_lance(), target, layout, uri, storage_options)

    def finalize(self, output: OutputFolder) -> None:
        """Commit the fragments of every done shard as the dataset's new version (an
        ``Overwrite``): the same set whatever ran before, so rerunning it changes no row.
        With no done shard, nothing is committed."""
        manifests = committed_manifests(output)
        if not manifests:
            return
        lance = import_lance()
        schema = _one_schema(manifests)
        fragments = [lance.fragment.FragmentMetadata.from_json(json.dumps(fragment))
                     for manifest in manifests.values() for fragment in manifest["fragments"]]
        uri, storage_options = lance_location(output.fs, self.dataset_path(output))
        lance.LanceDataset.commit(uri, lance.LanceOperation.Overwrite(schema, fragments),
                                  storage_options=storage_options)

    def read_output(self, output: OutputFolder) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """The rows of the dataset's latest version (none before the first finalize)."""
        if not committed_manifests(output):
            return
        uri, storage_options = lance_location(output.fs, self.dataset_path(output))
        yield from rows_and_media(import_lance().dataset(uri, storage_options=storage_options).to_table())


def committed_manifests(output: OutputFolder) -> dict[str, dict[str, Any]]:
    """The ``<shard>.lance-fragments`` of every done shard (one with its ``_stats.json``), by shard
    name in shard order. A manifest without stats is from an interrupted commit: left out."""
    done = output.done_shards()
    if not done:
        return {}
    paths = {}
    for path in output.fs.ls(output.root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        match = _MANIFEST_NAME.match(name)
        if match and int(match.group(1)) in done:
            paths[int(match.group(1))] = path
    ordered = [paths[shard_id] for shard_id in sorted(paths)]
    contents = output.fs.cat(ordered) if ordered else {}  # concurrent on object stores
    return {path.rsplit("/", 1)[-1][:-len(MANIFEST_SUFFIX)]: json.loads(contents[path]) for path in ordered}


def _one_schema(manifests: dict[str, dict[str, Any]]) -> pa.Schema:
    """The shards' common schema; ConfigError when two shards differ (one dataset, one schema)."""
    first_shard, first = next(iter(manifests.items()))
    for shard, manifest in manifests.items():
        if manifest["schema"] != first["schema"]:
            a, b = _schema_from_text(first["schema"]), _schema_from_text(manifest["schema"])
            differing = sorted({f.name for f in a if f not in b} | {f.name for f in b if f not in a})
            raise ConfigError(
                f"output_format lance: shards {first_shard} and {shard} have different column(s) "
                f"{', '.join(differing)}, but one Lance dataset has one schema: give every input file the "
                "same column types, or after changing options rerun with incremental_mode=overwrite")
    return _schema_from_text(first["schema"])


class LanceShardWriter(ShardWriter):
    """Streams a shard's rows into Lance data files, a row group at a time.

    Lance's ``write_fragments`` pulls batches from a reader while the core pushes rows,
    so it runs on a thread of its own, fed through a one-slot queue: a shard's media is
    never all in memory.
    """

    def __init__(self, lance: Any, target: ShardTarget, layout: MetadataLayout, uri: str,
                 storage_options: dict[str, str] | None) -> None:
        self._rows = RowGroups(layout)
        self._fs = target.fs
        self._manifest_path = target.path(MANIFEST_SUFFIX)
        self._groups: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._fragments: list[Any] | None = None
        self._error: BaseException | None = None
        reader = pa.RecordBatchReader.from_batches(self._rows.schema, self._batches())
        self._thread = threading.Thread(
            target=self._write_fragments, args=(lance, reader, uri, storage_options),
            name=f"any2ds-lance-{target.shard_name}", daemon=True)
        self._thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (group := self._groups.get()) is not _END:
            if group is _ABORT:
                raise RuntimeError("shard aborted")  # makes write_fragments stop
            yield from group.to_batches()

    def _write_fragments(self, lance: Any, reader: pa.RecordBatchReader, uri: str,
                         storage_options: dict[str, str] | None) -> None:
        try:
            # mode="overwrite": field ids come from this schema, as in finalize's Overwrite,
            # whatever the dataset's current version holds.
            self._fragments = lance.fragment.write_fragments(
                reader, uri, schema=self._rows.schema, mode="overwrite", storage_options=storage_options)
        except BaseException as exc:
            self._error = exc

    def _check_writing(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing Lance fragments failed: {self._error}") from self._error

    def _hand_over(self, item: Any) -> None:
        """Queue ``item`` for the writing thread; raise if that thread has stopped (failed)."""
        while True:
            if not self._thread.is_alive():
                self._check_writing()
                raise RuntimeError("the thread writing Lance fragments stopped before the shard's end")
            try:
                self._groups.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def write(self, result: SampleResult) -> None:
        if self._rows.add(result):
            self._hand_over(self._rows.take())

    def close(self) -> None:
        """Write the last rows, wait for the data files, then record the fragments."""
        group = self._rows.take()
        if group is not None:
            self._hand_over(group)
        self._hand_over(_END)
        self._thread.join()
        self._check_writing()
        manifest = {"schema": _schema_text(self._rows.schema),
                    "fragments": [fragment.to_json() for fragment in self._fragments]}
        with self._fs.open(self._manifest_path, "w") as f:
            json.dump(manifest, f)

    def abort(self) -> None:
        """Stop the writing thread; whatever it wrote is referenced by no version."""
        self._rows.clear()
        if self._thread.is_alive():
            try:
                self._hand_over(_ABORT)
            except RuntimeError:
                pass  # it failed on its own: nothing left to stop
            self._thread.join()
