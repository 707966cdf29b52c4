"""The runs' tables in PostgreSQL: load the active runs, write a batch's effects.

Runs, tasks, attempts, history, stored timers and the outbox. The batch's durable log rows
are durable.py's, its fair-scheduling rows fairness.py's; batch.py writes all three in the
batch's one transaction.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from libs.common.db import HistoryEvent
from libs.common.jetstream import Outgoing
from libs.common.messages import TaskError
from libs.common.specs import WorkflowSpec
from services.scheduler.effects import Effects
from services.scheduler.model import Run, RunStatus, Task, TaskStatus, build_run
from services.scheduler.persistence.leases import Leases
from services.scheduler.persistence.literals import MS, columns, ints, ms, texts

_ADDITIONAL = msgspec.msgpack.Decoder(dict[str, bytes])
_ENC = msgspec.msgpack.Encoder()
_ERR = msgspec.json.Decoder(TaskError)
_HISTORY = msgspec.json.Encoder()


class SpecCache:
    """Workflow versions are immutable, so their specs cache forever (bounded)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._specs: dict[str, WorkflowSpec] = {}
        self._max = max_entries

    async def get_many(self, conn: asyncpg.Connection, ids: set[str]) -> dict[str, WorkflowSpec]:
        missing = [i for i in ids if i not in self._specs]
        if missing:
            rows = await conn.fetch(
                "SELECT id, spec::text AS spec FROM workflow_versions WHERE id = ANY($1)", missing
            )
            if len(self._specs) + len(rows) > self._max:
                self._specs.clear()
            for row in rows:
                self._specs[row["id"]] = msgspec.json.decode(row["spec"], type=WorkflowSpec)
        return {i: self._specs[i] for i in ids if i in self._specs}


# One batch's effects in ONE statement: data-modifying CTEs run exactly once each, atomically
# with the rest, whether or not anything reads them. One round trip and an implicit transaction
# instead of BEGIN, up to eight statements and COMMIT — the commit latency is what a task
# waits for between being triggered and being dispatched. Empty arrays write nothing.
# Rows are unique per batch (Effects keys them), so no ON CONFLICT touches a row twice, and
# the timers deleted and upserted in one batch are disjoint (Effects.put_timer/del_timer).
# Columns are bound as array literals (literals.py).
_FLUSH = f"""
WITH
run_rows AS (
    INSERT INTO runs (tenant_id, id, workflow, version_id, status, priority, input, metadata,
                      additional, source, generation, created_at, finished_at, traceparent,
                      parent_run_id, parent_task_id, parent_task, depth)
    SELECT t, i, w, v, s, p, inp, md::jsonb, a, src, g, {MS.format("c")}, {MS.format("f")}, tp,
           pr, pt, pn, dp
    FROM unnest($1::text::text[], $2::text::text[], $3::text::text[], $4::text::text[],
                $5::text::text[], $6::text::smallint[], $7::bytea[], $8::text::text[],
                $9::bytea[], $10::text::text[], $11::text::int[], $12::text::int8[],
                $13::text::int8[], $14::text::text[],
                -- a child run's parent (migration 030): numbered last, after the outbox's
                $55::text::text[], $56::text::text[], $57::text::text[], $58::text::smallint[])
         AS x(t, i, w, v, s, p, inp, md, a, src, g, c, f, tp, pr, pt, pn, dp)
    ON CONFLICT (tenant_id, id, created_at) DO UPDATE SET
        status = EXCLUDED.status, generation = EXCLUDED.generation,
        finished_at = EXCLUDED.finished_at
),
task_rows AS (
    INSERT INTO tasks (tenant_id, id, run_id, name, action, status, attempt, failures,
                       worker_id, output, priority, queued_at, started_at, finished_at,
                       not_before, created_at)
    SELECT t, i, r, n, act, s, a, fl, w, o, p, {MS.format("q")}, {MS.format("st")},
           {MS.format("f")}, {MS.format("nb")}, {MS.format("c")}
    FROM unnest($15::text::text[], $16::text::text[], $17::text::text[], $18::text::text[],
                $19::text::text[], $20::text::text[], $21::text::int[], $22::text::int[],
                $23::text::text[], $24::bytea[], $25::text::smallint[], $26::text::int8[],
                $27::text::int8[], $28::text::int8[], $29::text::int8[], $30::text::int8[])
         AS x(t, i, r, n, act, s, a, fl, w, o, p, q, st, f, nb, c)
    ON CONFLICT (tenant_id, id, created_at) DO UPDATE SET
        status = EXCLUDED.status, attempt = EXCLUDED.attempt, failures = EXCLUDED.failures,
        worker_id = EXCLUDED.worker_id, output = EXCLUDED.output,
        queued_at = EXCLUDED.queued_at, started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at, not_before = EXCLUDED.not_before
),
attempt_rows AS (
    INSERT INTO task_attempts (tenant_id, task_id, attempt, status, worker_id, error,
                               started_at, finished_at, created_at)
    SELECT t, i, a, s, w, e::jsonb, {MS.format("st")}, {MS.format("f")}, {MS.format("c")}
    FROM unnest($31::text::text[], $32::text::text[], $33::text::int[], $34::text::text[],
                $35::text::text[], $36::text::text[], $37::text::int8[], $38::text::int8[],
                -- the task's created_at (migration 051), numbered after the parent columns
                $59::text::int8[])
         AS x(t, i, a, s, w, e, st, f, c)
    ON CONFLICT (tenant_id, task_id, attempt, created_at) DO UPDATE SET
        status = EXCLUDED.status, worker_id = EXCLUDED.worker_id,
        error = COALESCE(EXCLUDED.error, task_attempts.error),
        started_at = COALESCE(EXCLUDED.started_at, task_attempts.started_at),
        finished_at = EXCLUDED.finished_at
),
history_rows AS (
    INSERT INTO run_history (tenant_id, run_id, ts, events)
    SELECT t, r, {MS.format("ts")}, ev::json
    FROM unnest($39::text::text[], $40::text::text[], $41::text::int8[], $42::text::text[])
         WITH ORDINALITY AS x(t, r, ts, ev, n)
    ORDER BY n
),
timers_gone AS (
    DELETE FROM timers tm
    USING unnest($43::text::text[], $44::text::text[], $45::text::text[]) AS x(a, b, c)
    WHERE tm.tenant_id = x.a AND tm.task_id = x.b AND tm.kind = x.c
),
timers_set AS (
    INSERT INTO timers (tenant_id, task_id, kind, attempt, due_at)
    SELECT t, i, k, a, {MS.format("d")}
    FROM unnest($46::text::text[], $47::text::text[], $48::text::text[], $49::text::int[],
                $50::text::int8[]) AS x(t, i, k, a, d)
    ON CONFLICT (tenant_id, task_id, kind) DO UPDATE SET
        attempt = EXCLUDED.attempt, due_at = EXCLUDED.due_at
),
outbox_rows AS (
    INSERT INTO outbox (msg_id, subject, payload)
    SELECT m, s, p FROM unnest($51::text::text[], $52::text::text[], $53::bytea[])
         WITH ORDINALITY AS x(m, s, p, n)
    ORDER BY n
    ON CONFLICT (msg_id) DO NOTHING
),
outbox_sent AS (
    DELETE FROM outbox WHERE msg_id = ANY($54::text::text[])
)
-- The fence (migration 060): raises unless this scheduler still holds every partition whose
-- state it has in memory, at the epochs it loaded them under; the whole statement then rolls
-- back, whatever the CTEs above wrote.
SELECT ratchet_fence($60::text, $61::integer[], $62::bigint[])
"""


async def flush(
    conn: asyncpg.Connection, fx: Effects, published: list[str], owner: str, leases: Leases
) -> None:
    """Write one batch's effects; `published` outbox ids from earlier batches are deleted.

    One statement (see _FLUSH): atomic on its own, or part of the caller's transaction. It
    raises `Fenced` (and writes nothing) unless `owner` still holds `leases`.
    """
    run_rows = [
        (
            r.tenant, r.id, r.workflow, r.version_id, r.status.value, r.priority, r.input,
            msgspec.json.encode(r.metadata).decode(), _ENC.encode(r.additional), r.source,
            r.generation, r.created_ms, r.finished_ms, r.traceparent,
        )
        for r in fx.runs.values()
    ]
    # In run_rows' order; parameters $55.. so the columns above keep their numbers.
    parent_rows = [
        (r.parent_run_id, r.parent_task_id, r.parent_task, r.depth) for r in fx.runs.values()
    ]
    task_rows = [
        (
            t.tenant, t.id, t.run_id, t.name, t.action, t.status.value, t.attempt,
            t.failures, t.worker_id, t.output, t.priority, t.queued_ms,
            t.started_ms, t.finished_ms, t.not_before_ms, t.created_ms,
        )
        for t in fx.tasks.values()
    ]
    attempt_rows = [
        (
            a.tenant, a.task_id, a.attempt, a.status, a.worker_id,
            a.error.decode() if a.error else None, a.started_ms, a.finished_ms,
        )
        for a in fx.attempts.values()
    ]
    by_run: dict[tuple[str, str], list[HistoryEvent]] = {}
    first_ts: dict[tuple[str, str], int] = {}
    for h in fx.history:
        key = (h.tenant, h.run_id)
        if key not in by_run:
            by_run[key] = []
            first_ts[key] = h.ts_ms
        by_run[key].append(HistoryEvent(
            h.kind, h.task_id, h.task_name, h.attempt,
            msgspec.Raw(h.detail) if h.detail else None,
        ))
    history_rows = [
        (tenant, run_id, first_ts[(tenant, run_id)], _HISTORY.encode(events).decode())
        for (tenant, run_id), events in by_run.items()
    ]
    gone = [(*k,) for k in fx.timers_del]
    due = [(*k, *v) for k, v in fx.timers_put.items()]
    outbox = [(o.msg_id, o.subject, o.payload) for o in fx.outbox]
    await conn.execute(
        _FLUSH,
        *columns(run_rows, "tttttibtbtiiit"),
        *columns(task_rows, "ttttttiitbiiiiii"),
        *columns(attempt_rows, "ttitttii"),
        *columns(history_rows, "ttit"),
        *columns(gone, "ttt"),
        *columns(due, "tttii"),
        *columns(outbox, "ttb"),
        texts(published),
        *columns(parent_rows, "ttti"),
        ints([a.created_ms for a in fx.attempts.values()]),
        owner, list(leases), list(leases.values()),
    )


async def pending_outbox(conn: asyncpg.Connection | asyncpg.Pool, limit: int) -> list[Outgoing]:
    rows = await conn.fetch(
        "SELECT msg_id, subject, payload FROM outbox ORDER BY seq LIMIT $1", limit
    )
    return [Outgoing(r["subject"], bytes(r["payload"]), r["msg_id"]) for r in rows]


async def existing_runs(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> set[str]:
    if not keys:
        return set()
    rows = await conn.fetch(
        "SELECT r.id FROM runs r JOIN unnest($1::text[], $2::text[]) AS x(t, i)"
        " ON r.tenant_id = x.t AND r.id = x.i",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    return {row["id"] for row in rows}


async def run_statuses(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> dict[str, str]:
    """Run id → status of the (tenant, run id) pairs that exist."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT r.id, r.status FROM runs r JOIN unnest($1::text[], $2::text[]) AS x(t, i)"
        " ON r.tenant_id = x.t AND r.id = x.i",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    return {row["id"]: row["status"] for row in rows}


async def load_runs(
    conn: asyncpg.Connection, specs: SpecCache, where: str, *args: object
) -> list[Run]:
    """Rebuild runs (and their tasks) selected by `where` over the runs table."""
    run_rows = await conn.fetch(
        "SELECT tenant_id, id, workflow, version_id, status, priority, input, metadata::text"
        " AS metadata, additional, source, generation, created_at, finished_at, traceparent,"
        " parent_run_id, parent_task_id, parent_task, depth"
        f" FROM runs WHERE {where}",
        *args,
    )
    if not run_rows:
        return []
    spec_by_id = await specs.get_many(conn, {r["version_id"] for r in run_rows})
    runs: dict[tuple[str, str], Run] = {}
    created: dict[tuple[str, str], datetime] = {}
    for row in run_rows:
        spec = spec_by_id.get(row["version_id"])
        if spec is None:
            continue
        run = Run(
            tenant=row["tenant_id"], id=row["id"], workflow=row["workflow"],
            version_id=row["version_id"], spec=spec, status=RunStatus(row["status"]),
            priority=row["priority"], input=bytes(row["input"]),
            created_ms=ms(row["created_at"]) or 0,
            metadata=msgspec.json.decode(row["metadata"]),
            additional=_ADDITIONAL.decode(row["additional"]) if row["additional"] else {},
            source=row["source"], generation=row["generation"],
            finished_ms=ms(row["finished_at"]), traceparent=row["traceparent"],
            parent_run_id=row["parent_run_id"], parent_task_id=row["parent_task_id"],
            parent_task=row["parent_task"], depth=row["depth"],
        )
        build_run(run)
        runs[(run.tenant, run.id)] = run
        created[(run.tenant, run.id)] = row["created_at"]
    # A run's tasks carry its created_at: with it the lookup reaches the run's day partition
    # only (migration 050), not every partition's index.
    task_rows = await conn.fetch(
        "SELECT t.*, a.error::text AS error FROM tasks t"
        " JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS x(tn, r, c)"
        " ON t.tenant_id = x.tn AND t.run_id = x.r AND t.created_at = x.c"
        " LEFT JOIN task_attempts a ON a.tenant_id = t.tenant_id AND a.task_id = t.id"
        " AND a.attempt = t.attempt AND a.created_at = t.created_at",
        [k[0] for k in runs], [k[1] for k in runs], [created[k] for k in runs],
    )
    for row in task_rows:
        run = runs[(row["tenant_id"], row["run_id"])]
        task = run.tasks.get(row["name"])
        if task is None:
            continue
        _restore_task(task, row)
    for run in runs.values():
        for task in run.tasks.values():
            if task.status == TaskStatus.PENDING:
                task.pending_parents = sum(
                    1 for p in set(task.spec.parents)
                    if run.tasks[p].status not in (TaskStatus.SUCCEEDED, TaskStatus.SKIPPED)
                )
    return list(runs.values())


def _restore_task(task: Task, row: asyncpg.Record) -> None:
    task.status = TaskStatus(row["status"])
    task.attempt = row["attempt"]
    task.failures = row["failures"]
    task.worker_id = row["worker_id"]
    task.output = bytes(row["output"]) if row["output"] is not None else None
    task.priority = row["priority"]
    task.queued_ms = ms(row["queued_at"])
    task.started_ms = ms(row["started_at"])
    task.finished_ms = ms(row["finished_at"])
    task.not_before_ms = ms(row["not_before"])
    if row["error"]:
        err = _ERR.decode(row["error"]) if row["error"] != "{}" else None
        task.last_error = err


async def load_timers(conn: asyncpg.Connection) -> list[tuple[str, str, str, int, int]]:
    rows = await conn.fetch("SELECT tenant_id, task_id, kind, attempt, due_at FROM timers")
    return [
        (r["tenant_id"], r["task_id"], r["kind"], r["attempt"], ms(r["due_at"]) or 0)
        for r in rows
    ]
