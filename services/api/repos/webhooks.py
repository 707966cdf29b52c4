"""Incoming webhooks, their delivery log, and the tenant's signing secret."""

from __future__ import annotations

import secrets

import asyncpg

from libs.common import audit
from libs.common.audit import AuditEntry
from services.api.repos.errors import Conflict

HOOK_LOG_KEPT = 100  # requests kept per hook
_HOOK_COLUMNS = "name, source, secret, event_key, scope, config::text AS config, created_at"


class WebhookRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant: str, name: str, source: str, secret: str, event_key: str,
        scope: str | None, config_json: str, entry: AuditEntry,
    ) -> asyncpg.Record:
        async with self._pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record | None = await conn.fetchrow(
                "INSERT INTO webhooks (tenant_id, name, source, secret, event_key, scope, config)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) ON CONFLICT DO NOTHING"
                f" RETURNING {_HOOK_COLUMNS}",
                tenant, name, source, secret, event_key, scope, config_json,
            )
            if row is None:
                raise Conflict(f"webhook {name!r} exists; delete it first to change it")
            await audit.record(conn, entry)
        return row

    async def list_hooks(self, tenant: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_HOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY name", tenant
        )
        return rows

    async def get(self, tenant: str, name: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_HOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND name = $2",
            tenant, name,
        )
        return row

    async def delete(self, tenant: str, name: str, entry: AuditEntry) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM webhooks WHERE tenant_id = $1 AND name = $2 RETURNING true",
                tenant, name,
            )
            if deleted:
                await conn.execute(
                    "DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND name = $2",
                    tenant, name,
                )
                await audit.record(conn, entry)
        return bool(deleted)

    async def tenant_exists(self, tenant: str) -> bool:
        return bool(await self._pool.fetchval("SELECT true FROM tenants WHERE id = $1", tenant))

    async def log_request(
        self, tenant: str, name: str, status: int, outcome: str, event_id: str | None,
        event_key: str | None, detail: str,
    ) -> None:
        """Record one request and keep only the hook's last HOOK_LOG_KEPT."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_deliveries (tenant_id, name, status, outcome, event_id,"
                " event_key, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                tenant, name, status, outcome, event_id, event_key, detail[:1000],
            )
            await conn.execute(
                "DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND name = $2 AND id <="
                " (SELECT id FROM webhook_deliveries WHERE tenant_id = $1 AND name = $2"
                "  ORDER BY id DESC OFFSET $3 LIMIT 1)",
                tenant, name, HOOK_LOG_KEPT,
            )

    async def requests(self, tenant: str, name: str, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT received_at, status, outcome, event_id, event_key, detail"
            " FROM webhook_deliveries WHERE tenant_id = $1 AND name = $2"
            " ORDER BY id DESC LIMIT $3",
            tenant, name, min(limit, HOOK_LOG_KEPT),
        )
        return rows

    async def signing_secret(self, tenant: str) -> asyncpg.Record:
        """The tenant's signing secret, made on first use."""
        await self._pool.execute(
            "INSERT INTO signing_secrets (tenant_id, secret) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING", tenant, "whsec_" + secrets.token_hex(24),
        )
        row: asyncpg.Record = await self._pool.fetchrow(
            "SELECT secret, created_at FROM signing_secrets WHERE tenant_id = $1", tenant
        )
        return row

    async def rotate_signing_secret(self, tenant: str, entry: AuditEntry) -> asyncpg.Record:
        async with self._pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record = await conn.fetchrow(
                "INSERT INTO signing_secrets (tenant_id, secret) VALUES ($1, $2)"
                " ON CONFLICT (tenant_id) DO UPDATE SET secret = EXCLUDED.secret,"
                " created_at = now() RETURNING secret, created_at",
                tenant, "whsec_" + secrets.token_hex(24),
            )
            await audit.record(conn, entry)
        return row
