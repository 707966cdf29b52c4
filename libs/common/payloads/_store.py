"""The PayloadStore contract, what listing returns, and the helpers both backends share."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Protocol, runtime_checkable

import msgspec

from libs.common.payloads._errors import PayloadAccessDenied, PayloadCorrupt, PayloadTooLarge
from libs.common.payloads._refs import PayloadRef, check_tenant, make_key, split_key

# Streams move in chunks of this size: large enough to keep per-chunk overhead (a thread hop,
# a syscall) negligible, small enough that a 64 MiB payload is never whole in memory.
CHUNK_BYTES = 1024 * 1024


class BlobInfo(msgspec.Struct, frozen=True):
    """One stored blob, as listed: its key, size, and when it was last written."""

    key: str
    size: int
    modified_at: datetime


class Scope(msgspec.Struct, frozen=True):
    """The blobs of one (tenant, scope) — a run, or `evt-<event id>`."""

    tenant: str
    scope_id: str
    blobs: tuple[BlobInfo, ...]


@runtime_checkable
class PayloadStore(Protocol):
    """Blobs keyed `<tenant>/<scope_id>/<sha256>`, written once and read by reference.

    Every read checks that the reference belongs to the reading tenant, and every stream is
    verified against the reference's sha256 and size when it ends.
    """

    async def put_stream(
        self, tenant: str, scope_id: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PayloadRef:
        """Store the concatenated chunks; PayloadTooLarge (and nothing stored) past max_bytes."""
        ...

    async def put_bytes(
        self, tenant: str, scope_id: str, data: bytes, max_bytes: int | None = None
    ) -> PayloadRef:
        """Store `data` (max_bytes defaults to no limit beyond len(data))."""
        ...

    def open(self, tenant: str, ref: PayloadRef) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; PayloadCorrupt at the end if they do not match `ref`."""
        ...

    async def get_bytes(self, tenant: str, ref: PayloadRef) -> bytes:
        """The whole blob, verified."""
        ...

    async def delete_many(self, tenant: str, keys: Iterable[str]) -> int:
        """Delete the tenant's blobs by key (missing ones are fine); returns how many were asked."""
        ...

    def list_scopes(self, tenant: str | None = None) -> AsyncIterator[Scope]:
        """Every scope with its blobs (of one tenant, or of all), grouped, in key order."""
        ...

    async def delete_stale_uploads(self, older_than: datetime) -> int:
        """Remove uploads abandoned by a crashed writer before `older_than`; returns the count."""
        ...

    async def close(self) -> None:
        """Release threads and connections; the store is unusable afterwards."""
        ...


class Digest:
    """Size and sha256 of a stream as it passes, enforcing a size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._sha = hashlib.sha256()

    def update(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLarge(self.size, self.limit)
        self._sha.update(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def ref(self, tenant: str, scope_id: str) -> PayloadRef:
        sha = self.hexdigest()
        return PayloadRef(make_key(tenant, scope_id, sha), sha, self.size)

    def verify(self, ref: PayloadRef) -> None:
        """Raise PayloadCorrupt unless the bytes seen are exactly those `ref` names."""
        if self.size != ref.size or self.hexdigest() != ref.sha256:
            raise PayloadCorrupt(
                f"blob {ref.key} is corrupt: read {self.size} bytes with sha256 "
                f"{self.hexdigest()}, expected {ref.size} bytes with sha256 {ref.sha256}"
            )


def owned_key(tenant: str, key: str) -> str:
    """`key`, validated, if it belongs to `tenant`; PayloadAccessDenied otherwise."""
    owner, _, _ = split_key(key)
    if owner != check_tenant(tenant):
        raise PayloadAccessDenied(f"tenant {tenant!r} may not access blob {key!r}")
    return key


async def iter_chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


class StoreBase:
    """put_bytes and get_bytes in terms of a backend's put_stream and open."""

    async def put_stream(
        self, tenant: str, scope_id: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PayloadRef:
        raise NotImplementedError

    def open(self, tenant: str, ref: PayloadRef) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def put_bytes(
        self, tenant: str, scope_id: str, data: bytes, max_bytes: int | None = None
    ) -> PayloadRef:
        limit = len(data) if max_bytes is None else max_bytes
        if len(data) > limit:
            raise PayloadTooLarge(len(data), limit)
        return await self.put_stream(tenant, scope_id, iter_chunks(data), limit)

    async def get_bytes(self, tenant: str, ref: PayloadRef) -> bytes:
        parts = [chunk async for chunk in self.open(tenant, ref)]
        return b"".join(parts)
