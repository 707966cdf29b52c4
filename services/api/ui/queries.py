"""The dashboard's reads that the REST API has no query for yet, in one place.

Everything else the pages show comes from the REST handlers' own code (see `commands.py`).
Each query here is tenant-scoped by its first parameter; the OLAP ones bind the tenant through
`OlapClient`, which refuses SQL without the tenant placeholder.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from nats.js.errors import NoKeysError

from libs.common.messages import WORKER_INFO_DECODER, WorkerInfo
from libs.common.olap import EVENTS, MATCHES, OlapError
from libs.common.specs import WorkflowSpec
from libs.common.subjects import Bucket
from services.api.state import ApiState

PAGE_SIZE = 50
MAX_BULK = 1000  # runs one bulk action may touch (a selection or "every run matching")
MAX_EVENT_RUNS = 1000


@dataclass
class RunFilter:
    """The runs list's filters; every field optional."""

    status: str | None = None
    workflow: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # api | event | cron | schedule
    run_ids: list[str] | None = None  # e.g. the runs one event triggered


@dataclass(frozen=True)
class RunRow:
    id: str
    workflow: str
    status: str
    priority: int
    source: str
    metadata: dict[str, str]
    created_at: datetime
    finished_at: datetime | None


def _where(tenant: str, f: RunFilter) -> tuple[list[str], list[Any]]:
    """Only the conditions in use, so each query shape gets a plan that uses the indexes."""
    conds = ["tenant_id = $1"]
    args: list[Any] = [tenant]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        conds.append(sql.replace("?", f"${len(args)}"))

    if f.status:
        add("status = ?", f.status)
    if f.workflow:
        add("workflow = ?", f.workflow)
    if f.since:
        add("created_at >= ?", f.since)
    if f.until:
        add("created_at < ?", f.until)
    if f.metadata:
        add("metadata @> ?::jsonb", msgspec.json.encode(f.metadata).decode())
    if f.source:
        add("source = ?", f.source)
    if f.run_ids is not None:
        add("id = ANY(?::text[])", f.run_ids)
    return conds, args


async def list_runs(
    pool: asyncpg.Pool, tenant: str, f: RunFilter, after: tuple[datetime, str] | None,
    limit: int = PAGE_SIZE,
) -> list[RunRow]:
    """Newest first, keyset-paged on (created_at, id): page N costs what page 1 does."""
    conds, args = _where(tenant, f)
    if after is not None:
        args.extend(after)
        conds.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    rows = await pool.fetch(
        "SELECT id, workflow, status, priority, source, metadata::text AS metadata, created_at,"
        f" finished_at FROM runs WHERE {' AND '.join(conds)}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    return [
        RunRow(
            id=r["id"], workflow=r["workflow"], status=r["status"], priority=r["priority"],
            source=r["source"], metadata=msgspec.json.decode(r["metadata"]),
            created_at=r["created_at"], finished_at=r["finished_at"],
        )
        for r in rows
    ]


async def matching_run_ids(pool: asyncpg.Pool, tenant: str, f: RunFilter) -> list[str]:
    """Ids of the newest MAX_BULK runs matching the filter (a bulk action 'on the filter')."""
    conds, args = _where(tenant, f)
    rows = await pool.fetch(
        f"SELECT id FROM runs WHERE {' AND '.join(conds)}"
        f" ORDER BY created_at DESC, id DESC LIMIT {MAX_BULK}",
        *args,
    )
    return [r["id"] for r in rows]


async def workflow_names(pool: asyncpg.Pool, tenant: str) -> list[str]:
    rows = await pool.fetch("SELECT name FROM workflows WHERE tenant_id = $1 ORDER BY name", tenant)
    return [r["name"] for r in rows]


@dataclass(frozen=True)
class VersionRow:
    id: str
    hash: str
    created_at: datetime
    spec: dict[str, Any]


async def workflow_versions(pool: asyncpg.Pool, tenant: str, name: str) -> list[VersionRow]:
    rows = await pool.fetch(
        "SELECT id, hash, created_at, spec::text AS spec FROM workflow_versions"
        " WHERE tenant_id = $1 AND name = $2 ORDER BY created_at DESC, id",
        tenant, name,
    )
    return [
        VersionRow(id=r["id"], hash=r["hash"], created_at=r["created_at"],
                   spec=msgspec.json.decode(r["spec"]))
        for r in rows
    ]


@dataclass(frozen=True)
class WorkerRow:
    info: WorkerInfo
    slots_used: int


async def workers(api: ApiState, tenant: str) -> list[WorkerRow]:
    """The tenant's registered workers (the dispatchers' KV registry) with slots in use."""
    kv = await api.js.key_value(Bucket.WORKERS.value)
    infos: list[WorkerInfo] = []
    try:
        keys = await kv.keys()
    except NoKeysError:
        keys = []
    for key in keys:
        with contextlib.suppress(Exception):  # deleted between keys() and get()
            entry = await kv.get(key)
            if entry.value:
                info = WORKER_INFO_DECODER.decode(entry.value)
                if info.tenant == tenant:
                    infos.append(info)
    used = {
        r["worker_id"]: r["n"]
        for r in await api.pool.fetch(
            "SELECT worker_id, count(*) AS n FROM executing_attempts WHERE tenant_id = $1"
            " GROUP BY worker_id",
            tenant,
        )
    }
    infos.sort(key=lambda i: (i.name, i.worker_id))
    return [WorkerRow(info=i, slots_used=int(used.get(i.worker_id, 0))) for i in infos]


async def rate_limit_usage(
    pool: asyncpg.Pool, tenant: str, windows: dict[str, float]
) -> dict[str, int]:
    """Units admitted per key within its window (key -> window length in seconds)."""
    if not windows:
        return {}
    rows = await pool.fetch(
        "SELECT a.key, sum(a.units) AS used FROM rate_limit_admissions a"
        " JOIN unnest($2::text[], $3::float8[]) AS w(key, seconds) ON w.key = a.key"
        " WHERE a.tenant_id = $1 AND a.ts > now() - make_interval(secs => w.seconds)"
        " GROUP BY a.key",
        tenant, list(windows), list(windows.values()),
    )
    return {r["key"]: int(r["used"]) for r in rows}


RECENT_EVENTS_SQL = f"""
SELECT key, event_id, scope, payload, toUnixTimestamp64Milli(ts) AS ts_ms
FROM {EVENTS} FINAL
WHERE tenant = {{tenant:String}}
ORDER BY ts DESC
LIMIT {{limit:UInt32}}
"""

EVENT_MATCHES_SQL = f"""
SELECT event_id, workflow, matched, run_id, detail
FROM {MATCHES} FINAL
WHERE tenant = {{tenant:String}} AND has(splitByChar(',', {{ids:String}}), event_id)
ORDER BY workflow
"""

EVENT_RUNS_SQL = f"""
SELECT run_id FROM {MATCHES} FINAL
WHERE tenant = {{tenant:String}} AND event_id = {{event_id:String}} AND matched = 1
LIMIT {MAX_EVENT_RUNS}
"""


@dataclass
class EventRow:
    key: str
    event_id: str
    scope: str
    payload: str
    ts_ms: int
    matches: list[dict[str, Any]] = field(default_factory=list)


async def recent_events(api: ApiState, tenant: str, limit: int = 50) -> list[EventRow]:
    """The newest events with the outcome of matching each (from the OLAP store)."""
    if api.olap is None:
        raise OlapError("analytics store not configured")
    rows = await api.olap.query(RECENT_EVENTS_SQL, {"limit": limit}, tenant=tenant)
    events = [
        EventRow(key=r["key"], event_id=r["event_id"], scope=r["scope"], payload=r["payload"],
                 ts_ms=int(r["ts_ms"]))
        for r in rows
    ]
    if events:
        by_id = {e.event_id: e for e in events}
        for m in await api.olap.query(EVENT_MATCHES_SQL, {"ids": ",".join(by_id)}, tenant=tenant):
            event = by_id.get(m["event_id"])
            if event is not None:
                detail = _loads(m.get("detail"))
                event.matches.append({
                    "workflow": m["workflow"], "matched": bool(m["matched"]),
                    "run_id": m["run_id"], "outcome": detail.get("outcome", ""),
                    "filter_id": detail.get("filter_id", ""), "error": detail.get("error", ""),
                })
    return events


async def runs_of_event(api: ApiState, tenant: str, event_id: str) -> list[str]:
    if api.olap is None:
        raise OlapError("analytics store not configured")
    rows = await api.olap.query(EVENT_RUNS_SQL, {"event_id": event_id}, tenant=tenant)
    return [r["run_id"] for r in rows if r["run_id"]]


def _loads(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def version_spec(api: ApiState, tenant: str, version_id: str) -> WorkflowSpec | None:
    """The definition a run was started from (versions are immutable, so decoded once)."""
    raw = await api.pool.fetchval(
        "SELECT spec::text FROM workflow_versions WHERE tenant_id = $1 AND id = $2",
        tenant, version_id,
    )
    return api.workflows.spec_of(version_id, raw) if raw is not None else None


async def run_statuses(pool: asyncpg.Pool, tenant: str, run_ids: list[str]) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT id, status FROM runs WHERE tenant_id = $1 AND id = ANY($2::text[])",
        tenant, run_ids,
    )
    return {r["id"]: r["status"] for r in rows}
