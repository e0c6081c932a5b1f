"""Finding a run's input files: a file, or the files of a folder."""

from __future__ import annotations

from any2ds.errors import ConfigError
from any2ds.storage import Storage
from any2ds.types import InputSource


def split_input_format(input_format: str) -> tuple[str, str | None]:
    """``csv.gz`` -> (``csv``, ``gzip``); ``csv`` -> (``csv``, None)."""
    if input_format.endswith(".gz"):
        return input_format[: -len(".gz")], "gzip"
    return input_format, None


def find_input_files(url_list: str, input_format: str, storage: Storage) -> list[InputSource]:
    """The input files: ``url_list`` itself, or the sorted ``*.<input_format>`` files of a folder."""
    _reader, compression = split_input_format(input_format)
    try:
        fs, path = storage.url_to_fs(url_list)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"url_list {url_list!r}: {exc}") from exc
    try:
        exists = fs.exists(path)
        is_dir = exists and fs.isdir(path)
    except OSError as exc:
        raise ConfigError(f"url_list {url_list!r} cannot be read: {exc}") from exc
    if not exists:
        raise ConfigError(f"url_list {url_list!r} does not exist")
    if not is_dir:
        return [InputSource(path, fs, compression)]
    files = sorted(p for p in fs.glob(f"{path.rstrip('/')}/*.{input_format}") if fs.isfile(p))
    if not files:
        raise ConfigError(f"url_list {url_list!r} is a folder with no *.{input_format} file")
    return [InputSource(p, fs, compression) for p in files]
