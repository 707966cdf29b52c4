"""Reading the audit log (entries are written by `libs.common.audit.record`, inside the
transaction of the change they describe)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry


class AuditRepo:
    def __init__(self, pool: asyncpg.Pool, record_pool: asyncpg.Pool | None = None) -> None:
        self._pool = pool
        self._record_pool = record_pool or pool

    async def record(self, entry: AuditEntry) -> None:
        """For changes that are not a database write (trigger, cancel): call it right before
        the publish, so a change never happens unrecorded.

        On the API's audit pool these commits are asynchronous (`synchronous_commit=off`): the
        entry is written and visible at once, but the request does not wait for its WAL flush
        (half of a trigger's time in the API before, ~1 ms of ~1.7). Only a PostgreSQL crash in
        the next few hundred ms can lose such an entry, which is no weaker than the published
        message it records: JetStream does not fsync each message either.
        """
        await audit.record(self._record_pool, entry)

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
