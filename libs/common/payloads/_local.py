"""The local-directory backend: `<root>/<tenant>/<scope_id>/<sha256>` files.

Writes go to a temp file under `<root>/.incoming` and are renamed into place once complete and
synced, so a reader sees a whole blob or none, and a crash leaves only a temp file that
`delete_stale_uploads` removes. File I/O (and hashing, which releases the GIL) runs on a small
private thread pool, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from libs.common.payloads._errors import PayloadNotFound
from libs.common.payloads._refs import PayloadRef, check_scope, check_tenant, split_key
from libs.common.payloads._store import CHUNK_BYTES, BlobInfo, Digest, Scope, StoreBase, owned_key

T = TypeVar("T")

_INCOMING = ".incoming"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:=+-]*")


class LocalPayloadStore(StoreBase):
    """Blobs as files under `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str], *, io_threads: int = 4) -> None:
        self.root = Path(root).absolute()
        self._pool = ThreadPoolExecutor(io_threads, thread_name_prefix="payloads-local")

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _path(self, key: str) -> Path:
        tenant, scope_id, sha = split_key(key)
        return self.root / tenant / scope_id / sha

    async def put_stream(
        self, tenant: str, scope_id: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> PayloadRef:
        check_tenant(tenant)
        check_scope(scope_id)
        incoming = self.root / _INCOMING
        await self._run(lambda: incoming.mkdir(parents=True, exist_ok=True))
        fd, tmp_name = await self._run(tempfile.mkstemp, "", "up-", str(incoming))
        tmp = Path(tmp_name)
        digest = Digest(max_bytes)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    await self._run(_hash_and_write, digest, out, chunk)
                await self._run(_sync, out)
            ref = digest.ref(tenant, scope_id)
            await self._run(self._publish, tmp, self._path(ref.key))
        except BaseException:
            # Quick and local; done inline so a cancelled task still cleans up.
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return ref

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        # A concurrent GC may remove the (empty) scope directory between mkdir and rename.
        for _ in range(3):
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                continue
            _sync_dir(final.parent)
            return
        raise OSError(f"could not move {tmp} to {final}: its directory keeps disappearing")

    def open(self, tenant: str, ref: PayloadRef) -> AsyncIterator[bytes]:
        # Ownership is checked now, not at the first read, so a caller can refuse early.
        path = self._path(owned_key(tenant, ref.key))
        return self._read(path, ref)

    async def _read(self, path: Path, ref: PayloadRef) -> AsyncIterator[bytes]:
        try:
            src = await self._run(path.open, "rb")
        except FileNotFoundError:
            raise PayloadNotFound(f"blob {ref.key} does not exist") from None
        digest = Digest(ref.size)
        try:
            while True:
                chunk = await self._run(_read_and_hash, digest, src, ref)
                if not chunk:
                    break
                yield chunk
        finally:
            src.close()
        digest.verify(ref)

    async def delete_many(self, tenant: str, keys: Iterable[str]) -> int:
        paths = [self._path(owned_key(tenant, key)) for key in keys]
        await self._run(_unlink_all, paths)
        return len(paths)

    async def list_scopes(self, tenant: str | None = None) -> AsyncIterator[Scope]:
        tenants = [check_tenant(tenant)] if tenant is not None else await self._run(
            _subdirs, self.root
        )
        for name in tenants:
            for scope_id in await self._run(_subdirs, self.root / name):
                blobs = await self._run(_blobs, self.root / name / scope_id, f"{name}/{scope_id}/")
                if blobs:
                    yield Scope(name, scope_id, blobs)

    async def delete_stale_uploads(self, older_than: datetime) -> int:
        return await self._run(_remove_older, self.root / _INCOMING, older_than.timestamp())

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)


def _hash_and_write(digest: Digest, out: BinaryIO, chunk: bytes) -> None:
    digest.update(chunk)  # raises PayloadTooLarge before the chunk is written
    out.write(chunk)


def _read_and_hash(digest: Digest, src: BinaryIO, ref: PayloadRef) -> bytes:
    chunk = src.read(CHUNK_BYTES)
    # A file longer than the reference names fails here, as corrupt, before it floods memory.
    if digest.size + len(chunk) > ref.size:
        digest.size += len(chunk)
        digest.verify(ref)
    digest.update(chunk)
    return chunk


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        # An emptied scope directory goes too; one still in use (or refilled) stays.
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def _subdirs(path: Path) -> list[str]:
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return []
    # Only names a key could contain; `.incoming` and strays are skipped.
    names = [e.name for e in entries if e.is_dir() and _PART.fullmatch(e.name)]
    return sorted(names)


def _blobs(path: Path, prefix: str) -> tuple[BlobInfo, ...]:
    found: list[BlobInfo] = []
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return ()
    for entry in sorted(entries, key=lambda e: e.name):
        if not _SHA256.fullmatch(entry.name):  # not ours: leave it alone
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:  # deleted while listing
            continue
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        found.append(BlobInfo(prefix + entry.name, stat.st_size, modified))
    return tuple(found)


def _remove_older(path: Path, cutoff_ts: float) -> int:
    removed = 0
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_mtime < cutoff_ts:
                os.unlink(entry.path)
                removed += 1
    return removed
