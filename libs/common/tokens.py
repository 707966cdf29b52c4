"""API tokens and their scopes: a token belongs to exactly one tenant and carries scopes.

Secrets are stored as sha256 hashes only. Every API and dispatcher process keeps a small cache
of token → principal; revocation reaches those caches two ways, so it holds within
`REVOKE_WITHIN_S` even when one of them fails: a core-NATS broadcast on `subjects.TOKEN_REVOKED`
evicts the entry at once, and entries are never trusted longer than `CACHE_TTL_S` anyway.
Expiry needs no message: the cached principal carries `expires_at` and is checked on every use.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg
from cachetools import TTLCache
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.common import subjects
from libs.common.subjects import valid_tenant

log = logging.getLogger(__name__)

CACHE_TTL_S = 1.0
REVOKE_WITHIN_S = 2.0


class Scope(StrEnum):
    """What a token may do. `admin` includes `write`, which includes `read`; `worker` stands
    apart: it connects workers over gRPC and registers their workflows over REST."""

    ADMIN = "admin"
    WRITE = "write"
    READ = "read"
    WORKER = "worker"


ALL_SCOPES: tuple[Scope, ...] = (Scope.ADMIN, Scope.WRITE, Scope.READ, Scope.WORKER)
_IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.WRITE, Scope.READ}),
    Scope.WRITE: frozenset({Scope.WRITE, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.WORKER: frozenset({Scope.WORKER}),
}


def parse_scopes(values: Iterable[str]) -> tuple[Scope, ...]:
    """Validated, de-duplicated scopes in canonical order; ValueError names a bad one."""
    wanted = set()
    for value in values:
        try:
            wanted.add(Scope(value))
        except ValueError:
            raise ValueError(
                f"unknown scope {value!r}; scopes are {', '.join(s.value for s in ALL_SCOPES)}"
            ) from None
    if not wanted:
        raise ValueError("a token needs at least one scope")
    return tuple(s for s in ALL_SCOPES if s in wanted)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's tenant, identity and what it may do."""

    tenant: str
    token_id: str
    token_name: str
    scopes: frozenset[Scope]
    expires_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now or datetime.now(self.expires_at.tzinfo)) >= self.expires_at

    def allows(self, scope: Scope) -> bool:
        return any(scope in _IMPLIED[held] for held in self.scopes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(12)


async def ensure_tenant(
    conn: asyncpg.Pool | asyncpg.Connection, tenant_id: str, token: str | None = None
) -> str:
    """Create the tenant if missing and register `token` (a new one when None) with every
    scope. Returns the token."""
    if not valid_tenant(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} must be 1-64 chars of [a-z0-9_-]")
    token = token or new_token()
    await conn.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING", tenant_id
    )
    await conn.execute(
        "INSERT INTO api_tokens (token_hash, tenant_id, id, name, scopes)"
        " VALUES ($1, $2, $3, 'default', $4)"
        " ON CONFLICT (token_hash) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
        " revoked_at = NULL, expires_at = NULL, scopes = EXCLUDED.scopes",
        hash_token(token), tenant_id, new_token_id(), [s.value for s in ALL_SCOPES],
    )
    return token


async def principal_for_token(
    conn: asyncpg.Pool | asyncpg.Connection, token: str
) -> Principal | None:
    """The live (not revoked, not expired) token's principal, or None."""
    row = await conn.fetchrow(
        "SELECT tenant_id, id, name, scopes, expires_at FROM api_tokens"
        " WHERE token_hash = $1 AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())",
        hash_token(token),
    )
    if row is None:
        return None
    return Principal(
        tenant=row["tenant_id"], token_id=row["id"], token_name=row["name"],
        scopes=frozenset(Scope(s) for s in row["scopes"] if s in Scope.__members__.values()),
        expires_at=row["expires_at"],
    )


async def announce_revoked(nc: NATS, token_id: str) -> None:
    """Tell every API and dispatcher process to forget the token now (best effort: their cache
    TTL is the safety net)."""
    try:
        await nc.publish(subjects.TOKEN_REVOKED, token_id.encode())
        await nc.flush(timeout=2)
    except Exception as exc:
        log.warning("token revocation broadcast for %s not sent: %r", token_id, exc)


RevokeListener = Callable[[str], Awaitable[None]]


class TokenCache:
    """Token → principal, cached for at most CACHE_TTL_S and evicted at once on revocation.

    Keys are token hashes, so the process never keeps secrets it does not need.
    """

    def __init__(
        self, pool: asyncpg.Pool, max_entries: int = 10_000, ttl_s: float = CACHE_TTL_S
    ) -> None:
        self._pool = pool
        # cachetools.TTLCache rather than a dict: bounded (a flood of distinct tokens cannot
        # grow the process), each entry expires ttl_s after it was cached (the revocation
        # safety net), and a full cache evicts the least recently used entry instead of
        # forgetting every caller at once.
        self._cache: TTLCache[str, Principal] = TTLCache(
            maxsize=max_entries, ttl=ttl_s, timer=time.monotonic
        )
        self._sub: Subscription | None = None
        self._listeners: list[RevokeListener] = []

    async def principal(self, token: str) -> Principal | None:
        key = hash_token(token)
        hit = self._cache.get(key)
        if hit is not None and not hit.expired():
            return hit
        self._cache.pop(key, None)
        principal = await principal_for_token(self._pool, token)
        if principal is not None:
            self._cache[key] = principal
        return principal

    def forget(self, token_id: str) -> None:
        for key in [k for k, p in self._cache.items() if p.token_id == token_id]:
            self._cache.pop(key, None)

    def on_revoke(self, listener: RevokeListener) -> None:
        """Call `listener(token_id)` after each revocation broadcast (e.g. to end streams)."""
        self._listeners.append(listener)

    async def listen(self, nc: NATS) -> None:
        """Subscribe to revocation broadcasts; call once, after the NATS connection is up."""
        self._sub = await nc.subscribe(subjects.TOKEN_REVOKED, cb=self._on_revoked)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may already be closing
                log.debug("token revocation unsubscribe: %r", exc)
            self._sub = None

    async def _on_revoked(self, msg: Msg) -> None:
        token_id = msg.data.decode(errors="replace")
        self.forget(token_id)
        for listener in self._listeners:
            try:
                await listener(token_id)
            except Exception:
                log.exception("revocation listener failed for %s", token_id)
