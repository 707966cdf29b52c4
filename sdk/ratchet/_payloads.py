"""Payload references as the SDK sees them: a small mirror of `libs/common/payloads` refs.

The SDK cannot import `libs/` (it ships alone), so the encoding of a reference is repeated
here; tests/unit/test_sdk_payload_refs.py asserts both sides encode and decode alike.

A reference stands where a payload's JSON bytes would go (an assignment's input, a parent's
output, a completed task's output): the magic prefix, then msgpack of
(tenant, scope_id, raw sha256, size). Blobs move through the API's `/payloads` routes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgspec

# Must equal libs.common.payloads.REF_MAGIC: NUL (never valid JSON), a tag, a format version.
REF_MAGIC = b"\x00RREF\x01"
# Defaults of RATCHET_PAYLOAD_INLINE_BYTES and RATCHET_MAX_PAYLOAD_BYTES (the server's settings).
DEFAULT_INLINE_BYTES = 128 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class PayloadTooLarge(Exception):
    """A task's output is larger than the largest payload the server accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload too large: {size} bytes, the limit is {limit} bytes")
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Ref:
    """A stored payload: its key `<tenant>/<scope>/<sha256>`, the sha256 (hex) and size."""

    key: str
    sha256: str
    size: int


def is_ref(data: bytes) -> bool:
    return data[: len(REF_MAGIC)] == REF_MAGIC


def encode(ref: Ref) -> bytes:
    tenant, scope_id, sha = ref.key.split("/")
    return REF_MAGIC + msgspec.msgpack.encode((tenant, scope_id, bytes.fromhex(sha), ref.size))


def decode(data: bytes) -> Ref | None:
    """The reference `data` encodes, or None when it is an inline payload."""
    if not is_ref(data):
        return None
    try:
        tenant, scope_id, digest, size = msgspec.msgpack.decode(
            data[len(REF_MAGIC) :], type=tuple[str, str, bytes, int]
        )
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed payload reference: {exc}") from None
    sha = digest.hex()
    return Ref(f"{tenant}/{scope_id}/{sha}", sha, size)


def limits_from_env() -> tuple[int, int]:
    """(inline bytes, max bytes): the same settings the server reads, with its defaults.

    A server configured with a lower maximum still refuses an upload with a 413, which fails
    the attempt the same way.
    """
    inline = int(os.environ.get("RATCHET_PAYLOAD_INLINE_BYTES", DEFAULT_INLINE_BYTES))
    limit = int(os.environ.get("RATCHET_MAX_PAYLOAD_BYTES", DEFAULT_MAX_BYTES))
    if inline < 0 or limit <= 0:
        raise ValueError("RATCHET_PAYLOAD_INLINE_BYTES must be >= 0, RATCHET_MAX_PAYLOAD_BYTES > 0")
    return inline, limit
