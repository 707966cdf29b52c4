"""Two schedulers deciding for the same rate-limit key cannot push it over its limit: the
starts each records are re-checked in PostgreSQL, under a lock on the key, against what ANY
scheduler committed (services/scheduler/persistence/fairness.py)."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pytest

from services.scheduler.effects import Effects
from services.scheduler.engine import Engine
from services.scheduler.persistence.fairness import FairnessStore
from services.scheduler.persistence.rate_limit_recheck import RateLimitConflict
from services.scheduler.records import Admission

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _scheduler(tenant: str, key: str, limit: int) -> tuple[Engine, FairnessStore]:
    engine = Engine()
    engine.define_limit(tenant, key, limit, "minute", None)
    return engine, FairnessStore()


async def _record(conn: asyncpg.Connection, store: FairnessStore, engine: Engine,
                  adms: list[Admission]) -> None:
    fx = Effects()
    fx.admissions = adms
    async with conn.transaction():
        await store.flush(conn, fx, engine.limits.defs)


async def test_two_schedulers_share_one_window(database_url: str) -> None:
    tenant, key = "t" + uuid.uuid4().hex[:10], "llm"
    now = int(time.time() * 1000)
    a_engine, a_store = _scheduler(tenant, key, 5)
    b_engine, b_store = _scheduler(tenant, key, 5)
    conn_a = await asyncpg.connect(database_url)
    conn_b = await asyncpg.connect(database_url)
    try:
        await conn_a.execute(
            "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", tenant
        )
        # Scheduler A starts 3 units; B, unaware of them, starts 2: together at the limit.
        await _record(conn_a, a_store, a_engine,
                      [Admission(tenant, key, now + i, 1, f"a{i}", 0) for i in range(3)])
        await _record(conn_b, b_store, b_engine,
                      [Admission(tenant, key, now + 10 + i, 1, f"b{i}", 0) for i in range(2)])
        # B's in-memory window still sees only its own 2 units, so it would start more:
        # PostgreSQL refuses, and nothing of that batch is kept.
        with pytest.raises(RateLimitConflict):
            await _record(conn_b, b_store, b_engine,
                          [Admission(tenant, key, now + 20, 1, "b-over", 0)])
        used = await conn_a.fetchval(
            "SELECT sum(units) FROM rate_limit_admissions WHERE tenant_id = $1 AND key = $2",
            tenant, key,
        )
        assert used == 5
        # A later window is free again for either scheduler.
        await _record(conn_a, a_store, a_engine,
                      [Admission(tenant, key, now + 61_000, 1, "a-next", 0)])
    finally:
        await conn_a.close()
        await conn_b.close()
