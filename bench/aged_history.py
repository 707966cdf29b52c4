"""The history `make bench-aged` measures on: finished no-op runs, bulk-loaded.

Running a million runs through the engine takes as long as the stack needs for them (an hour
on this machine); COPY takes seconds. The rows are the ones the scheduler writes for a
one-task run that succeeded on its first attempt — runs, tasks, task_attempts and three
run_history rows (trigger, started and completed batches) — and the OLAP store gets the rows
the replicator derives from the same transitions. tests/integration/test_bench_aged.py runs
such a run through the engine and the store and checks the bulk-loaded rows against it.

The history tenant is fixed, so a second `make bench-aged` tops it up instead of doubling it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from libs.common import olap
from libs.common.db import HistoryEvent
from libs.common.messages import RunStateChanged, TaskStateChanged
from libs.common.olap import OlapBackend
from libs.common.specs import TaskSpec, WorkflowSpec, content_hash
from services.replicator import rows as olap_rows
from services.scheduler.model import task_id_for

HISTORY_TENANT = "bench-aged-history"
WORKFLOW = "aged-noop"
SPEC = WorkflowSpec(name=WORKFLOW, tasks=[TaskSpec(name="noop")])
VERSION_ID = f"wv_{HISTORY_TENANT}_{content_hash(SPEC)[:12]}"
INPUT = b'{"i":0}'
OUTPUT = b'{"ok":1}'
WORKER = "aged-history-worker"
STARTED_AFTER_MS = 3
FINISHED_AFTER_MS = 5
_JSON = msgspec.json.Encoder()
_MSGPACK = msgspec.msgpack.Encoder()

RUN_COLUMNS = ["tenant_id", "id", "workflow", "version_id", "status", "priority", "input",
               "metadata", "additional", "source", "generation", "created_at", "finished_at",
               "traceparent", "parent_run_id", "parent_task_id", "parent_task", "depth"]
TASK_COLUMNS = ["tenant_id", "id", "run_id", "name", "action", "status", "attempt", "failures",
                "worker_id", "output", "priority", "queued_at", "started_at", "finished_at",
                "not_before", "created_at"]
ATTEMPT_COLUMNS = ["tenant_id", "task_id", "attempt", "status", "worker_id", "error",
                   "started_at", "finished_at", "created_at"]
HISTORY_COLUMNS = ["tenant_id", "run_id", "ts", "events"]


@dataclass(frozen=True, slots=True)
class Finished:
    """One finished run of the history: its id and when it was created."""

    run_id: str
    created: datetime

    @property
    def task_id(self) -> str:
        return task_id_for(self.run_id, "noop")

    def at(self, after_ms: int) -> datetime:
        return self.created + timedelta(milliseconds=after_ms)


def _history_events(run: Finished, task: str) -> list[tuple[datetime, list[HistoryEvent]]]:
    """The run_history rows of the three batches the run went through."""
    def ev(kind: str, *, on_task: bool = True, detail: Any = None) -> HistoryEvent:
        if not on_task:
            return HistoryEvent(kind, detail=detail)
        return HistoryEvent(kind, task, "noop", 0, detail)

    return [
        (run.created, [ev("run.created", on_task=False, detail={"source": "api"}),
                       ev("task.queued"), ev("task.assigned")]),
        (run.at(STARTED_AFTER_MS), [ev("task.running")]),
        (run.at(FINISHED_AFTER_MS), [ev("task.succeeded"),
                                     ev("run.succeeded", on_task=False)]),
    ]


def pg_rows(run: Finished, tenant: str = HISTORY_TENANT) -> dict[str, list[tuple[Any, ...]]]:
    """Rows per table for one finished run, in the *_COLUMNS order."""
    task = run.task_id
    started, finished = run.at(STARTED_AFTER_MS), run.at(FINISHED_AFTER_MS)
    priority = SPEC.default_priority
    return {
        "runs": [(tenant, run.run_id, WORKFLOW, VERSION_ID, "SUCCEEDED", priority, INPUT, "{}",
                  _MSGPACK.encode({}), "api", 0, run.created, finished, None, None, None, None,
                  0)],
        "tasks": [(tenant, task, run.run_id, "noop", f"{WORKFLOW}:noop", "SUCCEEDED", 0, 0,
                   WORKER, OUTPUT, priority, run.created, started, finished, None, run.created)],
        "task_attempts": [(tenant, task, 0, "SUCCEEDED", WORKER, None, started, finished,
                           run.created)],
        "run_history": [(tenant, run.run_id, ts, _JSON.encode(events).decode())
                        for ts, events in _history_events(run, task)],
    }


def olap_row_sets(run: Finished, tenant: str = HISTORY_TENANT) -> dict[str, list[olap.Row]]:
    """What the replicator stores for the run's transitions."""
    created = int(run.created.timestamp() * 1000)
    started, finished = created + STARTED_AFTER_MS, created + FINISHED_AFTER_MS
    def change(state: str, ts_ms: int, worker: str = WORKER, started_ms: int = 0) -> TaskStateChanged:
        return TaskStateChanged(tenant=tenant, run_id=run.run_id, task_id=run.task_id,
                                task_name="noop", workflow=WORKFLOW, attempt=0, state=state,
                                ts_ms=ts_ms, worker_id=worker, queued_ms=created,
                                started_ms=started_ms)

    changes = [
        change("QUEUED", created, worker=""),
        change("ASSIGNED", created),
        change("RUNNING", started, started_ms=started),
        change("SUCCEEDED", finished, started_ms=started),
    ]
    run_changes = [
        RunStateChanged(tenant=tenant, run_id=run.run_id, workflow=WORKFLOW, status=status,
                        ts_ms=ts, created_ms=created)
        for status, ts in (("PENDING", created), ("RUNNING", started), ("SUCCEEDED", finished))
    ]
    return {
        olap.TASK_EVENTS: [olap_rows.task_event_row(c) for c in changes],
        olap.RUNS: [olap_rows.run_row(c) for c in run_changes],
    }


def finished_runs(first: int, count: int, total: int, days: float, now: datetime) -> Iterator[Finished]:
    """Runs `first`..`first+count` of `total`, spread evenly over the `days` before `now`."""
    span_ms = days * 86_400_000
    for k in range(first, first + count):
        created = now - timedelta(milliseconds=span_ms * (1 - k / total) + 3_600_000)
        yield Finished(f"h{k:08d}", created)


async def ensure_workflow(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING",
        HISTORY_TENANT,
    )
    await conn.execute(
        "INSERT INTO workflow_versions (id, tenant_id, name, hash, spec)"
        " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING",
        VERSION_ID, HISTORY_TENANT, WORKFLOW, content_hash(SPEC),
        _JSON.encode(SPEC).decode(),
    )


async def settle(pool: asyncpg.Pool) -> None:
    """Leave PostgreSQL as a stack that grew its history over days would be, not one that
    took it in a minute: vacuumed (autovacuum would otherwise start on the new rows during the
    measurement), analyzed, and with the load's dirty pages checkpointed (else the checkpoint
    it sets off writes them out while the latencies are taken, and every commit waits on the
    disk behind it). CHECKPOINT needs a superuser or pg_checkpoint; without, it is skipped."""
    async with pool.acquire() as conn:
        for table in ("runs", "tasks", "task_attempts", "run_history"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            print("bench-aged: no CHECKPOINT privilege; the load's writes may show", flush=True)


async def load(
    pool: asyncpg.Pool, backend: OlapBackend | None, total: int, days: float,
    chunk: int = 50_000,
) -> dict[str, float]:
    """Top the history tenant up to `total` finished runs; returns what it did and how fast."""
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        await ensure_workflow(conn)
        have: int = await conn.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $1", HISTORY_TENANT
        )
    now = datetime.now(UTC)
    added = 0
    olap_loaded: set[str] = set()
    for first in range(have, total, chunk):
        runs = list(finished_runs(first, min(chunk, total - first), total, days, now))
        tables: dict[str, list[tuple[Any, ...]]] = {}
        olap_tables: dict[str, list[olap.Row]] = {}
        for run in runs:
            for table, rows in pg_rows(run).items():
                tables.setdefault(table, []).extend(rows)
            if backend is not None:
                for table, orows in olap_row_sets(run).items():
                    olap_tables.setdefault(table, []).extend(orows)
        async with pool.acquire() as conn, conn.transaction():
            for table, columns in (("runs", RUN_COLUMNS), ("tasks", TASK_COLUMNS),
                                   ("task_attempts", ATTEMPT_COLUMNS),
                                   ("run_history", HISTORY_COLUMNS)):
                await conn.copy_records_to_table(table, records=tables[table], columns=columns)
        if backend is not None:
            for table, orows in olap_tables.items():
                await backend.insert(table, orows)
                olap_loaded.add(table)
        added += len(runs)
        print(f"bench-aged: history {first + len(runs):,}/{total:,} runs", flush=True)
    if added:
        await settle(pool)
        if backend is not None:  # the parts of many inserts merged now, not while measuring
            for table in sorted(olap_loaded):
                await backend.execute(f"OPTIMIZE TABLE {table} FINAL")
    return {"history_runs": float(max(have, total)), "history_added": float(added),
            "history_load_s": round(time.perf_counter() - t0, 1)}
