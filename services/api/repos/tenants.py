"""Tenants as the operator sees them: create (with a first token) and list."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.common import tokens
from libs.common.subjects import valid_tenant
from services.api.repos.errors import Conflict, Invalid


class TenantRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: str) -> str:
        """Create a tenant and its first API token; the token's secret (stored only hashed)."""
        if not valid_tenant(tenant_id):
            raise Invalid(f"tenant id {tenant_id!r} must be 1-64 chars of [a-z0-9_-]")
        async with self._pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING"
                " RETURNING id",
                tenant_id,
            )
            if created is None:
                # Handing out another token for an existing tenant would be a silent
                # privilege grant; the operator asks for one on purpose instead.
                raise Conflict(f"tenant {tenant_id!r} already exists")
            return await tokens.ensure_tenant(conn, tenant_id)

    async def list_tenants(self) -> list[Any]:
        return list(await self._pool.fetch(
            "SELECT t.id, t.created_at, count(k.token_hash) AS tokens"
            " FROM tenants t LEFT JOIN api_tokens k ON k.tenant_id = t.id"
            " GROUP BY t.id, t.created_at ORDER BY t.id"
        ))
