"""Per-tenant limits: operator-set, unlimited by default (no row, or a NULL column).

Each process reads a tenant's limits through `LimitCache` (re-read after `CACHE_TTL_S`, so an
operator's change lands within that). Rate-type limits use `TokenBucket`, one per tenant per
process: with N API replicas a tenant can reach N times the configured rate. We accept that
rather than pay a shared-store round trip (a PostgreSQL commit or a NATS KV CAS) on every
trigger and event; docs/security.md says so.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum

import asyncpg
import msgspec
from cachetools import TTLCache
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from libs.common.audit import OPERATOR, AuditEntry, record
from libs.common.messages import WORKER_INFO_DECODER

CACHE_TTL_S = 1.0
MAX_CACHED_TENANTS = 10_000


class Limit(StrEnum):
    """A limit's name as callers see it (429 bodies, GET /limits, the admin command)."""

    UNFINISHED_RUNS = "unfinished_runs"
    TRIGGERS_PER_S = "triggers_per_s"
    EVENTS_PER_S = "events_per_s"
    PAYLOAD_BYTES = "payload_bytes"
    WORKERS = "workers"
    SLOTS = "slots"


class TenantLimits(msgspec.Struct, frozen=True, kw_only=True):
    """None means unlimited."""

    unfinished_runs: int | None = None
    triggers_per_s: float | None = None
    events_per_s: float | None = None
    payload_bytes: int | None = None
    workers: int | None = None
    slots: int | None = None

    def get(self, limit: Limit) -> float | None:
        value: float | None = getattr(self, limit.value)
        return value


UNLIMITED = TenantLimits()


class LimitExceeded(Exception):
    """A request would go over a tenant limit; `retry_after_s` says when to try again."""

    def __init__(self, limit: Limit, value: float, retry_after_s: int, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit
        self.value = value
        self.retry_after_s = retry_after_s


async def load(conn: asyncpg.Pool | asyncpg.Connection, tenant: str) -> TenantLimits:
    row = await conn.fetchrow(
        "SELECT unfinished_runs, triggers_per_s, events_per_s, payload_bytes, workers, slots"
        " FROM tenant_limits WHERE tenant_id = $1",
        tenant,
    )
    return UNLIMITED if row is None else TenantLimits(**dict(row))


async def store(
    pool: asyncpg.Pool, tenant: str, changes: dict[Limit, float | None]
) -> TenantLimits:
    """Set some limits (None = unlimited), leaving the others; audited as the operator."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM tenants WHERE id = $1", tenant) is None:
            raise ValueError(f"tenant {tenant!r} does not exist")
        await conn.execute(
            "INSERT INTO tenant_limits (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant
        )
        for limit, value in changes.items():
            # Column names come from the Limit enum, never from input.
            await conn.execute(
                f"UPDATE tenant_limits SET {limit.value} = $2, updated_at = now()"
                " WHERE tenant_id = $1",
                tenant, value,
            )
        await record(conn, AuditEntry(
            tenant=tenant, action="limits.set", token_id=None, token_name=OPERATOR,
            detail={k.value: v for k, v in changes.items()},
        ))
        return await load(conn, tenant)


class LimitCache:
    """Tenant → limits, re-read from PostgreSQL at most every CACHE_TTL_S; a tenant not asked
    about for that long is forgotten (at most MAX_CACHED_TENANTS are held)."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = CACHE_TTL_S) -> None:
        self._pool = pool
        self._cache: TTLCache[str, TenantLimits] = TTLCache(MAX_CACHED_TENANTS, ttl_s)

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    async def get(self, tenant: str) -> TenantLimits:
        hit = self._cache.get(tenant)
        if hit is not None:
            return hit
        limits = await load(self._pool, tenant)
        self._cache[tenant] = limits
        return limits


class TokenBucket:
    """`rate` tokens per second, holding at most max(rate, 1) (one second's worth)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._at = time.monotonic()

    def take(self, n: int) -> float:
        """Take `n` tokens and return 0, or take none and return the seconds until `n` are
        there (infinite when `n` exceeds the capacity: such a batch can never pass)."""
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if n <= self._tokens:
            self._tokens -= n
            return 0.0
        if n > self.capacity:
            return math.inf
        return (n - self._tokens) / self.rate


class RateLimiter:
    """One token bucket per (tenant, limit) in this process; a changed rate starts a new one."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, Limit], TokenBucket] = {}

    def take(self, tenant: str, limit: Limit, rate: float | None, n: int) -> None:
        """Raise LimitExceeded when `n` more would go over `rate` per second."""
        if rate is None:
            return
        key = (tenant, limit)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(rate)
        wait_s = bucket.take(n)
        if wait_s == 0:
            return
        if math.isinf(wait_s):
            raise LimitExceeded(limit, rate, 1, f"{n} at once is more than {limit.value}={rate:g}"
                                " allows; send smaller batches")
        raise LimitExceeded(limit, rate, max(1, math.ceil(wait_s)),
                            f"over {limit.value}={rate:g}")


async def worker_usage(
    kv: KeyValue, tenant: str, exclude: str | None = None
) -> tuple[int, int]:
    """(connected workers, their total slots) of the tenant, from the workers registry that
    every dispatcher writes (so the count spans all dispatchers). `exclude`: a worker id not
    to count (one reconnecting replaces its old entry)."""
    try:
        keys = await kv.keys()
    except NoKeysError:
        return 0, 0
    workers = slots = 0
    for key in keys:
        if key == exclude:
            continue
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue  # deleted since the listing
        if entry.value is None:
            continue
        info = WORKER_INFO_DECODER.decode(entry.value)
        if info.tenant == tenant:
            workers += 1
            slots += info.slots
    return workers, slots
