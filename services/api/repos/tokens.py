"""API tokens of a tenant: create (the secret is returned once), list, revoke; each audited in
the same transaction."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from libs.common import audit, tokens
from libs.common.audit import AuditEntry
from libs.common.tokens import Scope

_COLUMNS = "id, name, scopes, created_at, expires_at, revoked_at"


class TokenRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, tenant: str, name: str, scopes: tuple[Scope, ...], expires_at: datetime | None,
        entry: AuditEntry,
    ) -> tuple[str, asyncpg.Record]:
        """Store a new token; returns (secret, row). Only the secret's hash is kept."""
        secret = tokens.new_token()
        async with self._pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record = await conn.fetchrow(
                "INSERT INTO api_tokens (token_hash, tenant_id, id, name, scopes, expires_at)"
                f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
                tokens.hash_token(secret), tenant, tokens.new_token_id(), name,
                [s.value for s in scopes], expires_at,
            )
            await audit.record(conn, _with_target(entry, row["id"]))
        return secret, row

    async def list_tokens(self, tenant: str, include_revoked: bool) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE tenant_id = $1"
            " AND ($2 OR revoked_at IS NULL) ORDER BY created_at, id",
            tenant, include_revoked,
        )
        return rows

    async def get(self, tenant: str, token_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE tenant_id = $1 AND id = $2",
            tenant, token_id,
        )
        return row

    async def revoke(self, tenant: str, token_id: str, entry: AuditEntry) -> bool:
        """Mark the token revoked; False when the tenant has no such live token."""
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE api_tokens SET revoked_at = now()"
                " WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING true",
                tenant, token_id,
            )
            if done:
                await audit.record(conn, entry)
        return bool(done)


def _with_target(entry: AuditEntry, target: str) -> AuditEntry:
    return AuditEntry(
        tenant=entry.tenant, action=entry.action, token_id=entry.token_id,
        token_name=entry.token_name, target=target, detail=entry.detail,
    )
