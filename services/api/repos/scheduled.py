"""One-off scheduled runs: the scheduler's ticker starts each once, at `run_at`."""

from __future__ import annotations

from datetime import datetime

import asyncpg

_COLUMNS = (
    "id, workflow, run_at, input::text AS input, metadata::text AS metadata, run_id,"
    " fired_at, created_at"
)


class ScheduledRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant: str, scheduled_id: str, workflow: str, run_at: datetime,
        input_json: str, metadata_json: str, run_id: str,
    ) -> asyncpg.Record:
        row: asyncpg.Record = await self._pool.fetchrow(
            "INSERT INTO scheduled_runs (tenant_id, id, workflow, run_at, input, metadata,"
            f" run_id) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7) RETURNING {_COLUMNS}",
            tenant, scheduled_id, workflow, run_at, input_json, metadata_json, run_id,
        )
        return row

    async def list_scheduled(
        self, tenant: str, workflow: str | None, limit: int
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM scheduled_runs WHERE tenant_id = $1"
            " AND ($2::text IS NULL OR workflow = $2) ORDER BY run_at, id LIMIT $3",
            tenant, workflow, limit,
        )
        return rows

    async def get(self, tenant: str, scheduled_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM scheduled_runs WHERE tenant_id = $1 AND id = $2",
            tenant, scheduled_id,
        )
        return row

    async def delete(self, tenant: str, scheduled_id: str) -> bool:
        """Forget a scheduled run; False when there was none."""
        deleted = await self._pool.fetchval(
            "DELETE FROM scheduled_runs WHERE tenant_id = $1 AND id = $2 RETURNING true",
            tenant, scheduled_id,
        )
        return bool(deleted)
