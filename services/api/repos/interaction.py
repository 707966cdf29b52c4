"""What the API reads and writes of a run's interaction (docs/interaction.md): its inbox
(written by the scheduler), its latest state, its waitpoints, and forks."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from libs.common.messages import DurableStep

# Waitpoint ids are derived from the task and log position (a replay gets the same one).
WAITPOINT_KEY_NAME = "waitpoints"
WAITPOINTS_LISTED = 200


@dataclass(frozen=True)
class Waitpoint:
    id: str
    tenant: str
    run_id: str
    task_id: str
    position: int
    label: str
    status: str
    payload: bytes | None
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None


@dataclass
class ForkLinks:
    forked_from: str | None = None
    from_task: str | None = None
    from_step: int | None = None
    forks: list[str] = field(default_factory=list)


def _waitpoint(row: asyncpg.Record) -> Waitpoint:
    return Waitpoint(
        id=row["id"], tenant=row["tenant_id"], run_id=row["run_id"], task_id=row["task_id"],
        position=row["position"], label=row["label"], status=row["status"],
        payload=bytes(row["payload"]) if row["payload"] is not None else None,
        created_at=row["created_at"], expires_at=row["expires_at"],
        completed_at=row["completed_at"],
    )


_WP_COLUMNS = ("id, tenant_id, run_id, task_id, position, label, status, payload, created_at,"
               " expires_at, completed_at")


class InteractionRepo:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # signals ---------------------------------------------------------------------------
    async def waiting_signals(self, tenant: str, run_id: str) -> int:
        """Messages in the run's inbox that no wait has taken yet."""
        n: int = await self._pool.fetchval(
            "SELECT count(*) FROM run_inbox WHERE tenant_id = $1 AND run_id = $2"
            " AND status = 'pending'", tenant, run_id)
        return n

    async def status_and_waiting(self, tenant: str, run_id: str) -> tuple[str, int] | None:
        """The run's status and its inbox's waiting count in one round trip (None: no run)."""
        row = await self._pool.fetchrow(
            "SELECT r.status, (SELECT count(*) FROM run_inbox i WHERE i.tenant_id = $1"
            " AND i.run_id = $2 AND i.status = 'pending') AS waiting"
            " FROM runs r WHERE r.tenant_id = $1 AND r.id = $2", tenant, run_id)
        return None if row is None else (row["status"], int(row["waiting"]))

    async def inbox(self, tenant: str, run_id: str, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT id, seq, kind, name, status, task_id, position, sent_at, delivered_at"
            " FROM run_inbox WHERE tenant_id = $1 AND run_id = $2 ORDER BY seq DESC LIMIT $3",
            tenant, run_id, limit)
        return rows

    # state -------------------------------------------------------------------------------
    async def state(self, tenant: str, run_id: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            "SELECT state, task_id, position, updated_at FROM run_state"
            " WHERE tenant_id = $1 AND run_id = $2", tenant, run_id)

    # waitpoints ----------------------------------------------------------------------------
    async def signing_keys(self) -> list[bytes]:
        """The server's waitpoint key, made on first use and shared by every API process."""
        await self._pool.execute(
            "INSERT INTO waitpoint_keys (name, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            WAITPOINT_KEY_NAME, secrets.token_bytes(32))
        secret = await self._pool.fetchval(
            "SELECT secret FROM waitpoint_keys WHERE name = $1", WAITPOINT_KEY_NAME)
        return [bytes(secret)]

    async def create_waitpoint(self, wp: Waitpoint) -> Waitpoint:
        """Insert it, or return the one already made for this task and position."""
        row = await self._pool.fetchrow(
            f"WITH made AS (INSERT INTO waitpoints ({_WP_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, 'pending', NULL, $7, $8, NULL)"
            f" ON CONFLICT (id) DO NOTHING RETURNING {_WP_COLUMNS})"
            f" SELECT {_WP_COLUMNS} FROM made UNION ALL"
            f" SELECT {_WP_COLUMNS} FROM waitpoints WHERE id = $1 LIMIT 1",
            wp.id, wp.tenant, wp.run_id, wp.task_id, wp.position, wp.label, wp.created_at,
            wp.expires_at)
        return _waitpoint(row)

    async def waitpoint(self, waitpoint_id: str, tenant: str | None = None) -> Waitpoint | None:
        """One waitpoint; with `tenant`, only that tenant's."""
        if tenant is None:
            row = await self._pool.fetchrow(
                f"SELECT {_WP_COLUMNS} FROM waitpoints WHERE id = $1", waitpoint_id)
        else:
            row = await self._pool.fetchrow(
                f"SELECT {_WP_COLUMNS} FROM waitpoints WHERE id = $1 AND tenant_id = $2",
                waitpoint_id, tenant)
        return None if row is None else _waitpoint(row)

    async def complete_waitpoint(
        self, waitpoint_id: str, payload: bytes, by: str, now: datetime
    ) -> Waitpoint | None:
        """Mark it completed if it is pending and not expired; None when it was not."""
        row = await self._pool.fetchrow(
            "UPDATE waitpoints SET status = 'completed', payload = $2, completed_at = $3,"
            " completed_by = $4 WHERE id = $1 AND status = 'pending' AND expires_at > $3"
            f" RETURNING {_WP_COLUMNS}", waitpoint_id, payload, now, by)
        return None if row is None else _waitpoint(row)

    async def uncomplete_waitpoint(self, waitpoint_id: str, completed_at: datetime) -> None:
        """Undo a completion whose command could not be published (the caller may retry)."""
        await self._pool.execute(
            "UPDATE waitpoints SET status = 'pending', payload = NULL, completed_at = NULL,"
            " completed_by = NULL WHERE id = $1 AND status = 'completed' AND completed_at = $2",
            waitpoint_id, completed_at)

    async def waitpoints(self, tenant: str, *, run_id: str | None = None,
                         pending_only: bool = False) -> list[Waitpoint]:
        conds = ["tenant_id = $1"]
        args: list[Any] = [tenant]
        if run_id is not None:
            args.append(run_id)
            conds.append(f"run_id = ${len(args)}")
        if pending_only:
            conds.append("status = 'pending' AND expires_at > now()")
        rows = await self._pool.fetch(
            f"SELECT {_WP_COLUMNS} FROM waitpoints WHERE {' AND '.join(conds)}"
            f" ORDER BY created_at DESC LIMIT {WAITPOINTS_LISTED}", *args)
        return [_waitpoint(r) for r in rows]

    # forks -----------------------------------------------------------------------------------
    async def durable_steps(self, tenant: str, task_id: str, before: int) -> list[DurableStep]:
        """A durable task's completed log entries at positions 0 .. before-1, but for the
        waitpoints it made: a waitpoint belongs to its run, so a fork makes its own."""
        rows = await self._pool.fetch(
            "SELECT position, kind, spec, result FROM durable_log WHERE tenant_id = $1"
            " AND task_id = $2 AND position >= 0 AND position < $3 AND status = 'done'"
            " AND kind <> 'waitpoint' ORDER BY position", tenant, task_id, before)
        return [DurableStep(position=r["position"], kind=r["kind"], spec=bytes(r["spec"]),
                            result=bytes(r["result"] or b"null"), done=True) for r in rows]

    async def record_fork(self, tenant: str, run_id: str, forked_from: str, from_task: str,
                          from_step: int | None) -> None:
        await self._pool.execute(
            "INSERT INTO run_forks (tenant_id, run_id, forked_from, from_task, from_step)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            tenant, run_id, forked_from, from_task, from_step)

    async def fork_links(self, tenant: str, run_id: str) -> ForkLinks:
        """Where the run was forked from (if it was), and the runs forked from it."""
        rows = await self._pool.fetch(
            "(SELECT 'from' AS side, forked_from AS run, from_task, from_step, created_at"
            "  FROM run_forks WHERE tenant_id = $1 AND run_id = $2)"
            " UNION ALL (SELECT 'to', run_id, from_task, from_step, created_at FROM run_forks"
            "  WHERE tenant_id = $1 AND forked_from = $2 ORDER BY created_at LIMIT 100)",
            tenant, run_id)
        links = ForkLinks()
        for r in rows:
            if r["side"] == "from":
                links.forked_from, links.from_task = r["run"], r["from_task"]
                links.from_step = r["from_step"]
            else:
                links.forks.append(r["run"])
        return links
