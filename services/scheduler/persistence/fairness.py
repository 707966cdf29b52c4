"""Fair-scheduling state in PostgreSQL (see 004_fairness.sql): rate-limit definitions and
starts, concurrency holders, attempts still executing.

`flush` runs inside the scheduler's batch transaction (batch.py), so holders, executing
attempts and rate-limit starts commit atomically with the task transitions that caused them;
`load` reads them back before runs are adopted after a restart.

Rate-limit starts are recorded and re-checked against every scheduler's starts by
rate_limit_recheck.py, in the same transaction. Concurrency holders are stored as text;
`Holder.format` / `Holder.parse` (records.py) convert them, here and nowhere else.

What is read back goes to whoever restores it (the engine) through the small protocols
below, so this module needs nothing of the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from services.scheduler.effects import Effects
from services.scheduler.persistence.rate_limit_recheck import HORIZON, RateLimitRecheck
from services.scheduler.records import Admission, Holder, LimitDef, LimitId, SemRef

REFRESH_EVERY_S = 0.25


class LimitSink(Protocol):
    def define_limit(self, tenant: str, key: str, limit: int, per: str, burst: int | None) -> None:
        """A rate limit defined (or changed) through the API."""


class FairnessSink(LimitSink, Protocol):
    """Takes fair-scheduling state read back after a restart (the engine does)."""

    def restore_admission(self, adm: Admission) -> None: ...

    def restore_holder(self, holder: Holder, refs: list[SemRef]) -> None: ...

    def restore_executing(
        self, tenant: str, task_id: str, attempt: int, run_id: str, worker_id: str
    ) -> None: ...


class FairnessStore:
    def __init__(self) -> None:
        self._limits_seen: datetime | None = None
        self._last_refresh = 0.0
        self._recheck = RateLimitRecheck()

    async def load(
        self, conn: asyncpg.Connection, engine: FairnessSink, owns: Callable[[str], bool]
    ) -> None:
        """Restore definitions, then the recent starts, holders and executing attempts of the
        tenants this scheduler owns (`owns(tenant)`: its partitions)."""
        self._limits_seen = None
        await self.refresh_limits(conn, engine, force=True)
        rows = await conn.fetch(
            "SELECT tenant_id, key, ts, units, task_id, attempt FROM rate_limit_admissions"
            " WHERE ts > now() - $1::interval ORDER BY ts",
            HORIZON,
        )
        for r in rows:
            if not owns(r["tenant_id"]):
                continue
            engine.restore_admission(Admission(
                r["tenant_id"], r["key"], int(r["ts"].timestamp() * 1000), r["units"],
                r["task_id"], r["attempt"],
            ))
        holders: dict[Holder, list[SemRef]] = {}
        for r in await conn.fetch(
            "SELECT tenant_id, key, holder, max_runs, strategy FROM concurrency_holders"
        ):
            if not owns(r["tenant_id"]):
                continue
            holders.setdefault(Holder.parse(r["holder"]), []).append(
                SemRef(r["tenant_id"], r["key"], r["max_runs"], r["strategy"])
            )
        for holder, refs in holders.items():
            engine.restore_holder(holder, refs)
        for r in await conn.fetch(
            "SELECT tenant_id, task_id, attempt, run_id, worker_id FROM executing_attempts"
        ):
            if not owns(r["tenant_id"]):
                continue
            engine.restore_executing(
                r["tenant_id"], r["task_id"], r["attempt"], r["run_id"], r["worker_id"]
            )

    async def refresh_limits(
        self, conn: asyncpg.Connection, engine: LimitSink, *, force: bool = False
    ) -> None:
        """Pick up rate-limit definitions changed through the API (at most 4 times a second)."""
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH_EVERY_S:
            return
        self._last_refresh = now
        if self._limits_seen is None:
            rows = await conn.fetch(
                "SELECT tenant_id, key, limit_units, per, burst, updated_at FROM rate_limits"
            )
        else:
            rows = await conn.fetch(
                "SELECT tenant_id, key, limit_units, per, burst, updated_at FROM rate_limits"
                " WHERE updated_at > $1",
                self._limits_seen,
            )
        for r in rows:
            engine.define_limit(r["tenant_id"], r["key"], r["limit_units"], r["per"], r["burst"])
            if self._limits_seen is None or r["updated_at"] > self._limits_seen:
                self._limits_seen = r["updated_at"]
        if self._limits_seen is None:
            self._limits_seen = datetime.fromtimestamp(0, UTC)

    async def flush(
        self, conn: asyncpg.Connection, fx: Effects, limits: dict[LimitId, LimitDef]
    ) -> None:
        """Write the batch's fair-scheduling effects (inside the batch transaction);
        `limits` are the definitions its rate-limit starts are re-checked against."""
        if fx.admissions:
            await self._recheck.record_starts(conn, fx.admissions, limits)
        if fx.holders_del:
            keys = list(fx.holders_del)
            await conn.execute(
                "DELETE FROM concurrency_holders h USING unnest($1::text[], $2::text[],"
                " $3::text[]) AS x(t, k, h) WHERE h.tenant_id = x.t AND h.key = x.k"
                " AND h.holder = x.h",
                [k[0] for k in keys], [k[1] for k in keys], [k[2].format() for k in keys],
            )
        if fx.holders_put:
            items = list(fx.holders_put.items())
            await conn.execute(
                "INSERT INTO concurrency_holders (tenant_id, key, holder, max_runs, strategy)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],"
                " $5::text[]) ON CONFLICT DO NOTHING",
                [k[0] for k, _ in items], [k[1] for k, _ in items], [k[2].format() for k, _ in items],
                [r.max_runs for _, r in items], [r.strategy for _, r in items],
            )
        if fx.exec_del:
            keys3 = list(fx.exec_del)
            await conn.execute(
                "DELETE FROM executing_attempts e USING unnest($1::text[], $2::text[],"
                " $3::int[]) AS x(t, i, a) WHERE e.tenant_id = x.t AND e.task_id = x.i"
                " AND e.attempt = x.a",
                [k[0] for k in keys3], [k[1] for k in keys3], [k[2] for k in keys3],
            )
        if fx.exec_put:
            ex = list(fx.exec_put.items())
            await conn.execute(
                "INSERT INTO executing_attempts (tenant_id, task_id, attempt, run_id, worker_id)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[])"
                " ON CONFLICT (tenant_id, task_id, attempt) DO UPDATE SET"
                " worker_id = EXCLUDED.worker_id",
                [k[0] for k, _ in ex], [k[1] for k, _ in ex], [k[2] for k, _ in ex],
                [v[0] for _, v in ex], [v[1] for _, v in ex],
            )
