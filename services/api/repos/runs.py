"""Runs as the scheduler wrote them: the run, its tasks, every attempt and its history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

MAX_MATCHING = 1000  # ids one "every run matching" action may touch


class RunRecords(NamedTuple):
    run: asyncpg.Record
    tasks: list[asyncpg.Record]
    attempts: list[asyncpg.Record]


@dataclass
class RunFilter:
    """Which runs to list; every field optional."""

    status: str | None = None
    workflow: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # api | event | cron | schedule
    parent_run_id: str | None = None
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
    parent_run_id: str | None


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
    if f.parent_run_id:
        add("parent_run_id = ?", f.parent_run_id)
    if f.run_ids is not None:
        add("id = ANY(?::text[])", f.run_ids)
    return conds, args


class RunRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, tenant: str, run_id: str) -> RunRecords | None:
        """The run with its tasks (creation order) and attempts (in order); None if unknown."""
        async with self._pool.acquire() as conn:
            run = await conn.fetchrow(
                "SELECT id, workflow, version_id, status, priority, input,"
                " metadata::text AS metadata, created_at, finished_at,"
                " parent_run_id, parent_task, depth"
                " FROM runs WHERE tenant_id = $1 AND id = $2",
                tenant, run_id,
            )
            if run is None:
                return None
            tasks = await conn.fetch(
                "SELECT id, name, status, attempt, output, worker_id, queued_at, started_at,"
                " finished_at FROM tasks WHERE tenant_id = $1 AND run_id = $2"
                " ORDER BY created_at, name",
                tenant, run_id,
            )
            attempts = await conn.fetch(
                "SELECT a.task_id, a.attempt, a.status, a.worker_id, a.error::text AS error,"
                " a.started_at, a.finished_at FROM task_attempts a JOIN tasks t"
                " ON t.tenant_id = a.tenant_id AND t.id = a.task_id"
                " WHERE t.tenant_id = $1 AND t.run_id = $2 ORDER BY a.attempt",
                tenant, run_id,
            )
        return RunRecords(run, tasks, attempts)

    async def list_runs(
        self, tenant: str, status: str | None, workflow: str | None, limit: int,
        parent_run_id: str | None = None,
    ) -> list[asyncpg.Record]:
        """Newest first (GET /runs): the dashboard's query with only these filters."""
        return await self._fetch(
            tenant, RunFilter(status=status, workflow=workflow, parent_run_id=parent_run_id),
            None, limit,
        )

    async def search(
        self, tenant: str, f: RunFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[RunRow]:
        """Runs matching `f`, newest first, keyset-paged on (created_at, id) after `after`:
        page N costs what page 1 does."""
        return [
            RunRow(
                id=r["id"], workflow=r["workflow"], status=r["status"], priority=r["priority"],
                source=r["source"], metadata=msgspec.json.decode(r["metadata"]),
                created_at=r["created_at"], finished_at=r["finished_at"],
                parent_run_id=r["parent_run_id"],
            )
            for r in await self._fetch(tenant, f, after, limit)
        ]

    async def _fetch(
        self, tenant: str, f: RunFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[asyncpg.Record]:
        conds, args = _where(tenant, f)
        if after is not None:
            args.extend(after)
            conds.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, workflow, status, priority, source, metadata::text AS metadata,"
            " created_at, finished_at, parent_run_id"
            f" FROM runs WHERE {' AND '.join(conds)}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        return rows

    async def matching_ids(self, tenant: str, f: RunFilter) -> list[str]:
        """Ids of the newest MAX_MATCHING runs matching `f` (a bulk action on a filter)."""
        conds, args = _where(tenant, f)
        rows = await self._pool.fetch(
            f"SELECT id FROM runs WHERE {' AND '.join(conds)}"
            f" ORDER BY created_at DESC, id DESC LIMIT {MAX_MATCHING}",
            *args,
        )
        return [r["id"] for r in rows]

    # child runs (docs/children.md) ------------------------------------------------------
    async def children(
        self, tenant: str, run_id: str, limit: int
    ) -> tuple[list[asyncpg.Record], int]:
        """The run's first `limit` children in spawn order, and how many it has in all."""
        async with self._pool.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT id, workflow, status, parent_task, created_at FROM runs"
                " WHERE tenant_id = $1 AND parent_run_id = $2 ORDER BY created_at, id LIMIT $3",
                tenant, run_id, limit,
            )
            if len(rows) < limit:
                return rows, len(rows)
            count = await conn.fetchval(
                "SELECT count(*) FROM runs WHERE tenant_id = $1 AND parent_run_id = $2",
                tenant, run_id,
            )
        return rows, int(count)

    async def parent_task(
        self, tenant: str, run_id: str, task_id: str
    ) -> tuple[int, str, str] | None:
        """(depth, task name, run status) of a task of one of the tenant's runs; None if the
        run has no such task."""
        row = await self._pool.fetchrow(
            "SELECT r.depth, t.name, r.status FROM runs r JOIN tasks t"
            " ON t.tenant_id = r.tenant_id AND t.run_id = r.id"
            " WHERE r.tenant_id = $1 AND r.id = $2 AND t.id = $3",
            tenant, run_id, task_id,
        )
        return None if row is None else (int(row["depth"]), str(row["name"]), str(row["status"]))

    async def results(
        self, tenant: str, run_ids: list[str], terminal: list[str]
    ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """Of these runs, those whose status is in `terminal`, and their tasks with the
        output and, for a task that did not succeed, the last error of its attempts."""
        async with self._pool.acquire() as conn:
            runs: list[asyncpg.Record] = await conn.fetch(
                "SELECT id, status FROM runs"
                " WHERE tenant_id = $1 AND id = ANY($2::text[]) AND status = ANY($3::text[])",
                tenant, run_ids, terminal,
            )
            if not runs:
                return runs, []
            tasks: list[asyncpg.Record] = await conn.fetch(
                "SELECT t.run_id, t.name, t.status, t.output, e.error FROM tasks t"
                " LEFT JOIN LATERAL (SELECT a.error::text AS error FROM task_attempts a"
                "  WHERE a.tenant_id = t.tenant_id AND a.task_id = t.id AND a.error IS NOT NULL"
                "  AND t.status <> 'SUCCEEDED' ORDER BY a.attempt DESC LIMIT 1) e ON true"
                " WHERE t.tenant_id = $1 AND t.run_id = ANY($2::text[])",
                tenant, [r["id"] for r in runs],
            )
        return runs, tasks

    async def existing(self, tenant: str, run_ids: list[str]) -> set[str]:
        """Which of these run ids the tenant already has."""
        return set(await self.statuses(tenant, run_ids))

    async def statuses(self, tenant: str, run_ids: list[str]) -> dict[str, str]:
        """Run id -> status of those of these runs the tenant has."""
        rows = await self._pool.fetch(
            "SELECT id, status FROM runs WHERE tenant_id = $1 AND id = ANY($2::text[])",
            tenant, run_ids,
        )
        return {str(r["id"]): str(r["status"]) for r in rows}

    async def status(self, tenant: str, run_id: str) -> str | None:
        status = await self._pool.fetchval(
            "SELECT status FROM runs WHERE tenant_id = $1 AND id = $2", tenant, run_id
        )
        return str(status) if status is not None else None

    async def history(self, tenant: str, run_id: str) -> list[asyncpg.Record]:
        """History rows of the run, oldest first: each holds one scheduler batch's events."""
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT ts, events::text AS events FROM run_history"
            " WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq",
            tenant, run_id,
        )
        return rows
