"""Lost workers and scheduler restarts: work is requeued, nothing completes twice."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import eventually
from ratchet import Context, Ratchet

from services.scheduler.service import SchedulerService

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_lost_worker_tasks_are_requeued(client: Ratchet, start_worker) -> None:
    first_started = asyncio.Event()
    wf = client.workflow("survivor")

    @wf.task()
    async def step(input: dict, ctx: Context) -> dict:
        if ctx.attempt == 0:
            first_started.set()
            await asyncio.sleep(3600)  # this worker will die while holding the task
        return {"attempt": ctx.attempt}

    doomed = client.worker("doomed", workflows=[wf], slots=1)
    doomed_task = asyncio.create_task(doomed.astart())
    await doomed.wait_connected(30)
    ref = await wf.aio_run_no_wait({})
    await asyncio.wait_for(first_started.wait(), 20)
    # Die without draining: the stream just drops.
    doomed_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed_task
    await start_worker("rescuer", workflows=[wf], slots=1)
    assert await ref.aio_result(60) == {"step": {"attempt": 1}}
    run = await client.runs.aio_get(ref.run_id)
    attempts = run["tasks"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["LOST", "SUCCEEDED"]
    assert attempts[0]["error"]["type"] == "WorkerLost"


async def test_scheduler_restart_loses_nothing(stack, client: Ratchet, start_worker) -> None:
    gate = asyncio.Event()
    wf = client.workflow("restartable")

    @wf.task()
    async def one(input: dict, ctx: Context) -> dict:
        await gate.wait()
        return {"one": input["i"]}

    @wf.task(parents=[one])
    async def two(input: dict, ctx: Context) -> dict:
        return {"two": ctx.parent_output(one)["one"] * 2}

    await start_worker("w-restart", workflows=[wf], slots=20)
    refs = [await wf.aio_run_no_wait({"i": i}) for i in range(10)]

    async def all_created() -> bool:
        for ref in refs:
            if await client.runs.aio_get(ref.run_id, missing_ok=True) is None:
                return False
        return True

    await eventually(all_created)
    await stack.scheduler.stop()
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()
    gate.set()
    outs = await asyncio.gather(*(r.aio_result(60) for r in refs))
    assert sorted(o["two"]["two"] for o in outs) == [i * 2 for i in range(10)]
    for ref in refs:
        run = await client.runs.aio_get(ref.run_id)
        for task in run["tasks"]:
            assert [a["status"] for a in task["attempts"]].count("SUCCEEDED") == 1
