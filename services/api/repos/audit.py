"""Reading the audit log (entries are written by `libs.common.audit.record`, inside the
transaction of the change they describe)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry


class AuditRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, entry: AuditEntry) -> None:
        """For changes that are not a database write (trigger, cancel): call it right before
        the publish, so a change never happens unrecorded."""
        await audit.record(self._pool, entry)

    async def list_entries(
        self, tenant: str, since: datetime | None, action: str | None, limit: int,
        before_id: int | None = None,
    ) -> list[asyncpg.Record]:
        """Newest first; `before_id` pages on: the entries older than that one."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, ts, token_id, token_name, action, target, detail::text AS detail"
            " FROM audit_log WHERE tenant_id = $1"
            " AND ($2::timestamptz IS NULL OR ts >= $2) AND ($3::text IS NULL OR action = $3)"
            " AND ($5::bigint IS NULL OR id < $5)"
            " ORDER BY id DESC LIMIT $4",
            tenant, since, action, limit, before_id,
        )
        return rows
