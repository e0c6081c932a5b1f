"""``input_format: archive``: samples read from existing tar, tar.gz/tgz and zip archives.

Each archive is one output shard. Its shard id is its index in the sorted list
of archives: N machines given complementary ``min_offset``/``max_offset``
ranges write each output shard once between them. A shard's archive is read
in the worker that runs it, in one sequential pass, so its bytes never travel
from the main process and memory does not grow with its size.

Members are grouped into samples by the webdataset convention: ``00001.jpg``,
``00001.txt`` and ``00001.json`` are one sample with key ``00001`` (the
member path up to the first dot of its base name; a sample's members are
consecutive). The media is the member whose extension comes first in
``media_extensions``; the ``caption_extension`` member is the caption; the
``json`` member's fields fill ``save_additional_columns``, and its ``url``
is recorded (not fetched). Every group of members is one metadata row: a
group that cannot give a sample (no media, a member over ``max_member_bytes``)
is a failed row, as is one in which a member it could use is met twice.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import attrs
import fsspec
import pyarrow as pa
from attrs import validators as v
from braceexpand import UnbalancedBracesError, braceexpand
from fsspec.implementations.local import LocalFileSystem

from any2ds import ConfigError, InputSource, KeyFormat, Sample, SampleError, SampleReader, Shard, Storage, option
from any2ds_plugins.readers.archive_members import (
    ARCHIVE_SUFFIXES, ArchiveError, Member, archive_errors, archive_members, archive_suffix, described,
    split_member_name, timed_out,
)
from any2ds_plugins.readers.common import as_text_type, short_repr

DEFAULT_MEDIA_EXTENSIONS = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif", "heic",  # images
    "flac", "wav", "mp3", "ogg", "opus", "m4a",  # audio
    "mp4", "webm", "mkv", "mov", "avi",  # video
    "npy",
]
SOURCE_COLUMNS = ("source_archive", "source_key")
"""Input columns every sample carries, copied into the metadata."""

PEEK_ARCHIVES = 8
PEEK_SAMPLES = 100
"""The json columns' types come from their first non-null values in the first PEEK_SAMPLES
samples, read from at most PEEK_ARCHIVES archives from the start of the sorted list."""

# An output key is a file and tar member name: one path component, no dot (webdataset splits
# the key from the extension at the first dot).
SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")
_EXTENSION = re.compile(r"\.?[A-Za-z0-9]+(\.[A-Za-z0-9]+)*")


def _extension(value: str) -> str:
    return value.lstrip(".").lower()


def _check_extensions(_inst: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must name at least one extension")
    bad = [e for e in value if not _EXTENSION.fullmatch(e)]
    if bad:
        raise ValueError(f"{attribute.name}: {', '.join(map(repr, bad))} not extensions (letters and digits, "
                         "dot-separated: jpg, seg.png)")


def _check_caption_extension(inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is None:
        return
    if not _EXTENSION.fullmatch(value):
        raise ValueError(f"{attribute.name}: {value!r} is not an extension (letters and digits: txt)")
    if _extension(value) == "json" or _extension(value) in map(_extension, inst.media_extensions):
        raise ValueError(f"{attribute.name}: {value!r} is also the json or a media extension")


def _check_max_offset(inst: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value <= inst.min_offset:
        raise ValueError(f"max_offset ({value}) must be more than min_offset ({inst.min_offset}): "
                         "the range [min_offset, max_offset) would select no archive")


class ArchiveReader(SampleReader):
    """Samples from tar, tar.gz/tgz and zip archives, read in the workers; one shard per archive."""

    name = "archive"

    @attrs.frozen
    class Options:
        min_offset: int = option(0, "Archive input: index (in the sorted list of archives) of the first archive "
                                    "to process; an archive's index is its shard id.", v.ge(0))
        max_offset: Optional[int] = option(None, "Archive input: index after the last archive to process "
                                                 "(default: to the end).", _check_max_offset)
        keep_source_keys: bool = option(False, "Archive input: output keys are the samples' keys in their archive "
                                               "(letters, digits, _ and -; others fail) instead of new ones.")
        media_extensions: list[str] = option(
            attrs.Factory(lambda: list(DEFAULT_MEDIA_EXTENSIONS)),
            "Archive input: extensions of the member taken as a sample's media, first match wins.",
            _check_extensions)
        caption_extension: Optional[str] = option(
            "txt", "Archive input: extension of the member holding the caption; null: no caption.",
            _check_caption_extension)
        max_member_bytes: int = option(
            256 * 2**20, "Archive input: a member larger than this (zip: as declared) fails its sample, unread.",
            v.ge(1))
        archive_read_timeout: float = option(
            60.0, "Archive input: seconds a read of an http(s) archive may wait for the connection or for more "
                  "bytes before its shard fails (or, at start-up, the run stops).", v.gt(0))

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._media_rank: dict[str, int] = {}
        for rank, extension in enumerate(options.media_extensions):
            self._media_rank.setdefault(_extension(extension), rank)
        self._caption = None if options.caption_extension is None else _extension(options.caption_extension)

    def kept_columns(self) -> Sequence[str]:
        """Where each row comes from: ``source_archive`` (its URL) and ``source_key`` (its key there)."""
        return SOURCE_COLUMNS

    def captioned(self) -> bool:
        return self._caption is not None

    # ------------------------------------------------------------------ main process

    def input_files(self, url_list: str, input_format: str) -> list[InputSource]:
        """The archives ``url_list`` names, sorted: an archive, a folder's archives, a glob, or a
        brace pattern (``s3://b/{00000..00999}.tar``). Brace-listed archives are not looked up:
        one that does not exist fails its own shard."""
        if input_format != self.name:
            raise ConfigError(f"input_format {input_format!r}: use input_format archive (.tar, .tar.gz, .tgz "
                              "and .zip archives are told apart by their names)")
        try:
            urls = list(dict.fromkeys(braceexpand(url_list)))
        except UnbalancedBracesError as exc:
            raise ConfigError(f"url_list {url_list!r}: {exc}") from exc
        listed = urls != [url_list]
        archives: dict[str, InputSource] = {}
        for url in urls:
            for source in self._archives(url, listed):
                archives.setdefault(archive_url(source), source)
        if not archives:
            raise ConfigError(f"url_list {url_list!r} names no archive (.tar, .tar.gz, .tgz, .zip)")
        sources = [archives[url] for url in sorted(archives)]
        if self.options.min_offset >= len(sources):
            raise ConfigError(f"min_offset {self.options.min_offset} is past the last archive: url_list "
                              f"{url_list!r} names {len(sources)}")
        return sources

    def plan(self, sources: Sequence[InputSource]) -> Iterator[tuple[int, str]]:
        """One shard per archive of [min_offset, max_offset): (its index, its URL)."""
        stop = len(sources) if self.options.max_offset is None else min(self.options.max_offset, len(sources))
        for index in range(self.options.min_offset, stop):
            yield index, archive_url(sources[index])

    def column_schema(self, sources: Sequence[InputSource], columns: Sequence[str]) -> pa.Schema:
        """``source_*`` are strings; a json column takes the type of its first informative value
        (see PEEK_SAMPLES); text and never-seen columns are strings."""
        types = self._peek(sources, [c for c in columns if c not in SOURCE_COLUMNS])
        return pa.schema([pa.field(name, types.get(name, pa.string())) for name in columns])

    def _peek(self, sources: Sequence[InputSource], names: Sequence[str]) -> dict[str, pa.DataType]:
        """The type of each of ``names`` in the json members of the first samples, where one says."""
        types: dict[str, pa.DataType] = {}
        if not names:
            return types
        seen = 0
        for source in sources[:PEEK_ARCHIVES]:
            # A broken archive is the business of its own shard, not of the run's start.
            with contextlib.suppress(Exception), source.open() as f, \
                    contextlib.closing(self._groups(archive_members(f, source.path), with_media=False)) as groups:
                for group in groups:
                    record, _error = _json_member(group)
                    for name in names:
                        arrow_type = _arrow_type(record.get(name))
                        if arrow_type is not None:
                            types.setdefault(name, arrow_type)
                    seen += 1
                    if len(types) == len(names) or seen >= PEEK_SAMPLES:
                        return types
        return types

    def _archives(self, url: str, listed: bool) -> list[InputSource]:
        """The archives one (brace-expanded) ``url`` names: a glob's matches, the archive itself, or a
        folder's archives. A ``listed`` one (from a brace pattern) is taken as it is, unchecked."""
        try:
            fs, path = self._storage().url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"url_list {url!r}: {exc}") from exc
        try:
            if any(c in path for c in "*?["):
                paths = sorted(p for p, info in fs.glob(path, detail=True).items()
                               if info["type"] == "file" and archive_suffix(p))
                if not paths and not listed:
                    raise ConfigError(f"url_list {url!r} matches no archive (.tar, .tar.gz, .tgz, .zip)")
            # isfile before isdir: over http, isdir downloads the whole body to look for links.
            elif listed or (archive_suffix(path) and fs.isfile(path)):
                if not archive_suffix(path):
                    raise ConfigError(f"url_list {url!r} is not a .tar, .tar.gz, .tgz or .zip archive")
                paths = [path]
            elif fs.isdir(path):
                paths = sorted(e["name"] for e in fs.ls(path, detail=True)
                               if e["type"] == "file" and archive_suffix(e["name"]))
                if not paths:
                    raise ConfigError(f"url_list {url!r} is a folder with no .tar, .tar.gz, .tgz or .zip archive")
            elif fs.exists(path):
                raise ConfigError(f"url_list {url!r} is not a .tar, .tar.gz, .tgz or .zip archive")
            else:
                raise ConfigError(f"url_list {url!r} does not exist")
        except ConfigError:
            raise
        except Exception as exc:  # each filesystem fails in its own way (aiohttp, botocore...): all stop the run
            cause = timed_out(self._timeout_of(url)) if isinstance(exc, TimeoutError) else described(exc)
            raise ConfigError(f"url_list {url!r} cannot be read: {cause}") from exc
        return [_input(fs, p) for p in paths]

    def _storage(self) -> Storage:
        """The run's storage, with every wait of an http(s) read bounded by ``archive_read_timeout``
        (aiohttp's default, 300 s for a whole transfer, let a stalled server hold a shard for 5
        minutes and would cut a long archive short). A timeout in ``storage_options`` is kept."""
        try:
            from aiohttp import ClientTimeout
        except ImportError:  # no http filesystem either: fsspec says so when one is asked for
            return self.storage
        wait = self.options.archive_read_timeout
        options = dict(self.storage.options)
        for protocol in ("http", "https"):
            given = self.storage.options_for(f"{protocol}://")
            client_kwargs = {"timeout": ClientTimeout(total=None, sock_connect=wait, sock_read=wait),
                             **(given.get("client_kwargs") or {})}
            options[protocol] = {**given, "client_kwargs": client_kwargs}
        return Storage(options)

    def _timeout_of(self, url: str) -> float | None:
        """``archive_read_timeout`` if it bounds the reads of ``url``, else None."""
        return self.options.archive_read_timeout if url.lower().startswith(("http://", "https://")) else None

    # ------------------------------------------------------------------ worker

    def samples(self, shard: Shard, keys: KeyFormat, columns: Sequence[str]) -> Iterator[Sample]:
        url = shard.work
        schema = shard.column_schema
        keys_seen: set[str] = set()
        with archive_errors(url, self._timeout_of(url)):
            source = self._source(url)
            with source.open() as f:
                for index, group in enumerate(self._groups(archive_members(f, source.path))):
                    yield self._sample(group, url, shard.shard_id, index, keys, schema, keys_seen)

    def _source(self, url: str) -> InputSource:
        """The archive at ``url``, as a shard's work names it."""
        fs, path = self._storage().url_to_fs(url)
        if not archive_suffix(path):
            raise ArchiveError("not a .tar, .tar.gz, .tgz or .zip archive")
        return _input(fs, path)

    def _sample(self, group: _Group, url: str, shard_id: int, index: int, keys: KeyFormat, schema: pa.Schema,
                keys_seen: set[str]) -> Sample:
        """The group as a sample; a group that cannot be one is a sample with an ``error``."""
        key = self._output_key(group, shard_id, index, keys)
        record, json_error = _json_member(group)
        caption, caption_error = self._caption_of(group)
        media_error = None if group.media_data is not None else SampleError(
            f"no media member (found: {', '.join(group.extensions)})", error_type="missing")
        key_error = self._key_error(group, key, keys_seen) if self.options.keep_source_keys else None
        error = group.error or json_error or caption_error or media_error or key_error
        url_field = record.get("url")
        return Sample(key=key, shard_id=shard_id, index=index, url=url_field if isinstance(url_field, str) else None,
                      caption=caption, columns=_columns(group, url, record, schema),
                      data=None if error else group.media_data, filename=group.media_name, error=error)

    def _output_key(self, group: _Group, shard_id: int, index: int, keys: KeyFormat) -> str:
        if self.options.keep_source_keys:
            return _printable(group.key)
        if index >= keys.number_sample_per_shard:
            raise ArchiveError(f"holds more than number_sample_per_shard={keys.number_sample_per_shard} samples, "
                               "whose keys would collide with the next shard's: raise number_sample_per_shard "
                               "or set keep_source_keys")
        return keys.key(shard_id, index)

    def _caption_of(self, group: _Group) -> tuple[str | None, SampleError | None]:
        if self._caption is None or group.caption_data is None:
            return None, None
        try:
            return group.caption_data.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, SampleError(f"member {group.caption_name} is not UTF-8 text", error_type="archive.invalid_caption")

    @staticmethod
    def _key_error(group: _Group, key: str, keys_seen: set[str]) -> SampleError | None:
        """Why a source key cannot be an output key (unsafe as a file name, or met before), or None."""
        if not SAFE_KEY.fullmatch(group.key):
            return SampleError(f"source key {key!r} cannot be an output key: keep_source_keys takes letters, "
                               "digits, _ and - only", error_type="unsafe_key")
        if key in keys_seen:
            return SampleError(f"source key {key!r} appears twice in the archive (its members are not "
                               "consecutive)", error_type="archive.duplicate_key")
        keys_seen.add(key)
        return None

    # ------------------------------------------------------------------ both

    def _groups(self, members: Iterator[Member], with_media: bool = True) -> Iterator[_Group]:
        """Consecutive members with one key, as groups holding the bytes of the members a sample
        needs; the others are skipped unread."""
        group: _Group | None = None
        for member in members:
            key, extension = split_member_name(member.name)
            if group is None or key != group.key:
                if group is not None:
                    yield group
                group = _Group(key)
            group.add_extension(extension or member.name.rpartition("/")[2])
            self._check_unique(member.name, extension.lower(), group)
            role = self._role(extension.lower(), group, with_media)
            if role is None or group.error is not None:
                continue
            data = self._read(member, group)
            if data is None:
                continue
            if role == "media":
                group.media_rank = self._media_rank[extension.lower()]
                group.media_name, group.media_data = member.name, data
            elif role == "caption":
                group.caption_name, group.caption_data = member.name, data
            else:
                group.json_name, group.json_data = member.name, data
        if group is not None:
            yield group

    def _check_unique(self, name: str, extension: str, group: _Group) -> None:
        """Fail the group if a member it could use (media, caption, json) is met twice: keeping
        either copy would silently drop the other, and nothing tells which one is meant."""
        if extension != "json" and extension != self._caption and extension not in self._media_rank:
            return
        if name in group.usable_names and group.error is None:
            group.error = SampleError(f"member {name} appears twice: which copy belongs to the sample is ambiguous",
                                      error_type="archive.duplicate_member")
        group.usable_names.add(name)

    def _role(self, extension: str, group: _Group, with_media: bool) -> str | None:
        """What the member is to its sample (media, caption, json), or None: not needed."""
        if extension == "json":
            return "json"
        if extension == self._caption:
            return "caption"
        rank = self._media_rank.get(extension)
        if with_media and rank is not None and (group.media_rank is None or rank < group.media_rank):
            return "media"
        return None

    def _read(self, member: Member, group: _Group) -> bytes | None:
        """The member's bytes, or None with the group's error set."""
        limit = self.options.max_member_bytes
        if member.size > limit:
            group.error = SampleError(f"member {member.name} holds {member.size} bytes, more than "
                                      f"max_member_bytes={limit}", error_type="too_large")
            return None
        try:
            return member.read()
        except SampleError as error:
            group.error = error
            return None


@attrs.define
class _Group:
    """The members of one sample met so far: the bytes it needs, and what else it holds."""

    key: str
    extensions: list[str] = attrs.field(factory=list)
    usable_names: set[str] = attrs.field(factory=set)
    media_rank: int | None = None
    media_name: str | None = None
    media_data: bytes | None = attrs.field(default=None, repr=False)
    caption_name: str | None = None
    caption_data: bytes | None = attrs.field(default=None, repr=False)
    json_name: str | None = None
    json_data: bytes | None = attrs.field(default=None, repr=False)
    error: SampleError | None = None

    def add_extension(self, extension: str) -> None:
        if extension not in self.extensions:
            self.extensions.append(extension)


def _input(fs: fsspec.AbstractFileSystem, path: str) -> InputSource:
    suffix = archive_suffix(path)
    assert suffix is not None
    return InputSource(path, fs, ARCHIVE_SUFFIXES[suffix])


def archive_url(source: InputSource) -> str:
    """What names an archive in shards and in ``source_archive``: a local path, or a URL."""
    if isinstance(source.fs, LocalFileSystem):
        return source.path
    return source.fs.unstrip_protocol(source.path)


def _json_member(group: _Group) -> tuple[dict[str, Any], SampleError | None]:
    """The group's json object ({} without a json member), or an error if it holds anything else."""
    if group.json_data is None:
        return {}, None
    record = _json_record(group.json_data)
    if record is None:
        return {}, SampleError(f"member {group.json_name} is not a JSON object", error_type="archive.invalid_json")
    return record, None


def _columns(group: _Group, url: str, record: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """The sample's input columns: where it comes from, and the json fields ``schema`` asks for.
    A value that does not fit its column's type fails the shard (the metadata could not hold it)."""
    columns: dict[str, Any] = {"source_archive": url, "source_key": _printable(group.key)}
    for field in schema:
        if field.name not in columns:
            value = record.get(field.name)
            if not _fits(value, field.type):
                raise ArchiveError(f"member {group.json_name}: column {field.name!r} holds {short_repr(value)}, "
                                   f"which does not fit its type {field.type} (typed from the first samples)")
            columns[field.name] = value
    return columns


def _json_record(data: bytes) -> dict[str, Any] | None:
    """A json member's object, or None if it holds anything else."""
    try:
        record = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        return None
    return record if isinstance(record, dict) else None


def _arrow_type(value: Any) -> pa.DataType | None:
    """The column type a json value gives; None when it tells nothing (null, [], a mix pyarrow refuses)."""
    if value is None:
        return None
    try:
        arrow_type = pa.array([value]).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    if pa.types.is_list(arrow_type) and pa.types.is_null(arrow_type.value_type):
        return None
    return as_text_type(arrow_type)


def _fits(value: Any, arrow_type: pa.DataType) -> bool:
    """Whether ``value`` can be stored in a column of ``arrow_type`` as it is (pyarrow would
    truncate 1.5 into an int64 column, so numbers are checked here)."""
    if value is None:
        return True
    if pa.types.is_string(arrow_type):
        return isinstance(value, str)
    if pa.types.is_boolean(arrow_type):
        return isinstance(value, bool)
    if pa.types.is_integer(arrow_type):
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if pa.types.is_floating(arrow_type):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        pa.array([value], type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return False
    return True


def _printable(name: str) -> str:
    """A member name as valid UTF-8 text (tarfile keeps undecodable bytes as surrogates)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
