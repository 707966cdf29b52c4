"""The S3 / MinIO backend, through the `minio` client.

minio is synchronous, so every call runs on one of two small private thread pools: short
requests (get a chunk, list a page, delete a batch) on one, whole uploads on the other, each
bounded — an upload holds its thread for its whole duration, and must not starve reads.

Uploads stream. Up to one part (`part_size`) is buffered on the event loop; a payload that ends
within it is written with one PUT straight to its final key (the key is its digest, known only
once the last byte is seen). A longer one goes to `.incoming/<uuid>` through minio's multipart
`put_object(length=-1)` — its thread pulls chunks from the async iterator as it fills each part
— and is then copied server-side to its key. Memory stays at a few parts per upload (about
20 MiB for 64 MiB with 5 MiB parts, measured in the contract suite): minio's
parallel part uploads are off because their task queue is unbounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from io import BytesIO
from itertools import islice
from typing import BinaryIO, TypeVar, cast

from minio import Minio
from minio.commonconfig import CopySource
from minio.datatypes import Object
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from libs.common.payloads._errors import PayloadNotFound
from libs.common.payloads._refs import PayloadRef, check_scope, check_tenant, split_key
from libs.common.payloads._store import CHUNK_BYTES, BlobInfo, Digest, Scope, StoreBase, owned_key

T = TypeVar("T")

_INCOMING = ".incoming/"
_LIST_PAGE = 1000
_MISSING = {"NoSuchKey", "NoSuchObject"}


class S3PayloadStore(StoreBase):
    """Blobs as objects `<tenant>/<scope_id>/<sha256>` in one bucket (created if missing)."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        part_size: int = 5 * 1024 * 1024,
        io_threads: int = 4,
        max_uploads: int = 4,
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="payloads-s3")
        self._uploads = ThreadPoolExecutor(max_uploads, thread_name_prefix="payloads-s3-up")
        # Bounds the part-sized buffers held by uploads waiting for a thread.
        self._upload_slots = asyncio.Semaphore(max_uploads)
        self._bucket_ready = False
        self._bucket_lock = asyncio.Lock()

    @classmethod
    def connect(
        cls, endpoint: str, access_key: str, secret_key: str, bucket: str, *, secure: bool = False
    ) -> S3PayloadStore:
        """A store on `endpoint` (`host:port`; an `http://` or `https://` prefix sets `secure`)."""
        for scheme, is_secure in (("http://", False), ("https://", True)):
            if endpoint.startswith(scheme):
                endpoint, secure = endpoint.removeprefix(scheme), is_secure
        client = Minio(endpoint.rstrip("/"), access_key or None, secret_key or None, secure=secure)
        return cls(client, bucket)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        async with self._bucket_lock:
            if not self._bucket_ready:
                await self._run(self._create_bucket)
                self._bucket_ready = True

    def _create_bucket(self) -> None:
        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:  # another process created it first
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    async def put_stream(
        self, tenant: str, scope_id: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PayloadRef:
        check_tenant(tenant)
        check_scope(scope_id)
        await self._ensure_bucket()
        async with self._upload_slots:
            digest = Digest(max_bytes)
            head: list[bytes] = []
            buffered = 0
            async for chunk in chunks:
                digest.update(chunk)
                head.append(chunk)
                buffered += len(chunk)
                if buffered > self.part_size:
                    return await self._put_multipart(tenant, scope_id, head, chunks, digest)
            ref = digest.ref(tenant, scope_id)
            body = b"".join(head)
            del head
            await self._run(self._put_small, ref.key, body)
            return ref

    def _put_small(self, key: str, body: bytes) -> None:
        self.client.put_object(self.bucket, key, BytesIO(body), len(body))

    async def _put_multipart(
        self,
        tenant: str,
        scope_id: str,
        head: list[bytes],
        rest: AsyncIterator[bytes],
        digest: Digest,
    ) -> PayloadRef:
        temp_key = f"{_INCOMING}{uuid.uuid4().hex}"
        reader = _Reader(asyncio.get_running_loop(), head, rest, digest)
        upload = asyncio.get_running_loop().run_in_executor(
            self._uploads, self._upload_temp, temp_key, reader
        )
        try:
            try:
                await asyncio.shield(upload)
            except asyncio.CancelledError:
                # Stop the thread at its next read (minio then aborts the multipart upload),
                # and wait for it, so nothing is left half-written.
                reader.abort()
                with contextlib.suppress(BaseException):
                    await upload
                raise
            ref = digest.ref(tenant, scope_id)
            await self._run(self._promote, temp_key, ref.key)
        finally:
            with contextlib.suppress(Exception):
                await self._run(self.client.remove_object, self.bucket, temp_key)
        return ref

    def _upload_temp(self, key: str, reader: _Reader) -> None:
        self.client.put_object(
            self.bucket, key, cast(BinaryIO, reader), -1, part_size=self.part_size, num_parallel_uploads=1
        )

    def _promote(self, temp_key: str, key: str) -> None:
        self.client.copy_object(self.bucket, key, CopySource(self.bucket, temp_key))

    def open(self, tenant: str, ref: PayloadRef) -> AsyncIterator[bytes]:
        # Ownership is checked now, not at the first read, so a caller can refuse early.
        return self._read(owned_key(tenant, ref.key), ref)

    async def _read(self, key: str, ref: PayloadRef) -> AsyncIterator[bytes]:
        await self._ensure_bucket()
        try:
            response = await self._run(self.client.get_object, self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise PayloadNotFound(f"blob {key} does not exist") from None
            raise
        digest = Digest(ref.size)
        try:
            while True:
                chunk = await self._run(response.read, CHUNK_BYTES)
                if not chunk:
                    break
                if digest.size + len(chunk) > ref.size:  # longer than named: corrupt
                    digest.size += len(chunk)
                    digest.verify(ref)
                digest.update(chunk)
                yield chunk
        finally:
            response.close()
            response.release_conn()
        digest.verify(ref)

    async def delete_many(self, tenant: str, keys: Iterable[str]) -> int:
        owned = [owned_key(tenant, key) for key in keys]
        if owned:
            await self._ensure_bucket()
            await self._run(self._remove, owned)
        return len(owned)

    def _remove(self, keys: list[str]) -> None:
        # remove_objects is lazy: the requests happen while its errors are iterated.
        errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        failed = [e for e in errors if e.code not in _MISSING]
        if failed:
            raise OSError(f"deleting {len(failed)} blob(s) failed, first: {failed[0]}")

    async def list_scopes(self, tenant: str | None = None) -> AsyncIterator[Scope]:
        prefix = f"{check_tenant(tenant)}/" if tenant is not None else None
        await self._ensure_bucket()
        listing = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        current: tuple[str, str] | None = None
        blobs: list[BlobInfo] = []
        while page := await self._run(_take, listing, _LIST_PAGE):
            for obj in page:
                key = obj.object_name or ""
                try:
                    owner, scope_id, _ = split_key(key)
                except ValueError:  # `.incoming/` and anything not ours
                    continue
                if (owner, scope_id) != current:
                    if current is not None and blobs:
                        yield Scope(current[0], current[1], tuple(blobs))
                    current, blobs = (owner, scope_id), []
                blobs.append(BlobInfo(key, obj.size or 0, _modified(obj)))
        if current is not None and blobs:
            yield Scope(current[0], current[1], tuple(blobs))

    async def delete_stale_uploads(self, older_than: datetime) -> int:
        await self._ensure_bucket()
        listing = self.client.list_objects(self.bucket, prefix=_INCOMING, recursive=True)
        stale: list[str] = []
        while page := await self._run(_take, listing, _LIST_PAGE):
            stale += [o.object_name for o in page if o.object_name and _modified(o) < older_than]
        if stale:
            await self._run(self._remove, stale)
        return len(stale)

    async def close(self) -> None:
        # Waited for off the loop: a thread still running may need the loop to finish.
        for pool in (self._uploads, self._io):
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)


def _take(listing: Iterator[Object], n: int) -> list[Object]:
    return list(islice(listing, n))


def _modified(obj: Object) -> datetime:
    return obj.last_modified or datetime.fromtimestamp(0, UTC)


class _UploadAborted(Exception):
    """Stops an upload thread; an Exception (not a CancelledError) so minio cleans up."""


class _Reader:
    """A blocking `read(n)` over an async chunk iterator, for minio's upload thread.

    Each chunk is fetched on the event loop (the loop stays free while the thread waits), then
    counted and hashed here, off the loop. Past the digest's limit, read raises PayloadTooLarge
    (it reaches the caller unchanged through the future), and minio aborts its multipart upload.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        head: list[bytes],
        rest: AsyncIterator[bytes],
        digest: Digest,
    ) -> None:
        self._loop = loop
        # Chunks already counted by the caller, then those fetched here; joined once per read.
        self._pending = list(head)
        self._pending_bytes = sum(len(c) for c in head)
        head.clear()
        self._rest = rest
        self._digest = digest
        self._eof = False
        self._aborted = False
        self._waiting: concurrent.futures.Future[bytes | None] | None = None

    def abort(self) -> None:
        """Make the upload thread stop, even while it waits for a chunk that may never come."""
        self._aborted = True
        if self._waiting is not None:
            self._waiting.cancel()

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or self._pending_bytes < n):
            self._waiting = asyncio.run_coroutine_threadsafe(_next_chunk(self._rest), self._loop)
            if self._aborted:  # abort() may have run just before _waiting was set
                self._waiting.cancel()
            try:
                chunk = self._waiting.result()
            except concurrent.futures.CancelledError:
                raise _UploadAborted("the upload was cancelled") from None
            if chunk is None:
                self._eof = True
                break
            self._digest.update(chunk)
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
        out = b"".join(self._pending)
        self._pending.clear()
        if 0 <= n < len(out):
            self._pending.append(out[n:])
            out = out[:n]
        self._pending_bytes = sum(len(c) for c in self._pending)
        return out


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None

