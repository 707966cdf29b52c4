"""Garbage collection: blobs whose run is gone, and event blobs past the event retention.

Only blobs older than a grace period are considered: a worker uploads a run's input or output
before (or while) the row that references it is committed, and such a blob must survive.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from libs.common.payloads._refs import PayloadRef, encode_ref, split_key
from libs.common.payloads._store import PayloadStore, Scope

EVENT_SCOPE_PREFIX = "evt-"
# Scopes looked up in PostgreSQL per query (one tenant per query).
_RUN_BATCH = 500


class GcReport(msgspec.Struct, kw_only=True):
    """What one collection pass saw and removed."""

    scanned_blobs: int = 0
    deleted_run_blobs: int = 0
    deleted_event_blobs: int = 0
    deleted_stale_uploads: int = 0


def event_scope(event_id: str) -> str:
    """The scope under which an event's payload is stored."""
    return EVENT_SCOPE_PREFIX + event_id


async def collect_garbage(
    store: PayloadStore,
    pool: asyncpg.Pool,
    *,
    older_than_s: float,
    event_retention_s: float,
    tenant: str | None = None,
    now: datetime | None = None,
) -> GcReport:
    """Delete blobs of runs that no longer exist, and of events older than their retention.

    Args:
        store: the payload store to sweep.
        pool: PostgreSQL, where the `runs` table says which runs exist.
        older_than_s: grace period; a blob written more recently is never deleted.
        event_retention_s: age past which an event's blob goes (the EVT stream's max age).
        tenant: sweep one tenant only (all when None).
        now: the reference time (the current time by default).
    """
    if older_than_s < 0 or event_retention_s < 0:
        raise ValueError("older_than_s and event_retention_s must be >= 0")
    now = now or datetime.now(UTC)
    grace_cutoff = now - timedelta(seconds=older_than_s)
    event_cutoff = now - timedelta(seconds=max(older_than_s, event_retention_s))
    report = GcReport()
    pending: list[Scope] = []  # run scopes of one tenant, awaiting a lookup

    async def flush() -> None:
        if pending:
            report.deleted_run_blobs += await _delete_orphans(store, pool, pending, grace_cutoff)
            pending.clear()

    async for scope in store.list_scopes(tenant):
        report.scanned_blobs += len(scope.blobs)
        if scope.scope_id.startswith(EVENT_SCOPE_PREFIX):
            if expired := await _unreferenced(pool, scope, event_cutoff):
                report.deleted_event_blobs += await store.delete_many(scope.tenant, expired)
            continue
        if not _keys_before(scope, grace_cutoff):
            continue
        if pending and (pending[0].tenant != scope.tenant or len(pending) >= _RUN_BATCH):
            await flush()
        pending.append(scope)
    await flush()
    report.deleted_stale_uploads = await store.delete_stale_uploads(grace_cutoff)
    return report


async def _unreferenced(pool: asyncpg.Pool, scope: Scope, cutoff: datetime) -> list[str]:
    """An event's expired blobs, except one that a run it triggered still has as its input
    (the matcher passes the event's reference on as the run input)."""
    expired = [blob for blob in scope.blobs if blob.modified_at < cutoff]
    if not expired:
        return []
    refs = {encode_ref(PayloadRef(b.key, split_key(b.key)[2], b.size)): b.key for b in expired}
    rows = await pool.fetch(
        "SELECT input FROM runs WHERE tenant_id = $1 AND input = ANY($2::bytea[])",
        scope.tenant, list(refs),
    )
    used = {refs[bytes(row["input"])] for row in rows}
    return [key for key in refs.values() if key not in used]


def _keys_before(scope: Scope, cutoff: datetime) -> list[str]:
    return [blob.key for blob in scope.blobs if blob.modified_at < cutoff]


async def _delete_orphans(
    store: PayloadStore, pool: asyncpg.Pool, scopes: Iterable[Scope], cutoff: datetime
) -> int:
    scopes = list(scopes)
    tenant = scopes[0].tenant
    rows = await pool.fetch(
        "SELECT id FROM runs WHERE tenant_id = $1 AND id = ANY($2::text[])",
        tenant,
        [scope.scope_id for scope in scopes],
    )
    alive = {row["id"] for row in rows}
    doomed = [key for s in scopes if s.scope_id not in alive for key in _keys_before(s, cutoff)]
    return await store.delete_many(tenant, doomed) if doomed else 0
