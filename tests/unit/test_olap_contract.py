"""One contract for every OLAP backend available here: chDB directly, and clickhouse-connect
(the server code path) over its in-process chDB interface. chDB opens one data path per
process, so each test opens its backend on a fresh directory and closes it afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from libs.common import olap
from libs.common.messages import RunStateChanged, TaskError, TaskStateChanged
from libs.common.olap import ChdbBackend, ClickHouseBackend, OlapBackend, OlapError
from services.api.repos import analytics
from services.replicator import rows

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC


def _chdb(path: Path) -> OlapBackend:
    return ChdbBackend(path)


def _clickhouse_connect(path: Path) -> OlapBackend:
    import clickhouse_connect

    return ClickHouseBackend(clickhouse_connect.get_client(interface="chdb", path=str(path)))


@pytest.fixture(params=[_chdb, _clickhouse_connect], ids=["chdb", "clickhouse-connect"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OlapBackend]:
    factory: Callable[[Path], OlapBackend] = request.param
    store = factory(tmp_path / "chdb")
    await olap.ensure_schema(store)
    try:
        yield store
    finally:
        await store.close()


def task_changes(tenant: str, workflow: str, n: int, *, failed: int = 0) -> list[TaskStateChanged]:
    """n attempts that each queue, wait 10*i ms, run 100+i ms, and succeed (or fail)."""
    out: list[TaskStateChanged] = []
    for i in range(n):
        queued, started = T0 + i, T0 + i + 10 * i
        end = started + 100 + i
        base = dict(tenant=tenant, run_id=f"r{i}", task_id=f"task{i}", task_name="step",
                    workflow=workflow, attempt=0, queued_ms=queued)
        state = "FAILED" if i < failed else "SUCCEEDED"
        out += [
            TaskStateChanged(**base, state="QUEUED", ts_ms=queued),  # type: ignore[arg-type]
            TaskStateChanged(**base, state="RUNNING", ts_ms=started, started_ms=started),  # type: ignore[arg-type]
            TaskStateChanged(  # type: ignore[arg-type]
                **base, state=state, ts_ms=end, started_ms=started,
                error=TaskError(type="Boom", message="x") if state == "FAILED" else None,
            ),
        ]
    return out


async def seed_tasks(store: OlapBackend, changes: list[TaskStateChanged]) -> None:
    await store.insert(olap.TASK_EVENTS, [rows.task_event_row(c) for c in changes])


async def test_schema_is_idempotent(backend: OlapBackend) -> None:
    await olap.ensure_schema(backend)
    tables = await backend.query(
        "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
        {"db": olap.DATABASE},
    )
    names = {r["name"] for r in tables}
    assert {"task_events", "runs", "events", "match_outcomes", "task_stats_1m"} <= names


async def test_insert_and_parameterised_query(backend: OlapBackend) -> None:
    await seed_tasks(backend, task_changes("acme", "wf", 3))
    got = await backend.query(
        f"SELECT state, count() AS n, max(ts) AS last FROM {olap.TASK_EVENTS}"
        " WHERE tenant = {tenant:String} GROUP BY state ORDER BY state",
        {"tenant": "acme"},
    )
    assert [(r["state"], r["n"]) for r in got] == [("QUEUED", 3), ("RUNNING", 3), ("SUCCEEDED", 3)]
    assert isinstance(got[0]["n"], int)  # 64-bit integers come back as numbers on every backend
    assert await backend.query(
        f"SELECT 1 FROM {olap.TASK_EVENTS} WHERE tenant = {{tenant:String}}", {"tenant": "other"}
    ) == []


async def test_redelivered_rows_collapse(backend: OlapBackend) -> None:
    changes = task_changes("acme", "wf", 5)
    for _ in range(3):  # a batch redelivered twice after crashes between insert and ack
        await seed_tasks(backend, changes)
    final = await backend.query(
        f"SELECT count() AS n FROM {olap.TASK_EVENTS} FINAL WHERE tenant = {{tenant:String}}",
        {"tenant": "acme"},
    )
    assert final == [{"n": 15}]
    stats = await backend.query(
        f"SELECT state, uniqExactMerge(attempts) AS n FROM {olap.TASK_STATS_1M}"
        " WHERE tenant = {tenant:String} GROUP BY state ORDER BY state",
        {"tenant": "acme"},
    )
    assert [(r["state"], r["n"]) for r in stats] == [("QUEUED", 5), ("RUNNING", 5), ("SUCCEEDED", 5)]


async def test_run_rows_keep_the_latest_status(backend: OlapBackend) -> None:
    def change(status: str, ts: int) -> dict[str, object]:
        return rows.run_row(RunStateChanged(
            tenant="acme", run_id="r1", workflow="wf", status=status, ts_ms=ts, created_ms=T0,
        ))

    # RUNNING and SUCCEEDED in the same scheduler batch share a timestamp; inserted out of order.
    await backend.insert(olap.RUNS, [change("SUCCEEDED", T0 + 5), change("RUNNING", T0 + 5)])
    await backend.insert(olap.RUNS, [change("PENDING", T0)])
    sql = f"SELECT status, duration_ms FROM {olap.RUNS} FINAL WHERE tenant = {{tenant:String}}"
    assert await backend.query(sql, {"tenant": "acme"}) == [{"status": "SUCCEEDED", "duration_ms": 5}]
    await backend.insert(olap.RUNS, [change("RUNNING", T0 + 50)])  # replayed later
    assert (await backend.query(sql, {"tenant": "acme"}))[0]["status"] == "RUNNING"


async def test_reads_cannot_write(backend: OlapBackend) -> None:
    with pytest.raises(OlapError):
        await backend.query(f"INSERT INTO {olap.RUNS} SELECT * FROM {olap.RUNS}")
    with pytest.raises(OlapError):
        await backend.query("SELECT 1; DROP TABLE ratchet.runs")
    with pytest.raises(OlapError):
        await backend.query("SELECT * FROM no_such_table")


async def test_analytics_queries_are_tenant_scoped(backend: OlapBackend) -> None:
    await seed_tasks(backend, task_changes("acme", "wf", 20, failed=2))
    await seed_tasks(backend, task_changes("evil", "wf", 7))
    params = olap.scope_to_tenant(
        analytics.TASK_LATENCY_SQL, {"start_ms": T0 - 60_000, "end_ms": T0 + 3_600_000,
                                     "tenant": "evil"}, "acme",
    )
    [row] = await backend.query(analytics.TASK_LATENCY_SQL, params)
    assert (row["finished"], row["failed"]) == (20, 2)
    p50, p95, p99 = row["duration_ms"]
    assert 100 <= p50 <= p95 <= p99 <= 119
    assert 0 <= row["wait_ms"][0] <= row["wait_ms"][1] <= 190
    minutes = await backend.query(analytics.THROUGHPUT_SQL, params)
    assert sum(m["succeeded"] for m in minutes) == 18
    assert sum(m["failed"] for m in minutes) == 2


async def test_answer_query_scopes_to_the_requesting_tenant(backend: OlapBackend) -> None:
    await seed_tasks(backend, task_changes("acme", "wf", 2))
    await seed_tasks(backend, task_changes("evil", "wf", 4))
    sql = f"SELECT count() AS n FROM {olap.TASK_EVENTS} FINAL WHERE tenant = {{tenant:String}}"
    request = msgspec.msgpack.encode({"sql": sql, "params": {"tenant": "evil"}, "tenant": "acme"})
    reply = olap.QUERY_REPLY_DECODER.decode(await olap.answer_query(backend, request))
    assert reply.rows == [{"n": 6}] and not reply.error
    unscoped = msgspec.msgpack.encode(
        {"sql": f"SELECT count() AS n FROM {olap.TASK_EVENTS}", "tenant": "acme"}
    )
    reply = olap.QUERY_REPLY_DECODER.decode(await olap.answer_query(backend, unscoped))
    assert "tenant" in reply.error and reply.rows == []
