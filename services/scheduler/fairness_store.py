"""PostgreSQL persistence of fair-scheduling state (see 004_fairness.sql).

`flush` runs inside the scheduler's batch transaction, so holders, executing attempts and
rate-limit starts commit atomically with the task transitions that caused them; `load`
reads them back before runs are adopted after a restart.

Global rate limits with several schedulers. Today one scheduler process owns all tenants
(DESIGN §6 plans tenant shards leased in JetStream KV; a tenant — and so each of its
rate-limit keys — then has exactly one owner at a time). The in-memory window decides. As a
guard against two schedulers deciding for the same key at once (a lease handover, a
split brain), `flush` also re-checks the sliding window in PostgreSQL before committing:
it locks the keys' rows in `rate_limit_keys` (in key order, so two schedulers cannot
deadlock), which serializes every transaction that records starts for those keys, and then
checks with a window function that no window of `per` ending at a recent start holds more
than `limit` units, counting starts committed by ANY scheduler. A violation raises
`RateLimitConflict`: the transaction rolls back (no task is assigned) and the service
reloads its state — including the other scheduler's starts — from PostgreSQL. Token-bucket
keys (`burst` set) rely on the single owner alone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg

from services.scheduler.concurrency import SemRef
from services.scheduler.effects import Effects
from services.scheduler.engine import Engine
from services.scheduler.ratelimit import Admission

HORIZON = timedelta(hours=1, minutes=5)  # longest window, plus clock slack
PRUNE_EVERY_S = 60.0
REFRESH_EVERY_S = 0.25


class RateLimitConflict(RuntimeError):
    """Recording these starts would break a rate limit (another scheduler started some)."""


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class FairnessStore:
    def __init__(self) -> None:
        self._limits_seen: datetime | None = None
        self._last_refresh = 0.0
        self._last_prune = 0.0

    async def load(self, conn: asyncpg.Connection, engine: Engine) -> None:
        """Restore definitions, recent starts, holders and executing attempts."""
        self._limits_seen = None
        await self.refresh_limits(conn, engine, force=True)
        rows = await conn.fetch(
            "SELECT tenant_id, key, ts, units, task_id, attempt FROM rate_limit_admissions"
            " WHERE ts > now() - $1::interval ORDER BY ts",
            HORIZON,
        )
        for r in rows:
            engine.restore_admission(Admission(
                r["tenant_id"], r["key"], int(r["ts"].timestamp() * 1000), r["units"],
                r["task_id"], r["attempt"],
            ))
        holders: dict[str, list[SemRef]] = {}
        for r in await conn.fetch(
            "SELECT tenant_id, key, holder, max_runs, strategy FROM concurrency_holders"
        ):
            holders.setdefault(r["holder"], []).append(
                SemRef(r["tenant_id"], r["key"], r["max_runs"], r["strategy"])
            )
        for holder, refs in holders.items():
            engine.restore_holder(holder, refs)
        for r in await conn.fetch(
            "SELECT tenant_id, task_id, attempt, run_id, worker_id FROM executing_attempts"
        ):
            engine.restore_executing(
                r["tenant_id"], r["task_id"], r["attempt"], r["run_id"], r["worker_id"]
            )

    async def refresh_limits(
        self, conn: asyncpg.Connection, engine: Engine, *, force: bool = False
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

    async def flush(self, conn: asyncpg.Connection, fx: Effects, engine: Engine) -> None:
        """Write the batch's fair-scheduling effects (inside the batch transaction)."""
        if fx.admissions:
            await self._record_starts(conn, fx.admissions, engine)
        if fx.holders_del:
            keys = list(fx.holders_del)
            await conn.execute(
                "DELETE FROM concurrency_holders h USING unnest($1::text[], $2::text[],"
                " $3::text[]) AS x(t, k, h) WHERE h.tenant_id = x.t AND h.key = x.k"
                " AND h.holder = x.h",
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            )
        if fx.holders_put:
            items = list(fx.holders_put.items())
            await conn.execute(
                "INSERT INTO concurrency_holders (tenant_id, key, holder, max_runs, strategy)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],"
                " $5::text[]) ON CONFLICT DO NOTHING",
                [k[0] for k, _ in items], [k[1] for k, _ in items], [k[2] for k, _ in items],
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

    async def _record_starts(
        self, conn: asyncpg.Connection, adms: list[Admission], engine: Engine
    ) -> None:
        pairs = sorted({(a.tenant, a.key) for a in adms})
        tenants, keys = [p[0] for p in pairs], [p[1] for p in pairs]
        await conn.execute(
            "INSERT INTO rate_limit_keys (tenant_id, key) SELECT * FROM unnest($1::text[],"
            " $2::text[]) ON CONFLICT DO NOTHING",
            tenants, keys,
        )
        await conn.execute(
            "SELECT 1 FROM rate_limit_keys k JOIN unnest($1::text[], $2::text[]) AS x(t, k)"
            " ON k.tenant_id = x.t AND k.key = x.k ORDER BY k.tenant_id, k.key FOR UPDATE OF k",
            tenants, keys,
        )
        await conn.execute(
            "INSERT INTO rate_limit_admissions (tenant_id, key, ts, units, task_id, attempt)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[],"
            " $5::text[], $6::int[]) ON CONFLICT DO NOTHING",
            [a.tenant for a in adms], [a.key for a in adms], [_ts(a.ts_ms) for a in adms],
            [a.units for a in adms], [a.task_id for a in adms], [a.attempt for a in adms],
        )
        by_per: dict[int, list[tuple[str, str, int, int]]] = {}
        for tenant, key in pairs:
            d = engine.limits.defs.get((tenant, key))
            if d is None or d.burst is not None:
                continue
            first = min(a.ts_ms for a in adms if a.tenant == tenant and a.key == key)
            by_per.setdefault(d.per_ms, []).append((tenant, key, d.limit, first))
        for per_ms, items in by_per.items():
            # Windows (t - per, t] ending at each start since (first new start - per).
            bad = await conn.fetchrow(
                "WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int[],"
                " $4::timestamptz[]) AS x(t, k, lim, first)),"
                " w AS (SELECT a.tenant_id, a.key, x.lim, sum(a.units) OVER (PARTITION BY"
                " a.tenant_id, a.key ORDER BY a.ts RANGE BETWEEN $5::interval PRECEDING AND"
                " CURRENT ROW) AS used FROM rate_limit_admissions a JOIN x ON a.tenant_id = x.t"
                " AND a.key = x.k WHERE a.ts > x.first - $6::interval)"
                " SELECT tenant_id, key, used, lim FROM w WHERE used > lim LIMIT 1",
                [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
                [_ts(i[3]) for i in items],
                timedelta(milliseconds=per_ms) - timedelta(microseconds=1),
                timedelta(milliseconds=per_ms),
            )
            if bad is not None:
                raise RateLimitConflict(
                    f"rate limit {bad['key']!r} of tenant {bad['tenant_id']}: {bad['used']}"
                    f" units in one window, limit {bad['lim']}"
                )
        now = time.monotonic()
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            await conn.execute(
                "DELETE FROM rate_limit_admissions WHERE ts < now() - $1::interval", HORIZON
            )
