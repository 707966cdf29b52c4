"""One contract for both payload store backends: a local directory, and S3 through minio
against a real S3 API server (moto's, in a subprocess on a loopback port). Never a mock.

Each test gets a fresh store (its own directory or bucket) and its own tenant names.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import boto3
import pytest

from libs.common.payloads import (
    CHUNK_BYTES,
    InvalidPayloadKey,
    LocalPayloadStore,
    PayloadAccessDenied,
    PayloadCorrupt,
    PayloadNotFound,
    PayloadRef,
    PayloadStore,
    PayloadTooLarge,
    S3PayloadStore,
    collect_garbage,
    event_scope,
    make_key,
    open_store,
)
from libs.common.settings import load_settings
from tools import devstack

MiB = 1024 * 1024
S3_KEY = "testing"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in its own process, so its memory never counts as ours."""
    port = devstack.free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        devstack.wait_until(
            lambda: proc.poll() is not None or devstack.port_open(port), 60, "moto server"
        )
        assert proc.poll() is None, "moto server exited at start"
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Backend:
    """A store plus direct access to what it keeps, to check it from outside."""

    store: PayloadStore
    overwrite: Callable[[str, bytes], None]  # replace the stored bytes of a key
    leftovers: Callable[[], list[str]]  # everything stored, finished or not, by any name


def _local_backend(root: Path) -> Backend:
    def overwrite(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    def leftovers() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    return Backend(LocalPayloadStore(root), overwrite, leftovers)


def _s3_backend(endpoint: str) -> Backend:
    bucket = f"payloads-{uuid.uuid4().hex[:12]}"
    store = S3PayloadStore.connect(f"http://{endpoint}", S3_KEY, S3_KEY, bucket)
    s3 = boto3.client(
        "s3", endpoint_url=f"http://{endpoint}", aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY, region_name="us-east-1",
    )

    def overwrite(key: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=data)

    def leftovers() -> list[str]:
        if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            return []  # the store creates it on first use
        objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted([o["Key"] for o in objects] + [f"multipart:{u['Key']}" for u in uploads])

    return Backend(store, overwrite, leftovers)


@pytest.fixture(params=["local", "s3"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str
) -> AsyncIterator[Backend]:
    made = _local_backend(tmp_path / "payloads") if request.param == "local" else _s3_backend(
        s3_endpoint
    )
    try:
        yield made
    finally:
        await made.store.close()


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:12]


def run_id() -> str:
    return uuid.uuid4().hex


async def generated(total: int, chunk: int = 700 * 1024) -> AsyncIterator[bytes]:
    """`total` bytes in odd-sized chunks, never all in memory (see `generated_sha256`)."""
    for i, start in enumerate(range(0, total, chunk)):
        yield _block(i, min(chunk, total - start))


def _block(i: int, size: int) -> bytes:
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


def generated_sha256(total: int, chunk: int = 700 * 1024) -> str:
    sha = hashlib.sha256()
    for i, start in enumerate(range(0, total, chunk)):
        sha.update(_block(i, min(chunk, total - start)))
    return sha.hexdigest()


async def drain(stream: AsyncIterator[bytes]) -> tuple[int, str, int]:
    """(size, sha256, largest chunk) of a stream, consumed chunk by chunk."""
    sha, size, largest = hashlib.sha256(), 0, 0
    async for chunk in stream:
        sha.update(chunk)
        size += len(chunk)
        largest = max(largest, len(chunk))
    return size, sha.hexdigest(), largest


async def test_small_payloads_round_trip(backend: Backend, tenant: str) -> None:
    store, run = backend.store, run_id()
    data = b'{"doc": "' + b"x" * 200_000 + b'"}'
    ref = await store.put_bytes(tenant, run, data)
    assert ref == PayloadRef(make_key(tenant, run, hashlib.sha256(data).hexdigest()),
                             hashlib.sha256(data).hexdigest(), len(data))
    assert await store.get_bytes(tenant, ref) == data
    # The same bytes in the same scope are one blob, whichever way they arrive.
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 777):
            yield data[i : i + 777]

    assert await store.put_stream(tenant, run, pieces(), max_bytes=len(data)) == ref
    empty = await store.put_bytes(tenant, run, b"")
    assert (empty.size, await store.get_bytes(tenant, empty)) == (0, b"")
    scopes = [s async for s in store.list_scopes(tenant)]
    assert [(s.tenant, s.scope_id, sorted(b.key for b in s.blobs)) for s in scopes] == [
        (tenant, run, sorted([ref.key, empty.key]))
    ]
    assert {b.key: b.size for b in scopes[0].blobs} == {ref.key: len(data), empty.key: 0}


async def test_a_70_mib_stream_round_trips_in_chunks(backend: Backend, tenant: str) -> None:
    total = 70 * MiB
    ref = await backend.store.put_stream(tenant, run_id(), generated(total), max_bytes=total)
    assert (ref.size, ref.sha256) == (total, generated_sha256(total))
    size, sha, largest = await drain(backend.store.open(tenant, ref))
    assert (size, sha) == (total, ref.sha256)
    assert largest <= CHUNK_BYTES
    assert backend.leftovers() == [ref.key]  # no temp object or upload left behind


@pytest.mark.parametrize("damage", ["flipped", "truncated", "extended"])
async def test_corruption_is_detected_when_the_stream_ends(
    backend: Backend, tenant: str, damage: str
) -> None:
    data = bytes(range(256)) * 12_000  # ~3 MiB: several chunks
    ref = await backend.store.put_bytes(tenant, run_id(), data)
    bad = {
        "flipped": data[:-1] + bytes([data[-1] ^ 1]),
        "truncated": data[:-10],
        "extended": data + b"!",
    }[damage]
    backend.overwrite(ref.key, bad)
    with pytest.raises(PayloadCorrupt, match=ref.sha256):
        await backend.store.get_bytes(tenant, ref)


@pytest.mark.parametrize("total", [3 * MiB, 20 * MiB], ids=["one-part", "multipart"])
async def test_too_large_aborts_and_leaves_nothing(
    backend: Backend, tenant: str, total: int
) -> None:
    limit = total - 1
    with pytest.raises(PayloadTooLarge) as info:
        await backend.store.put_stream(tenant, run_id(), generated(total), max_bytes=limit)
    assert info.value.limit == limit
    assert info.value.size_so_far > limit
    assert str(limit) in str(info.value)
    with pytest.raises(PayloadTooLarge):
        await backend.store.put_bytes(tenant, run_id(), b"x" * 11, max_bytes=10)
    assert backend.leftovers() == []
    assert [s async for s in backend.store.list_scopes(tenant)] == []


async def test_a_cancelled_upload_leaves_nothing(backend: Backend, tenant: str) -> None:
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in generated(12 * MiB):  # more than a part: a multipart upload on S3
            yield chunk
        sent.set()
        await asyncio.Event().wait()  # a client that stops sending

    put = asyncio.create_task(backend.store.put_stream(tenant, run_id(), stalls(), 64 * MiB))
    await asyncio.wait_for(sent.wait(), timeout=60)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert backend.leftovers() == []


async def test_a_tenant_never_reads_or_deletes_another_tenants_blob(
    backend: Backend, tenant: str
) -> None:
    other = tenant + "-b"
    ref = await backend.store.put_bytes(tenant, run_id(), b'{"secret": 1}')
    with pytest.raises(PayloadAccessDenied):
        backend.store.open(other, ref)
    with pytest.raises(PermissionError):
        await backend.store.get_bytes(other, ref)
    with pytest.raises(PermissionError):
        await backend.store.delete_many(other, [ref.key])
    assert [s async for s in backend.store.list_scopes(other)] == []
    assert await backend.store.get_bytes(tenant, ref) == b'{"secret": 1}'


async def test_bad_keys_are_refused_and_write_nothing(backend: Backend, tenant: str) -> None:
    for bad_tenant, scope in [("../etc", "run"), ("a/b", "run"), ("", "run"), ("UPPER", "run"),
                              (tenant, ".."), (tenant, "a/b"), (tenant, ""), (tenant, ".incoming")]:
        with pytest.raises(InvalidPayloadKey):
            await backend.store.put_bytes(bad_tenant, scope, b"{}")
    with pytest.raises(InvalidPayloadKey):
        await backend.store.delete_many(tenant, [f"{tenant}/../x"])
    with pytest.raises(InvalidPayloadKey):
        [s async for s in backend.store.list_scopes("../")]
    assert backend.leftovers() == []


async def test_missing_and_deleted_blobs(backend: Backend, tenant: str) -> None:
    run = run_id()
    a = await backend.store.put_bytes(tenant, run, b"a")
    b = await backend.store.put_bytes(tenant, run, b"b")
    never = PayloadRef(make_key(tenant, run, "0" * 64), "0" * 64, 1)
    with pytest.raises(PayloadNotFound):
        await backend.store.get_bytes(tenant, never)
    assert await backend.store.delete_many(tenant, [a.key, never.key]) == 2
    with pytest.raises(PayloadNotFound):
        await backend.store.get_bytes(tenant, a)
    assert await backend.store.get_bytes(tenant, b) == b"b"


async def test_stale_uploads_are_removed(backend: Backend, tenant: str) -> None:
    ref = await backend.store.put_bytes(tenant, run_id(), b"kept")
    backend.overwrite(".incoming/crashed-writer", b"partial")
    assert [s.tenant async for s in backend.store.list_scopes()] == [tenant]
    now = datetime.now(UTC)
    assert await backend.store.delete_stale_uploads(now - timedelta(hours=1)) == 0
    assert await backend.store.delete_stale_uploads(now + timedelta(hours=1)) == 1
    assert backend.leftovers() == [ref.key]


async def test_gc_deletes_blobs_of_gone_runs_and_expired_events(
    backend: Backend, tenant: str, database_url: str
) -> None:
    store = backend.store
    live, gone = run_id(), run_id()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await pool.execute("INSERT INTO tenants (id, name) VALUES ($1, $1)", tenant)
        await pool.execute(
            "INSERT INTO runs (tenant_id, id, workflow, version_id, status, priority, input,"
            " created_at) VALUES ($1, $2, 'wf', 'v1', 'RUNNING', 2, ''::bytea, now())",
            tenant, live,
        )
        kept = await store.put_bytes(tenant, live, b'{"live": true}')
        orphan = await store.put_bytes(tenant, gone, b'{"gone": true}')
        event = await store.put_bytes(tenant, event_scope("e1"), b'{"event": 1}')
        # Another tenant's run with the same id as the live one: a run exists per tenant.
        foreign = await store.put_bytes(tenant + "-b", live, b'{"other": true}')
        grace, retention = 600.0, 3600.0

        async def gc(after_s: float) -> tuple[int, int, int]:
            report = await collect_garbage(
                store, pool, older_than_s=grace, event_retention_s=retention,
                now=datetime.now(UTC) + timedelta(seconds=after_s),
            )
            return report.scanned_blobs, report.deleted_run_blobs, report.deleted_event_blobs

        # Fresh blobs are within the grace period: the orphan's run may be about to exist.
        assert await gc(0) == (4, 0, 0)
        # Past the grace period the orphan goes; the event is not yet past its retention.
        assert await gc(grace + 60) == (4, 2, 0)
        assert await gc(retention + 60) == (2, 0, 1)
        assert backend.leftovers() == [kept.key]
        assert await store.get_bytes(tenant, kept) == b'{"live": true}'
        for ref in (orphan, event, foreign):
            with pytest.raises(PayloadNotFound):
                await store.get_bytes(ref.tenant, ref)
    finally:
        await pool.close()


async def test_a_64_mib_round_trip_stays_far_below_the_payload_size_in_memory(
    backend: Backend, tenant: str
) -> None:
    total = 64 * MiB
    peak = await _peak_python_memory(
        lambda: _put_and_get(backend.store, tenant, total)
    )
    # Streaming holds a few chunks (on S3 a few 5 MiB parts: ~20 MiB measured), never the
    # payload; 3x the payload would be the ceiling, this is a much tighter one.
    assert peak < total // 2, f"peak {peak / MiB:.1f} MiB for a {total // MiB} MiB round trip"


async def _put_and_get(store: PayloadStore, tenant: str, total: int) -> None:
    ref = await store.put_stream(tenant, run_id(), generated(total, chunk=CHUNK_BYTES), total)
    assert (await drain(store.open(tenant, ref)))[:2] == (total, ref.sha256)


async def _peak_python_memory(work: Callable[[], Awaitable[None]]) -> int:
    """Peak bytes allocated by Python (every thread) during `work`, above where it started."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def test_settings_choose_the_backend(tmp_path: Path, s3_endpoint: str) -> None:
    local = open_store(load_settings(data_dir=str(tmp_path), s3_endpoint=""))
    assert isinstance(local, LocalPayloadStore)
    assert local.root == tmp_path / "payloads"
    s3 = open_store(load_settings(s3_endpoint=s3_endpoint, s3_bucket="b1"))
    assert isinstance(s3, S3PayloadStore) and s3.bucket == "b1"
    asyncio.run(local.close())
    asyncio.run(s3.close())


