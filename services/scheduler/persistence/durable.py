"""Durable tasks' logs in PostgreSQL (engine/_durable.py decides them; migration 040).

`durable_log` holds every position of a durable task's log, `durable_event_waits` the event
conditions of its pending waits, which the matcher reads. `run_inbox` and `run_state`
(migration 070) hold what was sent to each run and the latest state it set (engine/_inbox.py).
"""

from __future__ import annotations

import asyncpg

from services.scheduler.effects import Effects
from services.scheduler.persistence.literals import MS, columns, ms
from services.scheduler.records import Entry, InboxItem

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
    if writes.inbox or writes.states:
        await _flush_inbox(conn, list(writes.inbox.values()), list(writes.states.values()))
    if not (writes.entries or writes.event_del or writes.event_put):
        return
    await conn.execute(
        _FLUSH_DURABLE,
        *columns(entries, "ttittbtbiii"),
        *columns(list(writes.event_del), "tti"),
        *columns(put, "ttiittti"),
    )


_FLUSH_INBOX = f"""
WITH inbox_rows AS (
    INSERT INTO run_inbox (tenant_id, run_id, id, seq, kind, name, payload, status, task_id,
                           position, sent_at, delivered_at)
    SELECT t, r, i, q, k, n, pl, st, tk, p, {MS.format("s")}, {MS.format("d")}
    FROM unnest($1::text::text[], $2::text::text[], $3::text::text[], $4::text::int[],
                $5::text::text[], $6::text::text[], $7::bytea[], $8::text::text[],
                $9::text::text[], $10::text::int[], $11::text::int8[], $12::text::int8[])
         AS x(t, r, i, q, k, n, pl, st, tk, p, s, d)
    ON CONFLICT (tenant_id, run_id, id) DO UPDATE SET
        status = EXCLUDED.status, task_id = EXCLUDED.task_id, position = EXCLUDED.position,
        delivered_at = EXCLUDED.delivered_at
)
INSERT INTO run_state (tenant_id, run_id, state, task_id, position, updated_at)
SELECT t, r, st, tk, p, {MS.format("u")}
FROM unnest($13::text::text[], $14::text::text[], $15::bytea[], $16::text::text[],
            $17::text::int[], $18::text::int8[]) AS x(t, r, st, tk, p, u)
ON CONFLICT (tenant_id, run_id) DO UPDATE SET
    state = EXCLUDED.state, task_id = EXCLUDED.task_id, position = EXCLUDED.position,
    updated_at = EXCLUDED.updated_at
"""


async def _flush_inbox(conn: asyncpg.Connection, inbox: list[InboxItem],
                       states: list[Entry]) -> None:
    await conn.execute(
        _FLUSH_INBOX,
        *columns([(i.tenant, i.run_id, i.id, i.seq, i.kind, i.name, i.payload, i.status,
                   i.task_id, i.position, i.sent_ms, i.delivered_ms) for i in inbox],
                 "tttittbttiii"),
        *columns([(e.tenant, e.run_id, e.spec, e.task_id, e.position, e.registered_ms)
                  for e in states], "ttbtii"),
    )


async def load_inbox(conn: asyncpg.Connection) -> list[InboxItem]:
    """What was sent to every run that has not ended, in the order received per run."""
    rows = await conn.fetch(
        "SELECT i.tenant_id, i.run_id, i.id, i.seq, i.kind, i.name, i.payload, i.status,"
        " i.task_id, i.position, i.sent_at, i.delivered_at FROM run_inbox i"
        " JOIN runs r ON r.tenant_id = i.tenant_id AND r.id = i.run_id"
        " WHERE r.status IN ('PENDING', 'RUNNING')"
        " ORDER BY i.tenant_id, i.run_id, i.seq"
    )
    return [
        InboxItem(
            tenant=r["tenant_id"], run_id=r["run_id"], id=r["id"], seq=r["seq"], kind=r["kind"],
            name=r["name"], payload=bytes(r["payload"]), status=r["status"],
            sent_ms=ms(r["sent_at"]) or 0, task_id=r["task_id"], position=r["position"],
            delivered_ms=ms(r["delivered_at"]),
        )
        for r in rows
    ]


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
