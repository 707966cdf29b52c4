"""Alert rules, the open groups that collect what they alert on, and once-only facts."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry

_RULE_COLUMNS = (
    "id, events, workflow, filter, slack_webhook_url, email, webhook_url, window_s, created_at"
)


class AlertRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant: str, rule_id: str, events: list[str], workflow: str | None,
        filter_: str | None, slack: str | None, email: list[str], webhook: str | None,
        window_s: float, entry: AuditEntry,
    ) -> asyncpg.Record:
        async with self._pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record = await conn.fetchrow(
                "INSERT INTO alert_rules (tenant_id, id, events, workflow, filter,"
                " slack_webhook_url, email, webhook_url, window_s)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_RULE_COLUMNS}",
                tenant, rule_id, events, workflow, filter_, slack, email, webhook, window_s,
            )
            await audit.record(conn, entry)
        return row

    async def list_rules(self, tenant: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE tenant_id = $1"
            " ORDER BY created_at, id", tenant,
        )
        return rows

    async def get(self, tenant: str, rule_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE tenant_id = $1 AND id = $2",
            tenant, rule_id,
        )
        return row

    async def delete(self, tenant: str, rule_id: str, entry: AuditEntry) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM alert_rules WHERE tenant_id = $1 AND id = $2 RETURNING true",
                tenant, rule_id,
            )
            if deleted:
                await conn.execute(
                    "DELETE FROM alert_groups WHERE tenant_id = $1 AND rule_id = $2"
                    " AND NOT flushed", tenant, rule_id,
                )
                await audit.record(conn, entry)
        return bool(deleted)

    async def tenants_watching(self, event: str) -> list[asyncpg.Record]:
        """Rules (with their tenant) that alert on `event`: the periodic checks' work list."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT tenant_id, {_RULE_COLUMNS} FROM alert_rules WHERE $1 = ANY(events)"
            " ORDER BY tenant_id, id LIMIT 10000", event,
        )
        return rows

    async def count(
        self, tenant: str, rule_id: str, event: str, subject: str, window_s: float,
        run_id: str | None, detail: str,
    ) -> None:
        """Count one occurrence in the rule's open group for (event, subject), opening a
        group (closing `window_s` from now) if none is open."""
        await self._pool.execute(
            "INSERT INTO alert_groups (tenant_id, id, rule_id, event, subject, closes_at,"
            " first_run_id, last_run_id, detail)"
            " VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7, $7, $8)"
            " ON CONFLICT (tenant_id, rule_id, event, subject) WHERE NOT flushed"
            " DO UPDATE SET count = alert_groups.count + 1,"
            " last_run_id = COALESCE(EXCLUDED.last_run_id, alert_groups.last_run_id),"
            " detail = EXCLUDED.detail",
            tenant, "grp_" + uuid.uuid4().hex, rule_id, event, subject, window_s, run_id,
            detail[:2000],
        )

    async def first_time(self, tenant: str, rule_id: str, fact: str) -> bool:
        """True the first time this rule sees `fact` (a token id): it alerts once."""
        return bool(await self._pool.fetchval(
            "INSERT INTO alert_facts (tenant_id, rule_id, fact) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING true", tenant, rule_id, fact,
        ))

    async def flush_due(
        self, limit: int,
        deliver: Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[None]],
    ) -> int:
        """Close up to `limit` groups whose window has passed: `deliver` queues their
        messages on the same connection, in the same transaction as the group is marked
        flushed (so a group is announced once however many replicas sweep)."""
        async with self._pool.acquire() as conn, conn.transaction():
            groups = await conn.fetch(
                "SELECT g.tenant_id, g.id, g.rule_id, g.event, g.subject, g.opened_at,"
                " g.closes_at, g.count, g.first_run_id, g.last_run_id, g.detail,"
                " r.slack_webhook_url, r.email, r.webhook_url, r.workflow"
                " FROM alert_groups g JOIN alert_rules r"
                "   ON r.tenant_id = g.tenant_id AND r.id = g.rule_id"
                " WHERE NOT g.flushed AND g.closes_at <= now()"
                " ORDER BY g.closes_at LIMIT $1 FOR UPDATE OF g SKIP LOCKED", limit,
            )
            for group in groups:
                await deliver(conn, group)
            if groups:
                await conn.execute(
                    "UPDATE alert_groups SET flushed = true WHERE (tenant_id, id) IN"
                    " (SELECT * FROM unnest($1::text[], $2::text[]))",
                    [g["tenant_id"] for g in groups], [g["id"] for g in groups],
                )
        return len(groups)

    async def next_close(self) -> float | None:
        """Seconds until the next open group closes (None: none is open)."""
        value: float | None = await self._pool.fetchval(
            "SELECT extract(epoch FROM min(closes_at) - now()) FROM alert_groups"
            " WHERE NOT flushed"
        )
        return float(value) if value is not None else None

    async def stalled_actions(self, tenant: str, older_than_s: float) -> list[asyncpg.Record]:
        """(workflow, action) of tasks queued longer than `older_than_s` and due to run."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT DISTINCT r.workflow, t.action FROM tasks t"
            " JOIN runs r ON r.tenant_id = t.tenant_id AND r.id = t.run_id"
            " WHERE t.tenant_id = $1 AND t.status = 'QUEUED'"
            " AND t.queued_at < now() - make_interval(secs => $2)"
            " AND (t.not_before IS NULL OR t.not_before < now()) LIMIT 100",
            tenant, older_than_s,
        )
        return rows

    async def expiring_tokens(self, tenant: str, within_s: float) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, name, expires_at FROM api_tokens WHERE tenant_id = $1"
            " AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at > now()"
            " AND expires_at < now() + make_interval(secs => $2) LIMIT 100",
            tenant, within_s,
        )
        return rows

    async def prune(self, older_than_s: float) -> None:
        """Forget closed groups and once-only facts older than `older_than_s`."""
        await self._pool.execute(
            "DELETE FROM alert_groups WHERE flushed AND closes_at < now()"
            " - make_interval(secs => $1)", older_than_s)
        await self._pool.execute(
            "DELETE FROM alert_facts WHERE seen_at < now() - make_interval(secs => $1)"
            " AND fact LIKE 'run:%'", older_than_s)
