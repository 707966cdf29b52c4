"""Static rate-limit keys a tenant defines; the scheduler polls this table for changes."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry

_COLUMNS = "key, limit_units, per, burst, updated_at"


async def missing_keys(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, keys: Iterable[str]
) -> list[str]:
    """The keys among `keys` that the tenant has not defined, sorted."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    rows = await db.fetch(
        "SELECT key FROM rate_limits WHERE tenant_id = $1 AND key = ANY($2)", tenant, wanted
    )
    found = {r["key"] for r in rows}
    return [k for k in wanted if k not in found]


class RateLimitRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(
        self, tenant: str, key: str, limit: int, per: str, burst: int | None,
        entry: AuditEntry | None = None,
    ) -> asyncpg.Record:
        async with self._pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record = await conn.fetchrow(
                "INSERT INTO rate_limits (tenant_id, key, limit_units, per, burst) VALUES"
                " ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, key) DO UPDATE SET"
                " limit_units = EXCLUDED.limit_units, per = EXCLUDED.per,"
                f" burst = EXCLUDED.burst, updated_at = clock_timestamp() RETURNING {_COLUMNS}",
                tenant, key, limit, per, burst,
            )
            if entry is not None:
                await audit.record(conn, entry)
        return row

    async def list_limits(self, tenant: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM rate_limits WHERE tenant_id = $1 ORDER BY key", tenant
        )
        return rows

    async def get(self, tenant: str, key: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM rate_limits WHERE tenant_id = $1 AND key = $2", tenant, key
        )
        return row

    async def usage(self, tenant: str, windows: dict[str, float]) -> dict[str, int]:
        """Units admitted per key within its window (key -> window length in seconds)."""
        if not windows:
            return {}
        rows = await self._pool.fetch(
            "SELECT a.key, sum(a.units) AS used FROM rate_limit_admissions a"
            " JOIN unnest($2::text[], $3::float8[]) AS w(key, seconds) ON w.key = a.key"
            " WHERE a.tenant_id = $1 AND a.ts > now() - make_interval(secs => w.seconds)"
            " GROUP BY a.key",
            tenant, list(windows), list(windows.values()),
        )
        return {r["key"]: int(r["used"]) for r in rows}
