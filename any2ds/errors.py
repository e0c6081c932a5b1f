"""Exceptions: startup errors are loud, sample errors become metadata records."""

from __future__ import annotations

import ipaddress
import re


class Any2dsError(Exception):
    """Base of every error any2ds raises on purpose."""


class ConfigError(Any2dsError):
    """The run's configuration is wrong; the message says what to change."""


class Terminated(BaseException):
    """SIGTERM reached the ``any2ds`` command (``timeout``, ``docker stop``, Kubernetes, Slurm):
    raised in its main thread as Ctrl-C's KeyboardInterrupt is, so that a run stops the same way."""


class PluginError(Any2dsError):
    """A plugin is broken or clashes with another; the message names it."""


# The core's closed vocabulary of error types (docs/plugins.md, "Error types", shows this table; a test
# checks that they agree). A plugin uses one of these when it fits, else ``<component name>.<type>``.
ERROR_TYPES: dict[str, str] = {
    "dns": "the host name could not be resolved (no such name, or the resolver did not answer in time)",
    "connect": "no connection could be made, or it broke before the answer was complete (refused, reset, closed)",
    "timeout": "the fetch did not finish within its total deadline (`timeout`)",
    "tls": "the TLS handshake or the certificate check failed",
    "http_4xx": "the server answered a 4xx status other than 429 (`HTTP Error 404: Not Found`)",
    "rate_limited": "the server answered 429 Too Many Requests",
    "http_5xx": "the server answered a 5xx status",
    "redirect": "too many redirects, or a redirect to a scheme the fetcher does not follow",
    "protocol": "the answer is not well-formed HTTP (framing, informational floods, content encoding)",
    "invalid_url": "the URL cannot be requested (no host, bad syntax)",
    "blocked": "the address is not allowed: loopback, private, link-local or cloud metadata",
    "opt_out": "the site opted out: an `X-Robots-Tag` refusal, or robots.txt (`respect_robots_txt`)",
    "too_large": "over a size limit: `max_body_bytes`, `max_image_pixels`, `audio.max_samples`, an archive "
                 "member's `max_member_bytes`",
    "unsupported": "a URL scheme no enabled fetcher takes, a media type no processor accepts, a compression "
                   "the reader cannot read",
    "missing": "nothing to fetch or read: no URL, an archive entry without its media member",
    "hash_mismatch": "the bytes do not match the input's hash column (`verify_hash`)",
    "decode": "the bytes cannot be decoded as the media (corrupt, truncated, not that format)",
    "encode": "the media could not be encoded into the output format",
    "filtered": "refused by a filter option (`min_image_size`, `max_aspect_ratio`, `audio.min_duration`, ...)",
    "watchdog": "a stage of the sample was still running `sample_timeout` seconds after it began",
    "unsafe_key": "the sample's key cannot name files (letters, digits, `_` and `-` only)",
    "unsafe_extension": "a processor gave a media stream an extension unsafe in a file name",
    "other": "a plugin's SampleError without an error_type (the status tells the stage)",
    "unexpected": "an exception that is not a SampleError (a plugin bug); the message starts with its type",
}
OTHER, UNEXPECTED = "other", "unexpected"
# ``<component name>.<type>``: a plugin's own error type.
_NAMESPACED = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+")


class SampleError(Exception):
    """One sample failed; it becomes a metadata record, never a crashed shard.

    ``status`` is the metadata status string (img2dataset's ``failed_to_download``
    or ``failed_to_resize``, or a plugin's own), ``message`` the ``error_message``.
    ``retryable`` tells fetchers whether another attempt may succeed.
    ``error_type`` is a stable class of failure for summaries: one of the core's
    :data:`ERROR_TYPES` (``http_4xx``, ``decode``, ...), or ``<component name>.<type>``
    for a plugin's own (``audio.unsupported_format``); a type that is neither is
    prefixed with the name of the component that raised it. It defaults to the
    class attribute, ``other``.
    """

    status = "failed_to_download"
    retryable = False
    error_type = OTHER

    def __init__(self, message: str, *, status: str | None = None, retryable: bool | None = None,
                 error_type: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        if error_type is not None:
            self.error_type = error_type


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
# Not part of a longer word of letters and digits: an OpenSSL code (0A00010B) is not a number.
_LONG_NUMBER = re.compile(r"(?<![A-Za-z0-9])\d{4,}(?![A-Za-z0-9])")
# Candidates for an IP address (checked by ipaddress): dotted quads, bracketed IPv6 addresses, and
# whole words of hex digits and colons with a digit (IPv4-mapped ones included); not the "::" of
# "SSL routines::wrong version number", nor a time of day.
_ADDRESS_LIKE = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"
                           r"|\[[0-9A-Fa-f:.]+(?:%\w+)?\]"
                           r"|(?<![\w:.])(?=:*[0-9A-Fa-f])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                           r"(?:\.\d{1,3}){0,3}(?:%\w+)?(?![\w:.])")
_SPACE = re.compile(r"\s+")
MAX_MESSAGE_CHARS = 500


def error_type_of(error: BaseException, component: str) -> str:
    """The error type recorded for ``error``, raised by the component named ``component``:
    a core type or a namespaced one as given, another name prefixed with ``component``
    (``thumbnail.Corrupt``), and :data:`UNEXPECTED` for an exception that is not a SampleError."""
    if not isinstance(error, SampleError):
        return UNEXPECTED
    kind = error.error_type
    if kind in ERROR_TYPES or _NAMESPACED.fullmatch(kind):
        return kind
    return f"{component}.{kind}"


def error_message_of(error: BaseException) -> str:
    """The ``error_message`` of a failure: a SampleError's message; for another exception,
    its type and message (``KeyError: 'width'``), since it is a bug to find."""
    if isinstance(error, SampleError):
        return error.message
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def clean_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A failure message fit for a metadata row: object addresses removed, on one line, at
    most ``limit`` characters. Plugins may call it on library messages they pass on."""
    text = _HEX_ID.sub("0x?", _OBJECT_AT.sub("", message))
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_key(message: str, host: str | None = None) -> str:
    """What ``status_dict`` counts a failure message as: :func:`clean_message`, with the sample's
    ``host`` written ``<host>``, IP addresses ``<address>`` and numbers of four digits or more
    (byte counts, ports, ids) ``N``, so that per-host and per-object variants of one message
    share one key (img2dataset's counter grew a key per variant). Fixed messages such as
    ``HTTP Error 404: Not Found`` are their own key, as in img2dataset."""
    text = clean_message(message)
    if host and len(host) > 1:
        text = text.replace(host, "<host>")
    text = _ADDRESS_LIKE.sub(_mask_address, text)
    return _LONG_NUMBER.sub("N", text)


def _mask_address(match: re.Match[str]) -> str:
    candidate = match.group(0).strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return match.group(0)
    return "<address>"
