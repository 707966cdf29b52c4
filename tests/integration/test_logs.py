"""Task logs end to end: ctx.log / logging → dispatcher → LOG stream → replicator → ClickHouse
(chDB) → GET /runs/{id}/logs, GET /logs and r.runs.logs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from ratchet import Context, Ratchet

from libs.common import db, tokens
from services.replicator.service import ReplicatorService
from tests.integration.conftest import Stack, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _replicator(stack: Stack, data_dir: Path) -> ReplicatorService:
    settings = msgspec.structs.replace(stack.settings, data_dir=str(data_dir), clickhouse_url="")
    return ReplicatorService(settings, linger_s=0.05, lag_interval_s=0.2)


@pytest.fixture(scope="module")
async def replicator(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ReplicatorService]:
    """The log store in embedded mode: the API reads it through this replicator over NATS."""
    service = _replicator(stack, tmp_path_factory.mktemp("olap-logs"))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def _logs(client: Ratchet, run_id: str, count: int) -> list[dict[str, Any]]:
    """The run's log once it holds `count` lines (they reach the store asynchronously)."""
    found: list[dict[str, Any]] = []

    async def arrived() -> bool:
        nonlocal found
        found = await client.runs.aio_logs(run_id)
        return len(found) >= count

    await eventually(arrived, timeout_s=30)
    return found


async def _other_tenant(stack: Stack) -> dict[str, str]:
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        token = await tokens.ensure_tenant(pool, "t" + uuid.uuid4().hex[:12])
    finally:
        await pool.close()
    return {"authorization": f"Bearer {token}"}


async def test_logs_of_a_two_task_run_with_a_retry_are_complete_and_ordered(
    replicator: ReplicatorService, client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"logs-dag-{uuid.uuid4().hex[:6]}")

    @wf.task(retries=1, backoff_base=0.05)
    async def fetch(input: dict, ctx: Context) -> dict:
        ctx.log(f"fetch try {ctx.attempt}")
        if ctx.attempt == 0:
            ctx.log("flaky upstream", level="error")
            raise RuntimeError("flaky")
        ctx.log("fetched 3 pages", level="debug")
        return {"pages": 3}

    @wf.task(parents=[fetch])
    def summarize(input: dict, ctx: Context) -> dict:
        for i in range(3):
            ctx.log(f"summary line {i}", level="warning" if i == 2 else "info")
        return {}

    await start_worker("w-logs-dag", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    await ref.aio_result(60)
    # Read-your-writes: once the result is back, every line is readable at once (no polling).
    lines = await client.runs.aio_logs(ref.run_id)
    assert [(x["task"], x["attempt"], x["level"], x["message"]) for x in lines] == [
        ("fetch", 0, "info", "fetch try 0"),
        ("fetch", 0, "error", "flaky upstream"),
        ("fetch", 1, "info", "fetch try 1"),
        ("fetch", 1, "debug", "fetched 3 pages"),
        ("summarize", 0, "info", "summary line 0"),
        ("summarize", 0, "info", "summary line 1"),
        ("summarize", 0, "warning", "summary line 2"),
    ]
    assert all(x["ts"].endswith("+00:00") for x in lines)
    assert await client.runs.aio_logs(ref.run_id) == lines  # stored once, nothing more arrives


async def test_capture_logging_routes_records_inside_tasks(
    replicator: ReplicatorService, client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"logs-capture-{uuid.uuid4().hex[:6]}")
    user_log = logging.getLogger(f"user.code.{uuid.uuid4().hex[:6]}")
    user_log.setLevel(logging.DEBUG)

    @wf.task()
    def work(input: dict, ctx: Context) -> dict:  # a thread: the context travels with it
        user_log.info("loading %s", "model")
        user_log.warning("slow disk")
        ctx.log("direct")
        return {}

    @wf.task(parents=[work])
    async def after(input: dict, ctx: Context) -> dict:
        try:
            raise ValueError("kept")
        except ValueError:
            user_log.exception("handled")
        return {}

    await start_worker("w-logs-capture", workflows=[wf], slots=2, capture_logging=True)
    user_log.info("outside any task")
    ref = await wf.aio_run_no_wait({})
    await ref.aio_result(30)
    lines = await _logs(client, ref.run_id, 4)
    assert [(x["task"], x["level"], x["message"].splitlines()[0]) for x in lines] == [
        ("work", "info", "loading model"),
        ("work", "warning", "slow disk"),
        ("work", "info", "direct"),
        ("after", "error", "handled"),
    ]
    assert "ValueError: kept" in lines[-1]["message"]  # the traceback comes along


async def test_a_flooding_task_is_cut_at_the_cap_with_a_marker(
    replicator: ReplicatorService, client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"logs-cap-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def chatty(input: dict, ctx: Context) -> dict:
        for i in range(200):
            ctx.log(f"line {i} " + "x" * 100)
        return {}

    await start_worker("w-logs-cap", workflows=[wf], slots=1, log_max_lines=20, log_max_chars=50)
    ref = await wf.aio_run_no_wait({})
    await ref.aio_result(30)
    lines = await _logs(client, ref.run_id, 21)
    assert len(lines) == 21
    assert [x["message"].split(" ")[1] for x in lines[:20]] == [str(i) for i in range(20)]
    assert all(x["message"].endswith("cut at 50 characters") for x in lines[:20])
    assert lines[20]["level"] == "warning" and "truncated" in lines[20]["message"]


async def test_search_and_run_logs_are_tenant_scoped(
    replicator: ReplicatorService, stack: Stack, client: Ratchet, tenant: str,
    start_worker: Any,
) -> None:
    needle = f"needle-{uuid.uuid4().hex[:8]}"
    wf = client.workflow(f"logs-search-{uuid.uuid4().hex[:6]}")
    other_wf = client.workflow(f"logs-search-other-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def finder(input: dict, ctx: Context) -> dict:
        ctx.log(f"found the {needle.upper()} here")
        ctx.log("nothing to see")
        ctx.log("100% _literal_ wildcards")
        return {}

    @other_wf.task()
    async def elsewhere(input: dict, ctx: Context) -> dict:
        ctx.log(f"another {needle}")
        return {}

    await start_worker("w-logs-search", workflows=[wf, other_wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    other_ref = await other_wf.aio_run_no_wait({})
    await ref.aio_result(30)
    await other_ref.aio_result(30)
    await _logs(client, ref.run_id, 3)
    await _logs(client, other_ref.run_id, 1)

    mine = {"authorization": f"Bearer {stack.tokens[tenant]}"}  # type: ignore[attr-defined]
    theirs = await _other_tenant(stack)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        hits = (await http.get("/logs", headers=mine, params={"q": needle})).json()
        assert sorted(h["message"] for h in hits) == [
            f"another {needle}", f"found the {needle.upper()} here",
        ]
        only = (await http.get("/logs", headers=mine,
                               params={"q": needle, "workflow": wf.name})).json()
        assert [(h["run_id"], h["task"]) for h in only] == [(ref.run_id, "finder")]
        literal = (await http.get("/logs", headers=mine, params={"q": "0% _l"})).json()
        assert [h["message"] for h in literal] == ["100% _literal_ wildcards"]
        assert (await http.get("/logs", headers=mine, params={"q": "0%_l"})).json() == []
        future = (await http.get("/logs", headers=mine,
                                 params={"q": needle, "since": "2999-01-01T00:00:00Z"})).json()
        assert future == []
        # Another tenant finds nothing and cannot read the run's log.
        assert (await http.get("/logs", headers=theirs, params={"q": needle})).json() == []
        assert (await http.get(f"/runs/{ref.run_id}/logs", headers=theirs)).status_code == 404
        assert (await http.get(f"/runs/{ref.run_id}/logs")).status_code == 401
        assert (await http.get(f"/runs/{ref.run_id}/logs", headers=mine)).status_code == 200
