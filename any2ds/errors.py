"""Exceptions: startup errors are loud, sample errors become metadata records."""

from __future__ import annotations

import re


class Any2dsError(Exception):
    """Base of every error any2ds raises on purpose."""


class ConfigError(Any2dsError):
    """The run's configuration is wrong; the message says what to change."""


class PluginError(Any2dsError):
    """A plugin is broken or clashes with another; the message names it."""


class SampleError(Exception):
    """One sample failed; it becomes a metadata record, never a crashed shard.

    ``status`` is the metadata status string (img2dataset's ``failed_to_download``
    or ``failed_to_resize``, or a plugin's own), ``message`` the ``error_message``.
    ``retryable`` tells fetchers whether another attempt may succeed.
    ``error_type`` defaults to the class name, so a 429 and a 404 stay apart.
    """

    status = "failed_to_download"
    retryable = False

    def __init__(self, message: str, *, status: str | None = None, retryable: bool | None = None,
                 error_type: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.error_type = error_type or type(self).__name__


class FetchError(SampleError):
    """Fetching failed (network, HTTP status, policy refusal)."""

    status = "failed_to_download"


class ProcessError(SampleError):
    """A processor rejected or could not transform the sample."""

    status = "failed_to_process"


class VerifyError(SampleError):
    """A verifier rejected the downloaded bytes (e.g. a hash mismatch)."""

    status = "failed_to_download"


_OBJECT_AT = re.compile(r"\s+(?:object )?at 0x[0-9a-fA-F]+")  # <Foo object at 0x7f3a...>
_HEX_ID = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_LONG_NUMBER = re.compile(r"\d{4,}")
_SPACE = re.compile(r"\s+")
MAX_MESSAGE_CHARS = 500


def clean_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A failure message fit for a metadata row: object addresses removed, on one line, at
    most ``limit`` characters. Plugins may call it on library messages they pass on."""
    text = _HEX_ID.sub("0x?", _OBJECT_AT.sub("", message))
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_key(message: str) -> str:
    """What ``status_dict`` counts a failure message as: :func:`clean_message`, with numbers of
    four digits or more (byte counts, ports, ids) written ``N``, so that per-object variants of
    one message share one key (img2dataset's counter grew a key per variant)."""
    return _LONG_NUMBER.sub("N", clean_message(message))
