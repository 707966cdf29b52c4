"""The replicator end to end: runs and events land in chDB, backfill, tenant-scoped analytics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from ratchet import Context, Ratchet

from libs.common import db, olap, tokens
from libs.common.subjects import Header, evt
from services.replicator.service import ReplicatorService
from tests.integration.conftest import Stack, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Holder:
    """The module's replicator; the backfill test swaps it for one on an empty store."""

    service: ReplicatorService


def _replicator(stack: Stack, data_dir: Path) -> ReplicatorService:
    settings = msgspec.structs.replace(stack.settings, data_dir=str(data_dir), clickhouse_url="")
    return ReplicatorService(settings, linger_s=0.05, lag_interval_s=0.2)


@pytest.fixture(scope="module")
async def replicator(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Holder]:
    holder = Holder()
    holder.service = _replicator(stack, tmp_path_factory.mktemp("olap"))
    await holder.service.start()
    try:
        yield holder
    finally:
        await holder.service.stop()


async def _rows(rep: ReplicatorService, sql: str, tenant: str) -> list[dict[str, Any]]:
    assert rep.backend is not None
    return await rep.backend.query(sql, {"tenant": tenant})


async def _run_workflow(client: Ratchet, start_worker: Any) -> str:
    wf = client.workflow("olap-wf")

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:
        return {"n": 1}

    @wf.task(parents=[first])
    async def second(input: dict, ctx: Context) -> dict:
        return {"n": ctx.parent_output(first)["n"] + 1}

    await start_worker("w-olap", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({"x": 1})
    await ref.aio_result(30)
    return ref.run_id


RUN_SQL = f"SELECT run_id, workflow, status FROM {olap.RUNS} FINAL WHERE tenant = {{tenant:String}}"
TASK_SQL = (
    f"SELECT task_name, state FROM {olap.TASK_EVENTS} FINAL WHERE tenant = {{tenant:String}}"
    " ORDER BY task_name, ts"
)
EVENT_SQL = f"SELECT key, event_id, scope, payload FROM {olap.EVENTS} FINAL WHERE tenant = {{tenant:String}}"


async def test_run_and_events_are_replicated(
    replicator: Holder, stack: Stack, client: Ratchet, tenant: str, start_worker: Any
) -> None:
    rep = replicator.service
    run_id = await _run_workflow(client, start_worker)
    nc = await nats.connect(stack.settings.nats_url)
    try:
        await nc.jetstream().publish(
            evt(tenant, "doc.uploaded"), b'{"doc": 1}',
            headers={Header.EVENT_ID.value: "ev-1", Header.SCOPE.value: "team-a",
                     Header.MSG_ID.value: f"evt:{tenant}:ev-1"},
        )
        # Somebody else's unreadable match outcome must not block the consumer.
        await nc.jetstream().publish(f"task.{tenant}.match", b"\xc1 not msgpack")
    finally:
        await nc.close()

    async def replicated() -> bool:
        runs = await _rows(rep, RUN_SQL, tenant)
        states = [(r["task_name"], r["state"]) for r in await _rows(rep, TASK_SQL, tenant)]
        events = await _rows(rep, EVENT_SQL, tenant)
        return (
            runs == [{"run_id": run_id, "workflow": "olap-wf", "status": "SUCCEEDED"}]
            and ("first", "SUCCEEDED") in states and ("second", "SUCCEEDED") in states
            and events == [{"key": "doc.uploaded", "event_id": "ev-1", "scope": "team-a",
                            "payload": '{"doc": 1}'}]
        )

    await eventually(replicated)
    states = {r["state"] for r in await _rows(rep, TASK_SQL, tenant) if r["task_name"] == "first"}
    assert states == {"QUEUED", "ASSIGNED", "RUNNING", "SUCCEEDED"}  # one row per transition

    async def caught_up() -> bool:
        return all(v == 0 for v in (await rep.lag()).values())

    await eventually(caught_up)


async def test_analytics_endpoints_are_tenant_scoped(
    replicator: Holder, stack: Stack, client: Ratchet, tenant: str, start_worker: Any
) -> None:
    run_id = await _run_workflow(client, start_worker)
    rep = replicator.service

    async def replicated() -> bool:
        return [r["status"] for r in await _rows(rep, RUN_SQL, tenant)] == ["SUCCEEDED"]

    await eventually(replicated)
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        other_token = await tokens.ensure_tenant(pool, "t" + uuid.uuid4().hex[:12])
    finally:
        await pool.close()
    mine = {"authorization": f"Bearer {stack.tokens[tenant]}"}  # type: ignore[attr-defined]
    theirs = {"authorization": f"Bearer {other_token}"}
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        runs = (await http.get("/analytics/runs", headers=mine)).json()
        assert runs["counts"] == [{"workflow": "olap-wf", "status": "SUCCEEDED", "runs": 1}]
        tasks = (await http.get("/analytics/tasks", headers=mine)).json()
        assert tasks["overall"]["finished"] == 2 and tasks["overall"]["failed"] == 0
        assert tasks["overall"]["duration_ms"]["p95"] is not None
        assert [w["workflow"] for w in tasks["workflows"]] == ["olap-wf"]
        throughput = (await http.get("/analytics/throughput", headers=mine)).json()
        assert sum(m["succeeded"] for m in throughput["minutes"]) == 2
        # Another tenant sees nothing of it, and cannot ask for it.
        assert (await http.get("/analytics/runs", headers=theirs)).json()["counts"] == []
        sneaky = await http.get("/analytics/runs", headers=theirs, params={"tenant": tenant})
        assert sneaky.json()["counts"] == []
        assert (await http.get("/analytics/runs")).status_code == 401
        bad = await http.get("/analytics/runs", headers=mine,
                             params={"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"})
        assert bad.status_code == 400
    assert run_id


async def test_backfill_from_stream_start_on_empty_store(
    replicator: Holder, stack: Stack, tmp_path: Path, client: Ratchet, tenant: str,
    start_worker: Any,
) -> None:
    run_id = await _run_workflow(client, start_worker)
    old = replicator.service

    async def replicated(rep: ReplicatorService) -> bool:
        return [r["run_id"] for r in await _rows(rep, RUN_SQL, tenant)] == [run_id]

    await eventually(lambda: replicated(old))
    # The durables now point past this run; a replicator on an empty store must replay it.
    await old.stop()
    fresh = _replicator(stack, tmp_path / "fresh")
    replicator.service = fresh
    await fresh.start()
    await eventually(lambda: replicated(fresh))
    states = {r["state"] for r in await _rows(fresh, TASK_SQL, tenant)}
    assert {"QUEUED", "RUNNING", "SUCCEEDED"} <= states
