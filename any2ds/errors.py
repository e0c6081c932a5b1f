"""Exceptions: startup errors are loud, sample errors become metadata records."""

from __future__ import annotations


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
