"""Scheduler partition leases in PostgreSQL: membership, acquisition, renewal, hand-over,
and the fence every batch commit passes (migration 060, docs/scaling.md).

Why PostgreSQL and not a JetStream KV lease: the fence must be checked where the state is
committed. A lease kept in PostgreSQL is checked by the same transaction that writes the
batch (`ratchet_fence`), against one clock (the database's), so a scheduler that lost its
lease while paused cannot commit afterwards. A KV lease would still need its epoch copied
into PostgreSQL and compared there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

FENCED_SQLSTATE = "RTF01"

# partition -> epoch of the leases a scheduler holds
Leases = dict[int, int]


class Fenced(RuntimeError):
    """A commit was refused: this scheduler no longer holds a partition at the epoch it used."""


@contextlib.contextmanager
def fenced_errors() -> Iterator[None]:
    """Turn the fence's refusal (SQLSTATE RTF01) into `Fenced`."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == FENCED_SQLSTATE:
            raise Fenced(str(exc)) from exc
        raise


async def ensure_partitions(conn: asyncpg.Connection, count: int) -> None:
    """Create the lease rows of partitions 0..count-1 (once per cluster; idempotent)."""
    await conn.execute(
        "INSERT INTO scheduler_partitions (partition) SELECT generate_series(0, $1 - 1)"
        " ON CONFLICT (partition) DO NOTHING",
        count,
    )


async def heartbeat(
    conn: asyncpg.Connection, instance: str, ttl_s: float, host: str, pid: int
) -> list[str]:
    """Refresh this scheduler's membership; return the live members, sorted."""
    rows = await conn.fetch(
        """
        WITH me AS (
            INSERT INTO scheduler_members (instance, heartbeat_at, started_at, host, pid)
            VALUES ($1, clock_timestamp(), clock_timestamp(), $3, $4)
            ON CONFLICT (instance) DO UPDATE SET heartbeat_at = clock_timestamp()
            RETURNING instance
        )
        SELECT instance FROM scheduler_members
        WHERE heartbeat_at > clock_timestamp() - $2 * interval '1 second' AND instance <> $1
        UNION SELECT instance FROM me
        ORDER BY 1
        """,
        instance, ttl_s, host, pid,
    )
    return [r["instance"] for r in rows]


async def leave(conn: asyncpg.Connection, instance: str) -> None:
    """A graceful stop: hand every partition over at once and leave the member list."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE scheduler_partitions SET owner = NULL, expires_at = '-infinity'"
            " WHERE owner = $1",
            instance,
        )
        await conn.execute("DELETE FROM scheduler_members WHERE instance = $1", instance)


async def acquire(
    conn: asyncpg.Connection, instance: str, partitions: list[int], ttl_s: float
) -> Leases:
    """Take the listed partitions that are free (no owner, an expired lease, or a lease of this
    instance id's, left by an earlier incarnation), each with a new epoch, which fences
    whoever held it before. A partition whose old owner is committing right now (it holds the row's key
    share lock in its batch transaction) is skipped, not waited for: the next tick retries."""
    if not partitions:
        return {}
    rows = await conn.fetch(
        """
        WITH free AS (
            SELECT partition FROM scheduler_partitions
            WHERE partition = ANY($2::integer[])
              AND (owner IS NULL OR owner = $1 OR expires_at < clock_timestamp())
            FOR UPDATE SKIP LOCKED
        )
        UPDATE scheduler_partitions s
        SET owner = $1, epoch = s.epoch + 1, acquired_at = clock_timestamp(),
            expires_at = clock_timestamp() + $3 * interval '1 second'
        FROM free WHERE s.partition = free.partition
        RETURNING s.partition, s.epoch
        """,
        instance, partitions, ttl_s,
    )
    return {r["partition"]: r["epoch"] for r in rows}


async def renew(conn: asyncpg.Connection, instance: str, leases: Leases, ttl_s: float) -> Leases:
    """Extend the leases still held at their epochs; return those (the others are lost)."""
    if not leases:
        return {}
    rows = await conn.fetch(
        """
        UPDATE scheduler_partitions s
        SET expires_at = clock_timestamp() + $4 * interval '1 second'
        FROM unnest($2::integer[], $3::bigint[]) AS t(part, ep)
        WHERE s.partition = t.part AND s.epoch = t.ep AND s.owner = $1
          AND s.expires_at > clock_timestamp()
        RETURNING s.partition, s.epoch
        """,
        instance, list(leases), list(leases.values()), ttl_s,
    )
    return {r["partition"]: r["epoch"] for r in rows}


async def release(conn: asyncpg.Connection, instance: str, leases: Leases) -> None:
    """Hand the listed partitions over (their state is committed and no longer in memory)."""
    if leases:
        await conn.execute(
            """
            UPDATE scheduler_partitions s SET owner = NULL, expires_at = '-infinity'
            FROM unnest($2::integer[], $3::bigint[]) AS t(part, ep)
            WHERE s.partition = t.part AND s.epoch = t.ep AND s.owner = $1
            """,
            instance, list(leases), list(leases.values()),
        )


async def fence(conn: asyncpg.Connection, instance: str, leases: Leases) -> None:
    """Inside a batch transaction: raise `Fenced` unless every lease is still held."""
    with fenced_errors():
        await conn.fetchval(
            "SELECT ratchet_fence($1, $2::integer[], $3::bigint[])",
            instance, list(leases), list(leases.values()),
        )


async def owners(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every partition with its owner, epoch and whether the lease is live (status, tests)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT partition, owner, epoch, expires_at > clock_timestamp() AS live"
        " FROM scheduler_partitions ORDER BY partition"
    )
    return rows
