"""Durable tasks on the real stack: waits, replay, NonDeterminism, durable slots, wait_any."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from conftest import Stack, eventually
from ratchet import DurableContext, Event, NonDeterminism, Ratchet, RunFailed, Sleep

from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-durable-{uuid.uuid4().hex[:6]}")
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def pg(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stack.settings.database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def event_waits(pg: asyncpg.Pool, tenant: str) -> int:
    return int(await pg.fetchval(
        "SELECT count(*) FROM durable_event_waits WHERE tenant_id = $1", tenant))


async def parked(pg: asyncpg.Pool, tenant: str) -> int:
    """Waits some attempt is parked at (reached, still pending)."""
    return int(await pg.fetchval(
        "SELECT count(*) FROM durable_log WHERE tenant_id = $1 AND status = 'pending'"
        " AND waiting_attempt IS NOT NULL", tenant))


async def test_sleep_then_event_ignores_non_matching(
    client: Ratchet, start_worker: Any, matcher: MatcherService, pg: asyncpg.Pool, tenant: str
) -> None:
    wf = client.workflow("approve")

    @wf.durable_task(execution_timeout=timedelta(minutes=2))
    async def approve(input: dict, ctx: DurableContext) -> dict:
        await ctx.aio_sleep_for(timedelta(milliseconds=300))
        ev = await ctx.aio_wait_for_event("approval", expression="input.doc_id == '1'",
                                          timeout=timedelta(minutes=1))
        return {"by": ev["user"]}

    await start_worker("w-approve", workflows=[wf], slots=1)
    ref = await wf.aio_run_no_wait({})
    await eventually(lambda: _is(event_waits(pg, tenant), 1))
    await client.events.aio_push("approval", {"doc_id": "2", "user": "mallory"})
    await client.events.aio_push("approval", {"doc_id": "1", "user": "ann"})
    assert await ref.aio_result(30) == {"approve": {"by": "ann"}}


async def test_event_before_the_wait_does_not_count_and_wait_any_says_which(
    client: Ratchet, start_worker: Any, matcher: MatcherService, pg: asyncpg.Pool, tenant: str
) -> None:
    await client.events.aio_push("go", {"n": 0})  # published before any wait: never counts

    @client.durable_task(name="anyone")
    async def anyone(input: dict, ctx: DurableContext) -> dict:
        first = await ctx.aio_wait_any(Sleep(timedelta(minutes=5)), Event("go", "input.n > 0"))
        second = await ctx.aio_wait_any(Event("never"), Sleep(0.2))
        stamp = await ctx.aio_now()
        return {"first": [first.index, first.payload], "second": second.index,
                "now": stamp.isoformat()}

    await start_worker("w-any", workflows=[anyone], slots=1)
    ref = await anyone.aio_run_no_wait({})
    await eventually(lambda: _is(event_waits(pg, tenant), 1))
    await client.events.aio_push("go", {"n": 1})
    out = (await ref.aio_result(30))["anyone"]
    assert out["first"] == [1, {"n": 1}]
    assert out["second"] == 1


async def test_event_timeout_raises_in_the_task(
    client: Ratchet, start_worker: Any, matcher: MatcherService
) -> None:
    @client.durable_task(name="impatient")
    async def impatient(input: dict, ctx: DurableContext) -> dict:
        try:
            await ctx.aio_wait_for_event("nobody", timeout=0.2)
        except TimeoutError:
            return {"timed_out": True}
        return {"timed_out": False}

    await start_worker("w-impatient", workflows=[impatient], slots=1)
    assert await impatient.aio_run({}, timeout_s=30) == {"impatient": {"timed_out": True}}


async def test_slots_one_worker_holds_a_hundred_sleepers(
    client: Ratchet, start_worker: Any, matcher: MatcherService, pg: asyncpg.Pool, tenant: str
) -> None:
    release = asyncio.Event()

    @client.durable_task(name="napper", execution_timeout=timedelta(minutes=5))
    async def napper(input: dict, ctx: DurableContext) -> dict:
        await ctx.aio_wait_any(Sleep(timedelta(minutes=5)), Event(f"wake-{input['i']}"))
        return {"i": input["i"]}

    @client.task(name="regular")
    async def regular(input: dict, ctx: Any) -> dict:
        release.set()
        return {"ok": True}

    worker = await start_worker("w-nap", workflows=[napper, regular], slots=1)
    refs = [await napper.aio_run_no_wait({"i": i}) for i in range(100)]
    await eventually(lambda: _is(parked(pg, tenant), 100), timeout_s=60)
    # All 100 wait at once on a one-slot worker, and its one regular slot is still free.
    assert len(worker._running) == 100
    assert await regular.aio_run({}, timeout_s=30) == {"regular": {"ok": True}}
    await eventually(lambda: _is(event_waits(pg, tenant), 100))
    for i in range(100):
        await client.events.aio_push(f"wake-{i}", {})
    # Woken one at a time through the worker's one slot, every one finishes.
    outs = [await ref.aio_result(60) for ref in refs]
    assert sorted(o["napper"]["i"] for o in outs) == list(range(100))


async def test_a_replay_asking_for_another_wait_fails_non_deterministic(
    client: Ratchet, start_worker: Any, stack: Stack, pg: asyncpg.Pool, tenant: str
) -> None:
    shape = {"sleep": 0.2}

    @client.durable_task(name="fickle", retries=3, backoff_base=0.05)
    async def fickle(input: dict, ctx: DurableContext) -> dict:
        await ctx.aio_sleep_for(shape["sleep"])
        if ctx.attempt == 0:
            shape["sleep"] = 0.3  # the next attempt replays, asking for another sleep
            raise RuntimeError("try again")
        return {"attempt": ctx.attempt}

    await start_worker("w-fickle", workflows=[fickle], slots=1)
    with pytest.raises(RunFailed) as info:
        await fickle.aio_run({}, timeout_s=30)
    err = info.value.errors["fickle"]
    assert err["type"] == "NonDeterminism"
    assert "position 0" in err["message"]
    assert err["non_retryable"] is True
    assert issubclass(NonDeterminism, Exception)


async def test_replay_returns_recorded_results(
    client: Ratchet, start_worker: Any
) -> None:
    seen: list[tuple[int, str]] = []

    @client.durable_task(name="replayer", retries=2, backoff_base=0.05)
    async def replayer(input: dict, ctx: DurableContext) -> dict:
        stamp = await ctx.aio_now()
        await ctx.aio_sleep_for(timedelta(milliseconds=200))
        seen.append((ctx.attempt, stamp.isoformat()))
        if ctx.attempt == 0:
            raise RuntimeError("after the sleep")
        return {"stamp": stamp.isoformat()}

    await start_worker("w-replayer", workflows=[replayer], slots=1)
    out = await replayer.aio_run({}, timeout_s=30)
    # The retry replayed: the same memoized time, and the finished sleep returned at once.
    assert [a for a, _ in seen] == [0, 1]
    assert seen[0][1] == seen[1][1] == out["replayer"]["stamp"]


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_parked_tasks_survive_a_scheduler_restart(
    client: Ratchet, start_worker: Any, matcher: MatcherService, stack: Stack,
    pg: asyncpg.Pool, tenant: str,
) -> None:
    from services.scheduler.service import SchedulerService

    @client.durable_task(name="patient", execution_timeout=timedelta(minutes=2))
    async def patient(input: dict, ctx: DurableContext) -> dict:
        await ctx.aio_sleep_for(timedelta(milliseconds=1500))
        ev = await ctx.aio_wait_for_event(f"ok-{input['i']}")
        return {"i": ev["i"], "attempt": ctx.attempt}

    await start_worker("w-patient", workflows=[patient], slots=1)
    refs = [await patient.aio_run_no_wait({"i": i}) for i in range(5)]
    await eventually(lambda: _is(parked(pg, tenant), 5))
    await stack.scheduler.stop()
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()
    await eventually(lambda: _is(event_waits(pg, tenant), 5), timeout_s=30)
    for i in range(5):
        await client.events.aio_push(f"ok-{i}", {"i": i})
    outs = [(await ref.aio_result(60))["patient"] for ref in refs]
    # Woken in place on the same worker: no attempt was lost or re-run.
    assert outs == [{"i": i, "attempt": 0} for i in range(5)]


async def test_a_replayed_run_starts_its_durable_task_on_a_fresh_log(
    client: Ratchet, start_worker: Any
) -> None:
    stamps: list[str] = []

    @client.durable_task(name="redo")
    async def redo(input: dict, ctx: DurableContext) -> dict:
        stamps.append((await ctx.aio_now()).isoformat())
        await ctx.aio_sleep_for(0.05)
        if len(stamps) == 1:
            raise NonDeterminism(0, "pretend the code changed")
        return {"stamp": stamps[-1]}

    await start_worker("w-redo", workflows=[redo], slots=1)
    ref = await redo.aio_run_no_wait({})
    with pytest.raises(RunFailed):
        await ref.aio_result(30)
    await client.arequest("POST", f"/runs/{ref.run_id}/replay")
    await eventually(lambda: _is(_status(client, ref.run_id), "SUCCEEDED"))
    assert len(stamps) == 2 and stamps[0] != stamps[1]  # not the memoized value: a new log


async def _status(client: Ratchet, run_id: str) -> str:
    return str((await client.runs.aio_get(run_id))["status"])


async def test_a_durable_task_awaiting_children_holds_no_slot(
    client: Ratchet, start_worker: Any
) -> None:
    kid = client.workflow("kid")

    @kid.task()
    async def square(input: dict, ctx: Any) -> dict:
        return {"v": input["i"] ** 2}

    @client.durable_task(name="gatherer")
    async def gatherer(input: dict, ctx: DurableContext) -> dict:
        refs = await kid.aio_run_many([{"i": i} for i in range(5)])
        outs = await asyncio.gather(*(ref.aio_result() for ref in refs))
        first = await refs[0].aio_result()  # already ended: returns at once
        return {"sum": sum(o["square"]["v"] for o in outs), "first": first["square"]["v"]}

    # One slot: the children can only run because the waiting parent gave it back.
    await start_worker("w-gatherer", workflows=[gatherer, kid], slots=1)
    assert await gatherer.aio_run({}, timeout_s=60) == {"gatherer": {"sum": 30, "first": 0}}
