"""Tenants and API tokens: a token maps to exactly one tenant."""

from __future__ import annotations

import hashlib
import secrets

import asyncpg

from libs.common.subjects import valid_tenant


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


async def ensure_tenant(
    conn: asyncpg.Pool | asyncpg.Connection, tenant_id: str, token: str | None = None
) -> str:
    """Create the tenant if missing and register `token` (a new one when None). Returns it."""
    if not valid_tenant(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} must be 1-64 chars of [a-z0-9_-]")
    token = token or new_token()
    await conn.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING", tenant_id
    )
    await conn.execute(
        "INSERT INTO api_tokens (token_hash, tenant_id) VALUES ($1, $2)"
        " ON CONFLICT (token_hash) DO UPDATE SET tenant_id = EXCLUDED.tenant_id",
        hash_token(token),
        tenant_id,
    )
    return token


async def tenant_for_token(conn: asyncpg.Pool | asyncpg.Connection, token: str) -> str | None:
    row = await conn.fetchval(
        "SELECT tenant_id FROM api_tokens WHERE token_hash = $1", hash_token(token)
    )
    return str(row) if row is not None else None


class TokenCache:
    """Token → tenant lookups, cached in memory (tokens are only ever added)."""

    def __init__(self, pool: asyncpg.Pool, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._cache: dict[str, str] = {}
        self._max = max_entries

    async def tenant(self, token: str) -> str | None:
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        tenant = await tenant_for_token(self._pool, token)
        if tenant is not None:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[token] = tenant
        return tenant
