"""Outgoing deliveries (run callbacks, alert messages): the queue the notifier sends from and
the delivery log the API shows are one table, `outbound_deliveries`."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg

_COLUMNS = (
    "tenant_id, id, kind, channel, target, run_id, rule_id, body, status, attempts,"
    " next_attempt_at, last_status, last_error, created_at, finished_at"
)


class NewDelivery(NamedTuple):
    tenant: str
    id: str  # derived from what it means: the same fact twice is one delivery
    kind: str  # callback | alert
    channel: str  # webhook | slack | email
    target: str
    run_id: str | None
    rule_id: str | None
    body: bytes


class RunEnd(NamedTuple):
    """A run that ended, with where it is to be announced."""

    run_id: str
    workflow: str
    status: str
    callback_url: str | None
    on_finish_webhook: str | None


async def enqueue(conn: asyncpg.Connection | asyncpg.Pool, items: list[NewDelivery]) -> int:
    """Queue deliveries (ones already known are left as they are); answers how many are new."""
    if not items:
        return 0
    cols = list(zip(*items, strict=True))
    rows = await conn.fetch(
        "INSERT INTO outbound_deliveries (tenant_id, id, kind, channel, target, run_id,"
        " rule_id, body) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        " $5::text[], $6::text[], $7::text[], $8::bytea[]) ON CONFLICT DO NOTHING RETURNING id",
        *[list(c) for c in cols],
    )
    return len(rows)


class DeliveryRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def add_callback(self, tenant: str, run_id: str, url: str) -> None:
        await self._pool.execute(
            "INSERT INTO run_callbacks (tenant_id, run_id, url) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id, run_id) DO UPDATE SET url = EXCLUDED.url",
            tenant, run_id, url,
        )

    async def run_ends(self, tenant: str, run_ids: list[str]) -> list[RunEnd]:
        """Of these ended runs, those with a callback URL or a workflow on_finish_webhook."""
        rows = await self._pool.fetch(
            "SELECT r.id, r.workflow, r.status, c.url AS callback_url,"
            " v.spec->>'on_finish_webhook' AS on_finish"
            " FROM runs r JOIN workflow_versions v ON v.id = r.version_id"
            " LEFT JOIN run_callbacks c ON c.tenant_id = r.tenant_id AND c.run_id = r.id"
            " WHERE r.tenant_id = $1 AND r.id = ANY($2::text[])"
            " AND (c.url IS NOT NULL OR v.spec->>'on_finish_webhook' IS NOT NULL)",
            tenant, run_ids,
        )
        return [RunEnd(r["id"], r["workflow"], r["status"], r["callback_url"], r["on_finish"])
                for r in rows]

    async def enqueue(self, items: list[NewDelivery]) -> int:
        return await enqueue(self._pool, items)

    async def claim(self, limit: int, lease_s: float) -> list[asyncpg.Record]:
        """Take up to `limit` due deliveries for `lease_s` (another replica skips them; one
        whose sender died is due again when the lease passes)."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "UPDATE outbound_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)"
            " FROM (SELECT tenant_id, id FROM outbound_deliveries"
            "       WHERE status = 'pending' AND next_attempt_at <= now()"
            "       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
            " WHERE d.tenant_id = due.tenant_id AND d.id = due.id"
            f" RETURNING {', '.join('d.' + c.strip() for c in _COLUMNS.split(','))}",
            limit, lease_s,
        )
        return rows

    async def next_due(self) -> datetime | None:
        value: datetime | None = await self._pool.fetchval(
            "SELECT min(next_attempt_at) FROM outbound_deliveries WHERE status = 'pending'"
        )
        return value

    async def settle(
        self, tenant: str, delivery_id: str, *, delivered: bool, give_up: bool,
        last_status: int | None, last_error: str | None, retry_in_s: float,
    ) -> None:
        """Record one attempt: delivered, failed for good, or due again in `retry_in_s`."""
        status = "delivered" if delivered else ("failed" if give_up else "pending")
        await self._pool.execute(
            "UPDATE outbound_deliveries SET attempts = attempts + 1, status = $3,"
            " last_status = $4, last_error = $5,"
            " next_attempt_at = now() + make_interval(secs => $6),"
            " finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END"
            " WHERE tenant_id = $1 AND id = $2",
            tenant, delivery_id, status, last_status,
            last_error[:1000] if last_error else None, retry_in_s,
        )

    async def list_deliveries(
        self, tenant: str, *, kind: str | None, run_id: str | None, rule_id: str | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM outbound_deliveries WHERE tenant_id = $1"
            " AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR run_id = $3)"
            " AND ($4::text IS NULL OR rule_id = $4) ORDER BY created_at DESC, id LIMIT $5",
            tenant, kind, run_id, rule_id, limit,
        )
        return rows

    async def prune(self, older_than_s: float, callbacks_older_than_s: float) -> None:
        """Forget finished deliveries older than `older_than_s`, and the callback URLs of runs
        triggered longer than `callbacks_older_than_s` ago (a run still going then is not
        announced)."""
        await self._pool.execute(
            "DELETE FROM outbound_deliveries WHERE status <> 'pending'"
            " AND finished_at < now() - make_interval(secs => $1)", older_than_s)
        await self._pool.execute(
            "DELETE FROM run_callbacks WHERE created_at < now() - make_interval(secs => $1)",
            callbacks_older_than_s)
