"""Event filters: which events of a workflow's `on_events` keys start a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry

_COLUMNS = "id, workflow, scope, expression, payload::text AS payload, created_at, updated_at"


class FilterFields(NamedTuple):
    workflow: str
    scope: str | None
    expression: str
    payload_json: str | None


class FilterRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant: str, filter_id: str, fields: FilterFields, entry: AuditEntry | None = None
    ) -> asyncpg.Record:
        async with self._pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record = await conn.fetchrow(
                "INSERT INTO filters (tenant_id, id, workflow, scope, expression, payload)"
                f" VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING {_COLUMNS}",
                tenant, filter_id, fields.workflow, fields.scope, fields.expression,
                fields.payload_json,
            )
            if entry is not None:
                await audit.record(conn, entry)
        return row

    async def list_filters(
        self, tenant: str, workflow: str | None, limit: int
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM filters WHERE tenant_id = $1"
            " AND ($2::text IS NULL OR workflow = $2) ORDER BY created_at, id LIMIT $3",
            tenant, workflow, limit,
        )
        return rows

    async def get(self, tenant: str, filter_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM filters WHERE tenant_id = $1 AND id = $2", tenant, filter_id
        )
        return row

    async def update(
        self, tenant: str, filter_id: str, change: Callable[[asyncpg.Record], FilterFields],
        entry: AuditEntry | None = None,
    ) -> asyncpg.Record | None:
        """Apply `change` to the locked current row and store its result; None when missing.

        `change` may raise to reject the new fields: the transaction then rolls back.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM filters WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                tenant, filter_id,
            )
            if current is None:
                return None
            fields = change(current)
            row: asyncpg.Record = await conn.fetchrow(
                "UPDATE filters SET workflow = $3, scope = $4, expression = $5,"
                " payload = $6::jsonb, updated_at = now() WHERE tenant_id = $1 AND id = $2"
                f" RETURNING {_COLUMNS}",
                tenant, filter_id, fields.workflow, fields.scope, fields.expression,
                fields.payload_json,
            )
            if entry is not None:
                await audit.record(conn, entry)
        return row

    async def delete(
        self, tenant: str, filter_id: str, entry: AuditEntry | None = None
    ) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM filters WHERE tenant_id = $1 AND id = $2 RETURNING true",
                tenant, filter_id,
            )
            if deleted and entry is not None:
                await audit.record(conn, entry)
        return bool(deleted)
