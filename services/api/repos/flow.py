"""Flow control's rows as the API reads and writes them: workflow pauses, and the triggers a
debounce window, batch or paused workflow holds (docs/flow-control.md). Claims and joins,
shared with the scheduler, are in libs/common/flow.py."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg
from cachetools import TTLCache

from libs.common import audit
from libs.common.audit import AuditEntry


class Pause(NamedTuple):
    workflow: str
    mode: str
    paused_at: datetime
    paused_by: str
    dropped: int


class HeldTrigger(NamedTuple):
    trigger_id: str
    seq: int
    source: str
    created_at: datetime


class Window(NamedTuple):
    run_id: str
    workflow: str
    kind: str
    group_key: str
    state: str
    items: int
    opened_at: datetime
    deadline: datetime


_PAUSE = "SELECT workflow, mode, paused_at, paused_by, dropped FROM workflow_pauses"
# The trigger path asks whether a workflow is paused on every request; the answer is kept this
# long (a pause or resume through this process clears it at once). Another API process may
# accept a trigger for up to this long after a drop-mode pause: the scheduler then skips it
# and counts it as dropped (docs/flow-control.md).
PAUSE_CACHE_S = 1.0
PAUSE_CACHE_ENTRIES = 100_000


class FlowRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pauses: TTLCache[tuple[str, str], Pause | None] = TTLCache(
            PAUSE_CACHE_ENTRIES, PAUSE_CACHE_S)

    async def pause_of(self, tenant: str, workflow: str, *, fresh: bool = False) -> Pause | None:
        """The workflow's pause, if any (as of at most PAUSE_CACHE_S ago unless `fresh`)."""
        key = (tenant, workflow)
        if not fresh and key in self._pauses:
            return self._pauses[key]
        row = await self._pool.fetchrow(
            f"{_PAUSE} WHERE tenant_id = $1 AND workflow = $2", tenant, workflow
        )
        found = Pause(*row) if row is not None else None
        self._pauses[key] = found
        return found

    async def pauses(self, tenant: str) -> dict[str, Pause]:
        rows = await self._pool.fetch(f"{_PAUSE} WHERE tenant_id = $1", tenant)
        return {r["workflow"]: Pause(*r) for r in rows}

    async def pause(self, tenant: str, workflow: str, mode: str, by: str,
                    entry: AuditEntry) -> Pause:
        """Pause (or change the mode of a pause; its drop count stays)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO workflow_pauses (tenant_id, workflow, mode, paused_by)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, workflow) DO UPDATE"
                " SET mode = EXCLUDED.mode"
                " RETURNING workflow, mode, paused_at, paused_by, dropped",
                tenant, workflow, mode, by,
            )
            await audit.record(conn, entry)
        assert row is not None
        self._pauses.pop((tenant, workflow), None)
        return Pause(*row)

    async def resume(self, tenant: str, workflow: str, entry: AuditEntry) -> Pause | None:
        """Unpause; returns the pause that ended (None when it was not paused)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM workflow_pauses WHERE tenant_id = $1 AND workflow = $2"
                " RETURNING workflow, mode, paused_at, paused_by, dropped",
                tenant, workflow,
            )
            await audit.record(conn, entry)
        self._pauses.pop((tenant, workflow), None)
        return Pause(*row) if row is not None else None

    async def held_runs(self, tenant: str, workflow: str) -> int:
        """Runs waiting for a resume (triggers held in queue mode, windows sealed meanwhile)."""
        count: int = await self._pool.fetchval(
            "SELECT count(*) FROM flow_windows WHERE tenant_id = $1 AND workflow = $2"
            " AND state = 'sealed'", tenant, workflow,
        )
        return count

    async def window(self, tenant: str, run_id: str) -> Window | None:
        """The window, batch or held trigger that is (or became) this run."""
        row = await self._pool.fetchrow(
            "SELECT run_id, workflow, kind, group_key, state, items, opened_at, deadline"
            " FROM flow_windows WHERE tenant_id = $1 AND run_id = $2", tenant, run_id,
        )
        return Window(*row) if row is not None else None

    async def triggers(self, tenant: str, run_id: str, limit: int) -> list[HeldTrigger]:
        """The triggers the run's window holds, in arrival order."""
        rows = await self._pool.fetch(
            "SELECT trigger_id, seq, source, created_at FROM flow_items"
            " WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq LIMIT $3",
            tenant, run_id, limit,
        )
        return [HeldTrigger(*r) for r in rows]
