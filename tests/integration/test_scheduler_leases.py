"""Scheduler partition leases and the fence, against a real PostgreSQL (migration 060)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from libs.common import subjects
from libs.common.partitions import partition_of
from services.scheduler.ownership import Ownership
from services.scheduler.persistence import leases
from services.scheduler.persistence.leases import Fenced


@pytest.fixture(scope="module")
def dsn(new_database: Callable[[], str]) -> str:
    # A database of this module's: the lease table is cluster-wide, not per tenant. Each test
    # below uses partitions of its own.
    return new_database()


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(dsn)
    await leases.ensure_partitions(c, 16)
    try:
        yield c
    finally:
        await c.close()


async def _until(check: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _expired(conn: asyncpg.Connection, partition: int) -> bool:
    return not await conn.fetchval(
        "SELECT expires_at > clock_timestamp() FROM scheduler_partitions WHERE partition = $1",
        partition,
    )


async def test_a_stale_epoch_commits_nothing(conn: asyncpg.Connection) -> None:
    """A scheduler whose lease ran out and was taken over cannot commit: the fence raises
    inside its transaction and the transaction's writes are rolled back."""
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    held_a = await leases.acquire(conn, a, [0, 1], ttl_s=0.3)
    assert set(held_a) == {0, 1}
    await conn.execute("CREATE TEMP TABLE writes (v text)")
    async with conn.transaction():  # a commit while the leases hold
        await leases.fence(conn, a, held_a)
        await conn.execute("INSERT INTO writes VALUES ('before')")

    await _until(lambda: _expired(conn, 0))  # a is "paused" past its lease
    held_b = await leases.acquire(conn, b, [0], ttl_s=30)
    assert held_b == {0: held_a[0] + 1}  # a new epoch

    with pytest.raises(Fenced):
        async with conn.transaction():
            await conn.execute("INSERT INTO writes VALUES ('after')")
            await leases.fence(conn, a, held_a)
    assert [r["v"] for r in await conn.fetch("SELECT v FROM writes")] == ["before"]
    assert await leases.renew(conn, a, held_a, ttl_s=30) == {}  # a learns it lost both
    await leases.fence(conn, b, held_b)  # the new owner commits


async def test_a_takeover_waits_for_the_commit_in_flight(
    conn: asyncpg.Connection, dsn: str
) -> None:
    a, b = "a-" + uuid.uuid4().hex[:6], "b-" + uuid.uuid4().hex[:6]
    other = await asyncpg.connect(dsn)
    try:
        held = await leases.acquire(conn, a, [3], ttl_s=0.3)
        async with conn.transaction():
            await leases.fence(conn, a, held)  # a's batch is committing
            await _until(lambda: _expired(other, 3))
            assert await leases.acquire(other, b, [3], ttl_s=30) == {}  # skipped: still locked
        taken = await leases.acquire(other, b, [3], ttl_s=30)
        assert taken == {3: held[3] + 1}
    finally:
        await other.close()


async def test_renew_keeps_live_leases_and_release_frees_them(conn: asyncpg.Connection) -> None:
    a, b = "a-" + uuid.uuid4().hex[:6], "b-" + uuid.uuid4().hex[:6]
    held = await leases.acquire(conn, a, [5, 6], ttl_s=30)
    assert await leases.acquire(conn, b, [5, 6], ttl_s=30) == {}  # held: not free
    assert await leases.renew(conn, a, held, ttl_s=30) == held
    await leases.release(conn, a, {5: held[5]})
    assert set(await leases.acquire(conn, b, [5, 6], ttl_s=30)) == {5}


async def test_two_schedulers_split_the_partitions_and_a_leave_hands_over_at_once(
    new_database: Callable[[], str],
) -> None:
    pool = await asyncpg.create_pool(new_database(), min_size=1, max_size=4)
    dropped: dict[str, set[int]] = {"a": set(), "b": set()}
    adopted: dict[str, set[int]] = {"a": set(), "b": set()}

    def hooks(name: str) -> dict[str, Callable[..., object]]:
        async def drop(parts: set[int]) -> None:
            dropped[name] |= parts

        async def adopt(got: dict[int, int]) -> None:
            adopted[name] |= set(got)

        return {"drop": drop, "adopt": adopt}

    try:
        a = Ownership(pool, "sched-a", 16, ttl_s=5, tick_s=0.1, **hooks("a"))  # type: ignore[arg-type]
        await a.start()
        assert set(a.leases) == set(range(16))
        b = Ownership(pool, "sched-b", 16, ttl_s=5, tick_s=0.1, **hooks("b"))  # type: ignore[arg-type]
        await b.start()  # b is a member now; a hands half over on its next tick
        await a.tick()
        await b.tick()
        assert len(a.leases) == 8 and len(b.leases) == 8
        assert set(a.leases).isdisjoint(b.leases)
        assert dropped["a"] == set(b.leases) and adopted["b"] == set(b.leases)
        rows = await leases.owners(pool)
        assert {r["partition"]: r["owner"] for r in rows} == {
            **dict.fromkeys(a.leases, "sched-a"), **dict.fromkeys(b.leases, "sched-b"),
        }
        await b.leave()  # graceful: every partition free at once, no lease to wait out
        await a.tick()
        assert set(a.leases) == set(range(16))
    finally:
        await pool.close()


async def test_sql_and_python_agree_on_the_partition_of_a_tenant(conn: asyncpg.Connection) -> None:
    rng = random.Random(7)
    alphabet = sorted(subjects.TENANT_ALPHABET)
    tenants = ["".join(rng.choices(alphabet, k=rng.randint(1, 64))) for _ in range(300)]
    for count in (1, 7, 16, 64):
        rows = await conn.fetch(
            "SELECT t, ratchet_partition(t, $2) AS p FROM unnest($1::text[]) AS t", tenants, count
        )
        assert {r["t"]: r["p"] for r in rows} == {t: partition_of(t, count) for t in tenants}
