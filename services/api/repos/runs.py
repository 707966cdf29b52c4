"""Runs as the scheduler wrote them: the run, its tasks, every attempt and its history."""

from __future__ import annotations

from typing import NamedTuple

import asyncpg


class RunRecords(NamedTuple):
    run: asyncpg.Record
    tasks: list[asyncpg.Record]
    attempts: list[asyncpg.Record]


class RunRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, tenant: str, run_id: str) -> RunRecords | None:
        """The run with its tasks (creation order) and attempts (in order); None if unknown."""
        async with self._pool.acquire() as conn:
            run = await conn.fetchrow(
                "SELECT id, workflow, version_id, status, priority, input,"
                " metadata::text AS metadata, created_at, finished_at"
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
        self, tenant: str, status: str | None, workflow: str | None, limit: int
    ) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, workflow, status, created_at, finished_at FROM runs WHERE tenant_id = $1"
            " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR workflow = $3)"
            " ORDER BY created_at DESC LIMIT $4",
            tenant, status, workflow, limit,
        )
        return rows

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
