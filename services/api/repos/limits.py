"""Usage the tenant limits are measured against (the limits themselves: libs.common.limits)."""

from __future__ import annotations

import asyncpg

UNFINISHED = ["PENDING", "RUNNING"]


class LimitRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def unfinished_runs(self, tenant: str) -> int:
        count = await self._pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND status = ANY($2::text[])",
            tenant, UNFINISHED,
        )
        return int(count or 0)
