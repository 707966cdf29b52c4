"""Durable tasks' logs in PostgreSQL (engine/_durable.py decides them; migration 040).

`durable_log` holds every position of a durable task's log, `durable_event_waits` the event
conditions of its pending waits, which the matcher reads.
"""

from __future__ import annotations

import asyncpg

from services.scheduler.effects import Effects
from services.scheduler.persistence.literals import MS, columns, ms
from services.scheduler.records import Entry

# The batch's log entries and the event conditions the matcher reads, in one statement
# (like store.py's _FLUSH).
_FLUSH_DURABLE = f"""
WITH
log_rows AS (
    INSERT INTO durable_log (tenant_id, task_id, position, run_id, kind, spec, status, result,
                             deadline_at, registered_at, waiting_attempt)
    SELECT t, i, p, r, k, sp, st, res, {MS.format("d")}, {MS.format("reg")}, w
    FROM unnest($1::text::text[], $2::text::text[], $3::text::int[], $4::text::text[],
                $5::text::text[], $6::bytea[], $7::text::text[], $8::bytea[], $9::text::int8[],
                $10::text::int8[], $11::text::int[])
         AS x(t, i, p, r, k, sp, st, res, d, reg, w)
    ON CONFLICT (tenant_id, task_id, position) DO UPDATE SET
        status = EXCLUDED.status, result = EXCLUDED.result,
        waiting_attempt = EXCLUDED.waiting_attempt
),
waits_gone AS (
    DELETE FROM durable_event_waits w
    USING unnest($12::text::text[], $13::text::text[], $14::text::int[]) AS x(a, b, c)
    WHERE w.tenant_id = x.a AND w.task_id = x.b AND w.position = x.c
)
INSERT INTO durable_event_waits (tenant_id, task_id, position, idx, key, scope, expression,
                                 registered_at)
SELECT t, i, p, n, k, s, e, {MS.format("reg")}
FROM unnest($15::text::text[], $16::text::text[], $17::text::int[], $18::text::int[],
            $19::text::text[], $20::text::text[], $21::text::text[], $22::text::int8[])
     AS x(t, i, p, n, k, s, e, reg)
ON CONFLICT DO NOTHING
"""


async def flush(conn: asyncpg.Connection, fx: Effects) -> None:
    """Write the batch's durable rows (call inside the batch's transaction)."""
    writes = fx.durable
    if writes is None or writes.empty():
        return
    if writes.reset:  # replayed runs: their durable tasks start on a fresh log
        await conn.execute(
            "WITH gone AS (DELETE FROM durable_event_waits w USING unnest($1::text[], $2::text[])"
            " AS x(t, i) WHERE w.tenant_id = x.t AND w.task_id = x.i)"
            " DELETE FROM durable_log l USING unnest($1::text[], $2::text[]) AS x(t, i)"
            " WHERE l.tenant_id = x.t AND l.task_id = x.i",
            [k[0] for k in writes.reset], [k[1] for k in writes.reset],
        )
    entries = [
        (e.tenant, e.task_id, e.position, e.run_id, e.kind, e.spec, e.status, e.result,
         e.deadline_ms, e.registered_ms, e.waiting_attempt)
        for e in writes.entries.values()
    ]
    # An event condition recorded and completed in the same batch is never written.
    put = [w for w in writes.event_put if (w[0], w[1], w[2]) not in writes.event_del]
    await conn.execute(
        _FLUSH_DURABLE,
        *columns(entries, "ttittbtbiii"),
        *columns(list(writes.event_del), "tti"),
        *columns(put, "ttiittti"),
    )


async def load(conn: asyncpg.Connection) -> list[Entry]:
    """The logs of every task that has not ended, in position order."""
    rows = await conn.fetch(
        "SELECT l.tenant_id, l.task_id, l.run_id, l.position, l.kind, l.spec, l.status,"
        " l.result, l.deadline_at, l.registered_at, l.waiting_attempt FROM durable_log l"
        " JOIN tasks t ON t.tenant_id = l.tenant_id AND t.id = l.task_id"
        " WHERE t.status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT', 'SKIPPED')"
        " ORDER BY l.tenant_id, l.task_id, l.position"
    )
    return [
        Entry(
            tenant=r["tenant_id"], task_id=r["task_id"], run_id=r["run_id"],
            position=r["position"], kind=r["kind"], spec=bytes(r["spec"]), status=r["status"],
            result=bytes(r["result"]) if r["result"] is not None else None,
            registered_ms=ms(r["registered_at"]) or 0, deadline_ms=ms(r["deadline_at"]),
            waiting_attempt=r["waiting_attempt"],
        )
        for r in rows
    ]
