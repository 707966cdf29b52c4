"""The batch's one write transaction: everything a batch changed, committed at once.

The service applies a batch to the engine, then calls `write_batch` before it acks the
batch's messages and relays its outbox. Nothing a batch writes goes anywhere else, so a
check that must commit with the batch or not at all belongs here, and only here.
"""

from __future__ import annotations

import asyncpg

from services.scheduler.effects import Effects
from services.scheduler.persistence import durable, store
from services.scheduler.persistence.fairness import FairnessStore
from services.scheduler.persistence.leases import Leases, fenced_errors
from services.scheduler.records import LimitDef, LimitId


async def write_batch(
    conn: asyncpg.Connection,
    fx: Effects,
    published: list[str],
    fairness: FairnessStore,
    limits: dict[LimitId, LimitDef],
    owner: str,
    leases: Leases,
) -> None:
    """Write one batch's effects in ONE transaction.

    Args:
        conn: the core loop's connection.
        fx: the batch's effects (`Engine.finish()`).
        published: outbox ids relayed since the last batch, deleted in the same write.
        fairness: writes holders, executing attempts and rate-limit starts (and re-checks
            those starts against every scheduler's, which may raise RateLimitConflict).
        limits: the rate-limit definitions those starts are re-checked against.
        owner, leases: this scheduler's instance id and the partition leases its in-memory
            state was loaded under. The write is fenced by them (store.flush's statement calls
            `ratchet_fence`): if any was lost or taken over, nothing is written and `Fenced`
            is raised.

    Most batches change only the runs' tables and the outbox: their write is store.flush's
    single statement, its own implicit transaction, one round trip instead of three. A
    batch that also changes fair-scheduling or durable rows writes all of it inside an
    explicit transaction. The fence is part of store.flush's statement, so it covers both.
    """
    with fenced_errors():
        if fx.fairness_empty() and fx.durable_empty():
            await store.flush(conn, fx, published, owner, leases)  # one statement
            return
        async with conn.transaction():
            await store.flush(conn, fx, published, owner, leases)
            await fairness.flush(conn, fx, limits)
            await durable.flush(conn, fx)
