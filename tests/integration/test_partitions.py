"""Runs and tasks partitioned by day (migration 050): the hot path stays on its indexes and
its day, and retention drops whole days but never one holding an active run.

The queries checked are the real ones: every statement the scheduler's store and the API's
run reads send is captured with a query logger, then EXPLAINed with the same arguments.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bench import aged_history
from libs.common.messages import TriggerRun
from libs.common.specs import TaskSpec, WorkflowSpec
from services.api.repos.runs import RunRepo
from services.scheduler.engine import Engine
from services.scheduler.persistence import retention, store

SPEC = WorkflowSpec(name="wf", tasks=[TaskSpec(name="a"), TaskSpec(name="b", parents=["a"])])
HISTORY_RUNS = 3000


@pytest.fixture
async def pool(new_database: Callable[[], str]) -> AsyncIterator[tuple[asyncpg.Pool, list[Any]]]:
    """A fresh migrated database, and the statements sent through the pool."""
    logged: list[Any] = []

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(logged.append)

    p = await asyncpg.create_pool(new_database(), min_size=1, max_size=2, init=init)
    async with p.acquire() as conn:
        await conn.execute(
            "INSERT INTO workflow_versions (id, tenant_id, name, hash, spec)"
            " VALUES ('v', 't', 'wf', 'h', $1::jsonb)",
            json.dumps({"name": "wf", "tasks": [{"name": "a"}, {"name": "b", "parents": ["a"]}]}),
        )
    yield p, logged
    await p.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _history(conn: asyncpg.Connection, day: datetime) -> None:
    """Finished runs created on `day`: the rows `make bench-aged` loads (every table)."""
    tag = day.strftime("%Y%m%d")
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for k in range(HISTORY_RUNS):
        run = aged_history.Finished(f"old{tag}-{k}", day + timedelta(seconds=k))
        for table, table_rows in aged_history.pg_rows(run, tenant="t").items():
            rows.setdefault(table, []).extend(table_rows)
    columns = {"runs": aged_history.RUN_COLUMNS, "tasks": aged_history.TASK_COLUMNS,
               "task_attempts": aged_history.ATTEMPT_COLUMNS,
               "run_history": aged_history.HISTORY_COLUMNS}
    for table, table_rows in rows.items():
        await conn.copy_records_to_table(table, records=table_rows, columns=columns[table])
    await conn.execute("ANALYZE runs; ANALYZE tasks; ANALYZE task_attempts; ANALYZE run_history")


async def test_hot_path_queries_use_their_indexes_and_the_runs_day(
    pool: tuple[asyncpg.Pool, list[Any]],
) -> None:
    p, logged = pool
    now = datetime.now(UTC)
    async with p.acquire() as conn:
        await _history(conn, now - timedelta(days=2))
        await _history(conn, now + timedelta(days=2))  # another partition than today's runs
    # What the scheduler writes for a batch of triggers, then reads after a restart.
    eng = Engine()
    eng.begin(int(now.timestamp() * 1000))
    for i in range(5):
        eng.trigger("t", TriggerRun(run_id=f"r{i}", workflow="wf", version_id="v", input=b"{}"),
                    SPEC)
    fx = eng.finish()
    logged.clear()
    async with p.acquire() as conn:
        await store.flush(conn, fx, [], "", {})  # no leases to fence
        assert await store.existing_runs(conn, [("t", "r1"), ("t", "nope")]) == {"r1"}
        assert await store.run_statuses(conn, [("t", "r2")]) == {"r2": "PENDING"}
        runs = await store.load_runs(conn, store.SpecCache(), "status IN ('PENDING', 'RUNNING')")
        assert {r.id for r in runs} == {f"r{i}" for i in range(5)}
        assert await store.load_runs(conn, store.SpecCache(), "tenant_id = $1 AND id = $2",
                                     "t", "r3")
    repo = RunRepo(p)
    records = await repo.get("t", "r0")
    assert records is not None and len(records.tasks) == 2
    assert await repo.list_runs("t", "PENDING", None, 10)
    statements = [(q.query, q.args) for q in logged
                  if any(f" {table}" in q.query for table in retention.TABLES)]
    assert len(statements) >= 8

    async with p.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")  # tables this small would be scanned
        for query, args in statements:
            (plan,) = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args))
            scans = [n for n in _nodes(plan["Plan"]) if n["Node Type"] == "Seq Scan"
                     and n.get("Relation Name", "").startswith(retention.TABLES)]
            assert not scans, f"sequential scan of {scans[0]['Relation Name']} in: {query}"
        # Reloading a run's tasks touches the run's day only: the other days' partitions are
        # pruned at run time (never executed).
        load_tasks = next((q, a) for q, a in statements if "FROM tasks t JOIN unnest" in q)
        (plan,) = json.loads(await conn.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {load_tasks[0]}", *load_tasks[1]
        ))
        touched = {n["Relation Name"] for n in _nodes(plan["Plan"])
                   if n.get("Relation Name", "").startswith("tasks") and n.get("Actual Loops")}
        assert len(touched) == 1, touched


async def test_retention_drops_whole_days_but_not_one_with_an_active_run(
    pool: tuple[asyncpg.Pool, list[Any]],
) -> None:
    p, _ = pool
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    async with p.acquire() as conn:
        await _history(conn, today - timedelta(days=1))  # into the legacy partition
        for day, run_id, status in ((2, "busy", "RUNNING"), (3, "done", "SUCCEEDED"),
                                    (9, "young", "SUCCEEDED")):
            await conn.execute(
                "INSERT INTO runs (tenant_id, id, workflow, version_id, status, priority, input,"
                " created_at) VALUES ('t', $1, 'wf', 'v', $2, 2, '\\x'::bytea, $3)",
                run_id, status, today + timedelta(days=day),
            )
        # Eight days later, with a week of retention: day 2 and 3 are past, day 9 is not.
        dropped, kept = await retention.drop_expired(conn, 7, today + timedelta(days=11))
        def day(n: int) -> str:
            return "_p" + (today + timedelta(days=n)).strftime("%Y%m%d")

        assert kept == ["runs" + day(2)]
        for table in retention.TABLES:  # a day goes from every table, or from none
            assert {table + "_legacy", table + day(3)} <= set(dropped)
            assert table + day(2) not in dropped and table + day(9) not in dropped
        left = {r["id"] for r in await conn.fetch("SELECT id FROM runs")}
        assert left == {"busy", "young"}
        for table in ("tasks", "task_attempts", "run_history"):  # the legacy rows went too
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        # Creating partitions ahead never brings a dropped day back.
        assert await retention.ensure(conn) >= 0
        names = {r["relname"] for r in await conn.fetch("SELECT relname FROM pg_class")}
        assert not {t + day(3) for t in retention.TABLES} & names
        assert {t + day(2) for t in retention.TABLES} <= names


async def test_bad_retention_is_refused(pool: tuple[asyncpg.Pool, list[Any]]) -> None:
    p, _ = pool
    async with p.acquire() as conn:
        with pytest.raises(ValueError, match="retention_days"):
            await retention.drop_expired(conn, 0, datetime.now(UTC))
