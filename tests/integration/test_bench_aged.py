"""`make bench-aged` bulk-loads history: its rows must be the ones the engine and the store
write for the same run, or the bench would measure a history that production never has."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from bench import aged_history as h
from libs.common.messages import RunStateChanged, TaskReport, TriggerRun, WorkerInfo
from services.replicator import rows as olap_rows
from services.scheduler.engine import Engine
from services.scheduler.persistence import store


def _normalized(value: Any) -> Any:
    if isinstance(value, memoryview):
        return bytes(value)
    return value


async def _select(conn: asyncpg.Connection, table: str, columns: list[str], key: str,
                  value: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(f"{c}::text" if c in ("metadata", "events", "error") else c for c in columns)
    rows = await conn.fetch(f"SELECT {cols} FROM {table} WHERE {key} = $1 ORDER BY 1, 2, 3", value)
    return [tuple(_normalized(v) for v in row.values()) for row in rows]


async def test_bulk_loaded_rows_are_what_the_engine_writes(
    new_database: Callable[[], str],
) -> None:
    conn = await asyncpg.connect(new_database())
    try:
        await h.ensure_workflow(conn)
        t0 = int(datetime.now(UTC).timestamp() * 1000)
        eng = Engine()
        changes: list[Any] = []

        async def batch(now_ms: int, apply: Callable[[], None]) -> None:
            eng.begin(now_ms)
            apply()
            fx = eng.finish()
            changes.extend(c for items in fx.bundled for c, _ in items)
            await store.flush(conn, fx, [], "", {})  # no leases to fence

        def start() -> None:
            eng.worker_seen(WorkerInfo(worker_id=h.WORKER, tenant=h.HISTORY_TENANT, name="w",
                                       dispatcher_id="d", actions=[f"{h.WORKFLOW}:noop"],
                                       slots=1, heartbeat_ms=t0))
            eng.trigger(h.HISTORY_TENANT, TriggerRun(run_id="engine-run", workflow=h.WORKFLOW,
                                                     version_id=h.VERSION_ID, input=h.INPUT),
                        h.SPEC)

        run = h.Finished("engine-run", datetime.fromtimestamp(t0 / 1000, UTC))
        task = run.task_id

        def report(kind: str, at_ms: int) -> Callable[[], None]:
            return lambda: eng.report(h.HISTORY_TENANT, TaskReport(
                kind=kind, task_id=task, attempt=0, worker_id=h.WORKER, ts_ms=at_ms,
                output=h.OUTPUT if kind == "completed" else None))

        await batch(t0, start)
        await batch(t0 + h.STARTED_AFTER_MS, report("started", t0 + h.STARTED_AFTER_MS))
        await batch(t0 + h.FINISHED_AFTER_MS, report("completed", t0 + h.FINISHED_AFTER_MS))

        expected = h.pg_rows(run)
        assert await _select(conn, "runs", h.RUN_COLUMNS, "id", run.run_id) == [
            tuple(_normalized(v) for v in expected["runs"][0])
        ]
        assert await _select(conn, "tasks", h.TASK_COLUMNS, "id", task) == expected["tasks"]
        assert await _select(conn, "task_attempts", h.ATTEMPT_COLUMNS, "task_id", task) == \
            expected["task_attempts"]
        history = await conn.fetch(
            "SELECT tenant_id, run_id, ts, events::text AS events FROM run_history"
            " WHERE run_id = $1 ORDER BY seq", run.run_id,
        )
        assert [(r["tenant_id"], r["run_id"], r["ts"], json.loads(r["events"])) for r in history] \
            == [(t, r, ts, json.loads(ev)) for t, r, ts, ev in expected["run_history"]]

        # The OLAP rows: what the replicator makes of the engine's transitions.
        olap_expected = h.olap_row_sets(run)
        task_rows = [olap_rows.task_event_row(c) for c in changes
                     if not isinstance(c, RunStateChanged)]
        run_rows = [olap_rows.run_row(c) for c in changes if isinstance(c, RunStateChanged)]
        key = msgspec.json.encode
        assert sorted(map(key, task_rows)) == sorted(map(key, olap_expected["ratchet.task_events"]))
        assert sorted(map(key, run_rows)) == sorted(map(key, olap_expected["ratchet.runs"]))
    finally:
        await conn.close()
