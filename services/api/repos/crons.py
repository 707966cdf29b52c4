"""Crons: those created through the API (origin 'api') and those a workflow's current version
declares in `on_crons` (origin 'workflow'). The scheduler's ticker fires both."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry
from services.api.repos.errors import Conflict

_COLUMNS = (
    "id, workflow, name, expression, input::text AS input, metadata::text AS metadata,"
    " origin, next_due_at, last_tick, created_at"
)


class WorkflowCron(NamedTuple):
    """One `on_crons` entry of a workflow version, ready to be stored."""

    id: str
    name: str
    expression: str
    next_due_at: datetime


async def sync_workflow_crons(
    conn: asyncpg.Connection, tenant: str, workflow: str, crons: list[WorkflowCron]
) -> None:
    """Make the workflow's origin-'workflow' crons exactly `crons`, inside the caller's
    transaction. Rows that stay keep their next_due_at and last_tick."""
    await conn.execute(
        "DELETE FROM crons WHERE tenant_id = $1 AND workflow = $2 AND origin = 'workflow'"
        " AND NOT (id = ANY($3::text[]))",
        tenant, workflow, [c.id for c in crons],
    )
    if crons:
        await conn.executemany(
            "INSERT INTO crons (tenant_id, id, workflow, name, expression, origin, next_due_at)"
            " VALUES ($1, $2, $3, $4, $5, 'workflow', $6) ON CONFLICT DO NOTHING",
            [(tenant, c.id, workflow, c.name, c.expression, c.next_due_at) for c in crons],
        )


class CronRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant: str, cron_id: str, workflow: str, name: str, expression: str,
        input_json: str, metadata_json: str, next_due_at: datetime,
        entry: AuditEntry | None = None,
    ) -> asyncpg.Record:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                row: asyncpg.Record = await conn.fetchrow(
                    "INSERT INTO crons (tenant_id, id, workflow, name, expression, input,"
                    " metadata, origin, next_due_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb,"
                    f" $7::jsonb, 'api', $8) RETURNING {_COLUMNS}",
                    tenant, cron_id, workflow, name, expression, input_json, metadata_json,
                    next_due_at,
                )
                if entry is not None:
                    await audit.record(conn, entry)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"workflow {workflow!r} already has a cron named {name!r}") from exc
        return row

    async def list_crons(
        self, tenant: str, workflow: str | None, limit: int
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM crons WHERE tenant_id = $1"
            " AND ($2::text IS NULL OR workflow = $2) ORDER BY created_at, id LIMIT $3",
            tenant, workflow, limit,
        )
        return rows

    async def get(self, tenant: str, cron_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM crons WHERE tenant_id = $1 AND id = $2", tenant, cron_id
        )
        return row

    async def delete(self, tenant: str, cron_id: str, entry: AuditEntry | None = None) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM crons WHERE tenant_id = $1 AND id = $2", tenant, cron_id
            )
            if entry is not None:
                await audit.record(conn, entry)
