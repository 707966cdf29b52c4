"""Lost workers and scheduler restarts: work is requeued, nothing completes twice."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

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


async def test_assignment_lost_in_dispatcher_is_requeued_on_reregister(
    stack, client: Ratchet, start_worker
) -> None:
    """A dispatcher that dies after taking an assignment off DSP but before writing it to the
    worker loses it; the worker reconnects (same id) before anyone notices a stale heartbeat.
    The worker's registration says what it holds, so the scheduler requeues the rest at once
    rather than after the (here: ten-minute) execution timeout."""
    dispatcher = stack.dispatcher
    wf = client.workflow("lost-in-dispatch")

    @wf.task(execution_timeout=timedelta(minutes=10))
    async def step(input: dict, ctx: Context) -> dict:
        return {"attempt": ctx.attempt}

    worker = await start_worker("w-lost-dispatch", workflows=[wf], slots=1)
    real_on_dispatch, real_drop = dispatcher._on_dispatch, dispatcher._drop
    swallowed = asyncio.Event()

    async def swallow(msgs):  # the crash window: taken off the stream, never written
        mine = [m for m in msgs if worker.worker_id and worker.worker_id.encode() in m.data]
        if mine and not swallowed.is_set():
            swallowed.set()
            rest = [m for m in msgs if m not in mine]
            return await real_on_dispatch(rest) if rest else []
        return await real_on_dispatch(msgs)

    async def crash_drop(conn):  # a killed dispatcher cleans nothing up
        if dispatcher.conns.get(conn.info.worker_id) is conn:
            del dispatcher.conns[conn.info.worker_id]

    dispatcher._on_dispatch = swallow
    dispatcher._drop = crash_drop
    try:
        # The consumer holds a bound reference to the handler: swap it there too.
        dispatcher._consumer._handler = swallow
        ref = await wf.aio_run_no_wait({})
        await asyncio.wait_for(swallowed.wait(), 20)
        conn = dispatcher.conns[worker.worker_id]
        conn.closed.set()  # the stream ends as if the dispatcher died; the worker reconnects

        async def reconnected() -> bool:
            again = dispatcher.conns.get(worker.worker_id)
            return again is not None and again is not conn
        await eventually(reconnected)
    finally:
        dispatcher._on_dispatch, dispatcher._drop = real_on_dispatch, real_drop
        dispatcher._consumer._handler = real_on_dispatch
    assert await ref.aio_result(30) == {"step": {"attempt": 1}}
    run = await client.runs.aio_get(ref.run_id)
    attempts = run["tasks"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["LOST", "SUCCEEDED"]


async def test_queued_task_timers_survive_a_scheduler_restart(
    stack, client: Ratchet, start_worker
) -> None:
    """Schedule timeouts and retry times are kept in memory only and rebuilt from the task
    rows on load: a restart must neither lose nor reset them."""
    from ratchet import RunFailed

    @client.task(name="never-served", schedule_timeout=timedelta(seconds=1.5))
    async def never_served(input: dict, ctx: Context) -> dict:
        return {}

    @client.task(name="retried-late", retries=1, backoff_base=1.0, backoff_max=1.0)
    async def retried_late(input: dict, ctx: Context) -> dict:
        if ctx.attempt == 0:
            raise RuntimeError("first attempt fails")
        return {"attempt": ctx.attempt}

    await start_worker("w-timers", workflows=[retried_late], slots=2)  # nobody serves the other
    starving = await never_served.aio_run_no_wait({})
    retried = await retried_late.aio_run_no_wait({})

    async def waiting_for_retry() -> bool:
        run = await client.runs.aio_get(retried.run_id, missing_ok=True)
        return bool(run) and [a["status"] for a in run["tasks"][0]["attempts"]] == ["FAILED"]

    await eventually(waiting_for_retry)
    await stack.scheduler.stop()
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()
    assert await retried.aio_result(30) == {"retried-late": {"attempt": 1}}
    with pytest.raises(RunFailed) as info:
        await starving.aio_result(30)
    assert info.value.errors["never-served"]["type"] == "ScheduleTimeout"
