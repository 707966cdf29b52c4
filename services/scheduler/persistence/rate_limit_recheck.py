"""The PostgreSQL re-check of rate-limit starts: no window may hold more than its limit,
counting the starts of EVERY scheduler, not only this one's.

The in-memory window (engine/admission/ratelimit.py) decides. Today one scheduler process
owns all tenants (docs/design.md §6: schedulers split the tenants into leased partitions; a tenant — and so each of its
rate-limit keys — then has exactly one owner at a time). As a guard against two schedulers
deciding for the same key at once (a lease handover, a split brain), the batch transaction
records its starts here and re-checks the sliding window in PostgreSQL before committing: it
locks the keys' rows in `rate_limit_keys` (in key order, so two schedulers cannot deadlock),
which serializes every transaction that records starts for those keys, and then checks with
a window function that no window of `per` ending at a recent start holds more than `limit`
units. A violation raises `RateLimitConflict`: the transaction rolls back (no task is
assigned) and the service reloads its state — including the other scheduler's starts — from
PostgreSQL. Token-bucket keys (`burst` set) rely on the single owner alone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg

from services.scheduler.records import Admission, LimitDef, LimitId

HORIZON = timedelta(hours=1, minutes=5)  # longest window, plus clock slack
PRUNE_EVERY_S = 60.0


class RateLimitConflict(RuntimeError):
    """Recording these starts would break a rate limit (another scheduler started some)."""


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class RateLimitRecheck:
    """Records rate-limit starts and re-checks their windows (inside the batch transaction)."""

    def __init__(self) -> None:
        self._last_prune = 0.0

    async def record_starts(
        self, conn: asyncpg.Connection, adms: list[Admission], defs: dict[LimitId, LimitDef]
    ) -> None:
        """Insert the batch's starts; raise RateLimitConflict if a window now overflows."""
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
            [a.tenant for a in adms], [a.key for a in adms], [ts(a.ts_ms) for a in adms],
            [a.units for a in adms], [a.task_id for a in adms], [a.attempt for a in adms],
        )
        by_per: dict[int, list[tuple[str, str, int, int]]] = {}
        for tenant, key in pairs:
            d = defs.get((tenant, key))
            if d is None or d.burst is not None:
                continue
            first = min(a.ts_ms for a in adms if a.tenant == tenant and a.key == key)
            by_per.setdefault(d.per_ms, []).append((tenant, key, d.limit, first))
        for per_ms, items in by_per.items():
            await _check_windows(conn, per_ms, items)
        now = time.monotonic()
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            await conn.execute(
                "DELETE FROM rate_limit_admissions WHERE ts < now() - $1::interval", HORIZON
            )


async def _check_windows(
    conn: asyncpg.Connection, per_ms: int, items: list[tuple[str, str, int, int]]
) -> None:
    """Windows (t - per, t] ending at each start since (first new start - per), for the
    keys `items` (tenant, key, limit, first new start ms) that share one `per`."""
    bad = await conn.fetchrow(
        "WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int[],"
        " $4::timestamptz[]) AS x(t, k, lim, first)),"
        " w AS (SELECT a.tenant_id, a.key, x.lim, sum(a.units) OVER (PARTITION BY"
        " a.tenant_id, a.key ORDER BY a.ts RANGE BETWEEN $5::interval PRECEDING AND"
        " CURRENT ROW) AS used FROM rate_limit_admissions a JOIN x ON a.tenant_id = x.t"
        " AND a.key = x.k WHERE a.ts > x.first - $6::interval)"
        " SELECT tenant_id, key, used, lim FROM w WHERE used > lim LIMIT 1",
        [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
        [ts(i[3]) for i in items],
        timedelta(milliseconds=per_ms) - timedelta(microseconds=1),
        timedelta(milliseconds=per_ms),
    )
    if bad is not None:
        raise RateLimitConflict(
            f"rate limit {bad['key']!r} of tenant {bad['tenant_id']}: {bad['used']}"
            f" units in one window, limit {bad['lim']}"
        )
