"""The built-in hash verifier: img2dataset's ``compute_hash`` and ``verify_hash``.

The digest is taken over the raw downloaded bytes, before any processing,
and stored in a metadata column named after the hash (``sha256``). With
``verify_hash: [column, type]`` a sample whose bytes do not match the input
column's value fails with img2dataset's ``hash mismatch``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import attrs
import pyarrow as pa
from attrs import validators as v

from any2ds import FetchResult, Sample, Verifier, VerifyError, hookimpl, option

HASHES = ("md5", "sha256", "sha512")


def _hash_name(value: Any) -> Any:
    """Normalise ``compute_hash``: "none" (any case) and "" mean no hash; the validator checks the rest."""
    if not isinstance(value, str):
        return value
    value = value.strip().lower()
    return None if value in ("", "none") else value


def _check_verify_hash(instance: HashVerifier.Options, _attribute: attrs.Attribute, value: list[str] | None) -> None:
    """``verify_hash`` is ``[input_column, hash_type]`` and hash_type must be what compute_hash computes."""
    if value is None:
        return
    if len(value) != 2 or not all(isinstance(part, str) and part for part in value):
        raise ValueError(f"verify_hash must be [input_column, hash_type], got {value!r}")
    if value[1].strip().lower() != instance.compute_hash:
        raise ValueError(f"verify_hash hash type {value[1]!r} must be the same as compute_hash "
                         f"{instance.compute_hash!r}")


class HashVerifier(Verifier):
    """Adds the hex digest of the raw bytes; rejects bytes that differ from an expected digest."""

    name = "hash"

    @attrs.frozen
    class Options:
        compute_hash: Optional[str] = option(
            "sha256", "Hash of the raw downloaded bytes to store: md5, sha256, sha512, or none.",
            v.optional(v.in_(HASHES)), converter=_hash_name)
        verify_hash: Optional[list[str]] = option(
            None, "[input_column, hash_type]: fail samples whose bytes do not hash to the column's value "
                  "(hash_type must equal compute_hash).", _check_verify_hash)

    def read_columns(self) -> Sequence[str]:
        verify = self.options.verify_hash
        return (verify[0],) if verify else ()

    def metadata_fields(self) -> Sequence[pa.Field]:
        name = self.options.compute_hash
        return [pa.field(name, pa.string())] if name and not self.options.verify_hash else []

    def leading_metadata_fields(self) -> Sequence[pa.Field]:
        """A verified hash stands where img2dataset puts it: in place of the input column it was
        checked against (renamed to the hash's name), before ``url``."""
        name = self.options.compute_hash
        return [pa.field(name, pa.string())] if name and self.options.verify_hash else []

    def verify(self, sample: Sample, fetched: FetchResult) -> Mapping[str, Any]:
        name = self.options.compute_hash
        if name is None:
            return {}
        digest = hashlib.new(name, fetched.body, usedforsecurity=False).hexdigest()
        verify = self.options.verify_hash
        if verify is not None:
            expected = sample.columns.get(verify[0])
            # A null or empty expected value means there is nothing to check against.
            # Hex digests compare case-insensitively.
            if expected is not None and str(expected).strip() and str(expected).strip().lower() != digest:
                raise VerifyError("hash mismatch", status="failed_to_download", error_type="hash_mismatch")
        return {name: digest}


@hookimpl
def any2ds_register_verifiers(register):
    register(HashVerifier)
