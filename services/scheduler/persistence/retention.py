"""Retention: the daily PostgreSQL table partitions of a run's tables, created ahead and
dropped once past retention. (Table partitions only: a *scheduler* partition, the share of
tenants one scheduler owns, is another thing altogether.)

Migrations 050 and 051 partition runs, tasks, task_attempts and run_history by time, one
partition per UTC day (`runs_pYYYYMMDD`, ..., plus `*_legacy` holding what existed before). The
scheduler keeps DAYS_AHEAD days of partitions ready (an insert past the newest one would fail
its batch) and, with RATCHET_RETENTION_DAYS set, drops the days that ended longer ago than
that: dropping a table frees its space at once and costs the hot path nothing, where deleting
a million rows would bloat the indexes every batch writes to.

A day that still holds an active run (a long durable sleep, a run waiting on a schedule) is
kept until its runs are finished. Dropped runs take their payload blobs with them: the
payload GC frees the blobs of runs whose rows are gone (libs/common/payloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

log = logging.getLogger(__name__)

DAYS_AHEAD = 14
# One maintainer at a time across schedulers (pg_try_advisory_xact_lock key).
_LOCK = 0x52415450  # "RATP"
# Dropping a partition locks its parent briefly; never queue the hot path behind it for long.
_DROP_LOCK_TIMEOUT = "2s"

# Partitioned by day: runs and tasks by created_at (migration 050), task_attempts by its
# task's created_at and run_history by ts (051). A day's partitions share their suffix.
TABLES = ("runs", "tasks", "task_attempts", "run_history")

_BOUNDS = """
SELECT c.relname AS name,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz
           AS upper_bound
FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
WHERE h.inhparent = $1::regclass
ORDER BY upper_bound
"""


@dataclass(frozen=True, slots=True)
class Maintenance:
    created: int
    dropped: list[str]
    kept_active: list[str]


async def ensure(conn: asyncpg.Connection, days_ahead: int = DAYS_AHEAD) -> int:
    """Create the missing daily partitions up to today + `days_ahead`; returns how many."""
    if days_ahead < 1:
        raise ValueError(f"days_ahead must be at least 1, got {days_ahead}")
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
            return 0  # another scheduler is at it
        made: int = await conn.fetchval("SELECT ratchet_ensure_partitions($1)", days_ahead)
    return made


async def drop_expired(
    conn: asyncpg.Connection, retention_days: int, now: datetime
) -> tuple[list[str], list[str]]:
    """Drop the partitions of days that ended `retention_days` before `now`, in all TABLES.

    A day whose runs partition still holds an active run is kept in every table. Returns
    (dropped, kept because of an active run), as partition names.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    cutoff = now - timedelta(days=retention_days)
    kept: list[str] = []
    for row in await conn.fetch(_BOUNDS, "runs"):
        name, upper = row["name"], row["upper_bound"]
        if upper is None or upper > cutoff:
            break  # ordered by bound: the rest are younger
        active = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {_ident(name)}"
            " WHERE status IN ('PENDING', 'RUNNING'))"
        )
        if active:
            kept.append(name)
    kept_days = {name.removeprefix("runs") for name in kept}
    dropped: list[str] = []
    # Runs last: a crash halfway leaves attempts or history without their run, never a run
    # without its tasks.
    for table in reversed(TABLES):
        for row in await conn.fetch(_BOUNDS, table):
            name, upper = row["name"], row["upper_bound"]
            if upper is None or upper > cutoff:
                break
            if name.removeprefix(table) in kept_days:
                continue
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK):
                    return dropped, kept  # another scheduler is at it
                await conn.execute(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'")
                await conn.execute(f"DROP TABLE IF EXISTS {_ident(name)}")
            dropped.append(name)
            log.info("retention: dropped partition %s (ended %s)", name, upper.isoformat())
    if kept:
        log.warning("retention: kept %s, which still hold active runs", ", ".join(kept))
    return dropped, kept


async def maintain(
    conn: asyncpg.Connection, retention_days: int, now: datetime
) -> Maintenance:
    """One round: partitions ahead, then retention (when set)."""
    created = await ensure(conn)
    dropped, kept = ([], []) if retention_days == 0 else await drop_expired(
        conn, retention_days, now
    )
    return Maintenance(created, dropped, kept)


async def maintain_every(
    pool: asyncpg.Pool, retention_days: int, stopping: asyncio.Event, interval_s: float
) -> None:
    """`maintain` every `interval_s` until `stopping` is set (the scheduler's background task)."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=interval_s)
        if stopping.is_set():
            return
        try:
            async with pool.acquire() as conn:
                await maintain(conn, retention_days, datetime.now(UTC))
        except Exception as exc:  # retried next round; the days ahead leave plenty of slack
            log.warning("partition maintenance failed: %r", exc)


def _ident(name: str) -> str:
    # Partition names come from pg_class and follow runs_pYYYYMMDD / *_legacy; quote anyway.
    return '"' + name.replace('"', '""') + '"'
