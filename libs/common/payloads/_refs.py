"""Payload references and blob keys.

A reference names a blob as `<tenant>/<scope_id>/<sha256>`. It travels where the payload's JSON
bytes would otherwise go (a bytea column, a message field), so its encoding starts with a byte
no JSON text can start with: RFC 8259 allows only whitespace, `{ [ " - t f n` or a digit there,
and a NUL byte is never valid JSON anywhere.
"""

from __future__ import annotations

import re

import msgspec

from libs.common.payloads._errors import InvalidPayloadKey
from libs.common.subjects import valid_tenant

# NUL, a tag, and a format version: bump the version if the body layout ever changes.
REF_MAGIC = b"\x00RREF\x01"

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A run id (uuid hex), `evt-<event id>`, or a similar token; the first character is not a dot
# so `.` / `..` and the store's private `.incoming` area are unreachable.
_SCOPE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:=+-]{0,199}")


class PayloadRef(msgspec.Struct, frozen=True):
    """Where a payload lives: its key, the sha256 of its bytes (hex) and its size in bytes."""

    key: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _, _, sha = split_key(self.key)
        if sha != self.sha256:
            raise InvalidPayloadKey(f"key {self.key!r} does not end with sha256 {self.sha256!r}")
        if self.size < 0:
            raise InvalidPayloadKey(f"payload size must be >= 0, got {self.size}")

    @property
    def tenant(self) -> str:
        """The tenant that owns the blob (the key's first part)."""
        return self.key.split("/", 1)[0]


def check_tenant(tenant: str) -> str:
    if not valid_tenant(tenant):
        raise InvalidPayloadKey(f"tenant {tenant!r} must be 1-64 chars of [a-z0-9_-]")
    return tenant


def check_scope(scope_id: str) -> str:
    if not _SCOPE.fullmatch(scope_id):
        raise InvalidPayloadKey(
            f"scope {scope_id!r} must be 1-200 chars of [A-Za-z0-9_.:=+-], not starting with '.'"
        )
    return scope_id


def make_key(tenant: str, scope_id: str, sha256: str) -> str:
    """The blob key `<tenant>/<scope_id>/<sha256>`, each part validated."""
    if not _SHA256.fullmatch(sha256):
        raise InvalidPayloadKey(f"sha256 {sha256!r} must be 64 lower-case hex digits")
    return f"{check_tenant(tenant)}/{check_scope(scope_id)}/{sha256}"


def split_key(key: str) -> tuple[str, str, str]:
    """(tenant, scope_id, sha256) of a key; InvalidPayloadKey when it is not one."""
    parts = key.split("/")
    if len(parts) != 3:
        raise InvalidPayloadKey(f"payload key {key!r} is not <tenant>/<scope>/<sha256>")
    tenant, scope_id, sha = parts
    make_key(tenant, scope_id, sha)
    return tenant, scope_id, sha


def encode_ref(ref: PayloadRef) -> bytes:
    """The bytes that stand in for a payload: the magic prefix, then msgpack of
    (tenant, scope_id, raw sha256, size). The key repeats the digest, so it is not sent twice."""
    tenant, scope_id, sha = split_key(ref.key)
    return REF_MAGIC + msgspec.msgpack.encode((tenant, scope_id, bytes.fromhex(sha), ref.size))


def maybe_ref(data: bytes | bytearray | memoryview) -> PayloadRef | None:
    """The reference `data` encodes, or None when `data` is an inline payload.

    Raises:
        InvalidPayloadKey: `data` starts with the magic prefix but is not a valid reference
            (truncated or tampered); treating it as JSON would only fail later and further away.
    """
    view = memoryview(data)
    if view[: len(REF_MAGIC)] != REF_MAGIC:
        return None
    try:
        tenant, scope_id, digest, size = msgspec.msgpack.decode(
            view[len(REF_MAGIC) :], type=tuple[str, str, bytes, int]
        )
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InvalidPayloadKey(f"malformed payload reference: {exc}") from None
    if len(digest) != 32:
        raise InvalidPayloadKey(f"malformed payload reference: a {len(digest)}-byte digest")
    sha = digest.hex()
    return PayloadRef(make_key(tenant, scope_id, sha), sha, size)
