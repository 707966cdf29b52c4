"""DAG conditions: wait_for (Sleep, Event), skip_if and cancel_if (ParentOutput)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from conftest import Stack, eventually
from ratchet import Context, Event, ParentOutput, Ratchet, RunFailed, Sleep

from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-conds-{uuid.uuid4().hex[:6]}")
    await svc.start()
    yield svc
    await svc.stop()


async def test_wait_for_sleep_starts_the_task_after_it(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow("later")
    stamps: dict[str, float] = {}

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:
        stamps["first"] = time.time()
        return {}

    @wf.task(parents=[first], wait_for=[Sleep(0.5)])
    async def second(input: dict, ctx: Context) -> dict:
        stamps["second"] = time.time()
        return {"ok": True}

    await start_worker("w-later", workflows=[wf], slots=2)
    out = await wf.aio_run({}, timeout_s=30)
    assert out["second"] == {"ok": True}
    assert stamps["second"] - stamps["first"] >= 0.5


async def test_wait_for_event_holds_the_task_until_a_matching_event(
    client: Ratchet, start_worker: Any, matcher: MatcherService, stack: Stack, tenant: str
) -> None:
    wf = client.workflow("gated")

    @wf.task()
    async def prepare(input: dict, ctx: Context) -> dict:
        return {"n": 1}

    @wf.task(parents=[prepare], wait_for=[Event("gate.open", "input.ok == true")])
    async def proceed(input: dict, ctx: Context) -> dict:
        return {"after": ctx.parent_output(prepare)["n"]}

    await start_worker("w-gated", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    pg = await asyncpg.connect(stack.settings.database_url)
    try:
        async def registered() -> bool:
            n = await pg.fetchval(
                "SELECT count(*) FROM durable_event_waits WHERE tenant_id = $1", tenant)
            return bool(n == 1)

        await eventually(registered)
        await client.events.aio_push("gate.open", {"ok": False})  # does not match
        await client.events.aio_push("gate.open", {"ok": True})
        assert await ref.aio_result(30) == {"prepare": {"n": 1}, "proceed": {"after": 1}}
    finally:
        await pg.close()


async def test_skip_if_skips_and_dependants_still_run(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow("skipper")

    @wf.task()
    async def check(input: dict, ctx: Context) -> dict:
        return {"cached": input["cached"]}

    @wf.task(parents=[check], skip_if=[ParentOutput("input.cached == true")])
    async def compute(input: dict, ctx: Context) -> dict:
        return {"computed": True}

    @wf.task(parents=[compute])
    async def publish(input: dict, ctx: Context) -> dict:
        return {"from_compute": ctx.parent_output(compute)}

    await start_worker("w-skipper", workflows=[wf], slots=2)
    skipped = await wf.aio_run_no_wait({"cached": True})
    assert (await skipped.aio_result(30))["publish"] == {"from_compute": None}
    run = await client.runs.aio_get(skipped.run_id)
    statuses = {t["name"]: t["status"] for t in run["tasks"]}
    assert statuses == {"check": "SUCCEEDED", "compute": "SKIPPED", "publish": "SUCCEEDED"}
    assert run["status"] == "SUCCEEDED"
    ran = await wf.aio_run({"cached": False}, timeout_s=30)
    assert ran["compute"] == {"computed": True}


async def test_cancel_if_cancels_the_task_and_its_dependants(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow("guarded")

    @wf.task()
    async def classify(input: dict, ctx: Context) -> dict:
        return {"label": input["label"]}

    @wf.task(parents=[classify], cancel_if=[ParentOutput("input.label == 'spam'", parent=classify)])
    async def reply(input: dict, ctx: Context) -> dict:
        return {"sent": True}

    @wf.task(parents=[reply])
    async def archive(input: dict, ctx: Context) -> dict:
        return {}

    await start_worker("w-guarded", workflows=[wf], slots=2)
    with pytest.raises(RunFailed) as info:
        await wf.aio_run({"label": "spam"}, timeout_s=30)
    assert info.value.errors["reply"]["type"] == "ConditionCancelled"
    run = await client.runs.aio_get(info.value.run_id)
    statuses = {t["name"]: t["status"] for t in run["tasks"]}
    assert statuses == {"classify": "SUCCEEDED", "reply": "CANCELLED", "archive": "CANCELLED"}
    assert (await wf.aio_run({"label": "ham"}, timeout_s=30))["reply"] == {"sent": True}
