"""Fair scheduling end to end: concurrency keys, strategies, rate-limit windows, priority,
labels, stickiness and bad definitions, through the real API, scheduler and dispatcher."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import asyncpg
import pytest
from ratchet import (
    ApiError,
    Concurrency,
    Context,
    DesiredLabel,
    NonRetryable,
    Ratchet,
    RateLimit,
    Sticky,
    Strategy,
)

from services.scheduler.service import SchedulerService
from tests.integration.conftest import eventually

pytestmark = pytest.mark.asyncio


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _runs_done(client: Ratchet, run_ids: list[str]) -> bool:
    for run_id in run_ids:
        run = await client.runs.aio_get(run_id, missing_ok=True)
        if run is None or run["status"] in ("PENDING", "RUNNING"):
            return False
    return True


async def _attempt_spans(database_url: str, tenant: str, run_ids: list[str]) -> list[tuple[float, float, str]]:
    """(started, finished, run id) of every attempt that started, from PostgreSQL."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT t.run_id, a.started_at, a.finished_at FROM task_attempts a JOIN tasks t"
            " ON t.tenant_id = a.tenant_id AND t.id = a.task_id WHERE a.tenant_id = $1"
            " AND t.run_id = ANY($2) AND a.started_at IS NOT NULL",
            tenant, run_ids,
        )
    finally:
        await conn.close()
    return [(r["started_at"].timestamp(), (r["finished_at"] or r["started_at"]).timestamp(), r["run_id"]) for r in rows]


async def test_max_runs_per_key_under_failures_and_timeouts(client: Ratchet, start_worker) -> None:
    """Workers observe how many tasks of each key run at once, with failures and timeouts."""
    wf = client.workflow(_name("conc"), concurrency=Concurrency(key="input.user", max_runs=2))
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)

    @wf.task(retries=2, backoff_base=0.05, backoff_max=0.1, execution_timeout=0.6)
    async def work(input: dict, ctx: Context) -> dict:
        user = input["user"]
        running[user] += 1
        peak[user] = max(peak[user], running[user])
        try:
            if input["i"] % 5 == 0 and ctx.attempt == 0:
                raise RuntimeError("injected failure")
            if input["i"] % 7 == 0 and ctx.attempt == 0:
                await asyncio.sleep(2)  # times out; keeps running until cancelled
            await asyncio.sleep(0.02)
            return {"ok": True}
        finally:
            running[user] -= 1

    await start_worker("conc-a", workflows=[wf], slots=8)
    await start_worker("conc-b", workflows=[wf], slots=8)
    refs = [await wf.aio_run_no_wait({"user": f"u{i % 3}", "i": i}) for i in range(45)]
    ids = [r.run_id for r in refs]
    await eventually(lambda: _runs_done(client, ids), timeout_s=90)
    assert max(peak.values()) <= 2, dict(peak)
    assert set(peak) == {"u0", "u1", "u2"}
    for run_id in ids:
        assert (await client.runs.aio_get(run_id))["status"] == "SUCCEEDED"


async def test_cancel_newest_and_cancel_in_progress(client: Ratchet, start_worker) -> None:
    gate = asyncio.Event()
    newest = client.workflow(_name("cn"), concurrency=Concurrency(key="input.k", max_runs=1, strategy=Strategy.CANCEL_NEWEST))
    inprog = client.workflow(_name("cip"), concurrency=Concurrency(key="input.k", max_runs=1, strategy=Strategy.CANCEL_IN_PROGRESS))

    @newest.task()
    async def hold(input: dict, ctx: Context) -> dict:
        await gate.wait()
        return {"k": input["k"]}

    @inprog.task()
    async def hold2(input: dict, ctx: Context) -> dict:
        await gate.wait()  # the worker cancels this coroutine when the run is cancelled
        return {"k": input["k"]}

    await start_worker("strat", workflows=[newest, inprog], slots=10)
    first = await newest.aio_run_no_wait({"k": "a"})

    async def first_running() -> bool:
        run = await client.runs.aio_get(first.run_id, missing_ok=True)
        return run is not None and run["status"] == "RUNNING"

    await eventually(first_running)
    second = await newest.aio_run_no_wait({"k": "a"})
    other = await newest.aio_run_no_wait({"k": "b"})
    await eventually(lambda: _runs_done(client, [second.run_id]))
    assert (await client.runs.aio_get(second.run_id))["status"] == "CANCELLED"

    old = await inprog.aio_run_no_wait({"k": "a"})

    async def old_running() -> bool:
        run = await client.runs.aio_get(old.run_id, missing_ok=True)
        return run is not None and run["status"] == "RUNNING"

    await eventually(old_running)
    new = await inprog.aio_run_no_wait({"k": "a"})
    await eventually(lambda: _runs_done(client, [old.run_id]))
    assert (await client.runs.aio_get(old.run_id))["status"] == "CANCELLED"
    gate.set()
    await eventually(lambda: _runs_done(client, [first.run_id, other.run_id, new.run_id]))
    assert (await client.runs.aio_get(new.run_id))["status"] == "SUCCEEDED"
    assert (await client.runs.aio_get(first.run_id))["status"] == "SUCCEEDED"
    assert (await client.runs.aio_get(other.run_id))["status"] == "SUCCEEDED"


async def test_rate_limit_window_static_and_dynamic(stack, tenant: str, client: Ratchet, start_worker) -> None:
    key = _name("llm")
    await client.rate_limits.aio_put(key, limit=3, per="second")
    wf = client.workflow(_name("rl"))

    @wf.task(rate_limits=[RateLimit(key=key, units=1),
                          RateLimit(dynamic_key="input.user", units="input.cost", limit=4, per="second")])
    async def call(input: dict, ctx: Context) -> dict:
        return {"ok": True}

    await start_worker("rl", workflows=[wf], slots=50)
    users = ["a", "b"]
    refs = [await wf.aio_run_no_wait({"user": users[i % 2], "cost": 1 + (i % 2)}) for i in range(12)]
    ids = [r.run_id for r in refs]
    await eventually(lambda: _runs_done(client, ids), timeout_s=60)
    # The scheduler's record of when each start took its units (the worker reports its own
    # start a dispatch hop later, so its clock is not the one the limit is enforced on).
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT key, ts, units FROM rate_limit_admissions WHERE tenant_id = $1", tenant
        )
    finally:
        await conn.close()
    by_key: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in rows:
        by_key[r["key"]].append((r["ts"].timestamp(), r["units"]))
    assert len(by_key[key]) == 12 and len(by_key["a"]) == 6 and len(by_key["b"]) == 6
    for k, limit in ((key, 3), ("a", 4), ("b", 4)):
        for t, _ in by_key[k]:  # every window of one second ending at a start
            assert sum(u for s, u in by_key[k] if t - 1.0 < s <= t) <= limit, k
    spans = await _attempt_spans(stack.settings.database_url, tenant, ids)
    assert len(spans) == 12


async def test_rate_limit_survives_scheduler_restart(stack, tenant: str, client: Ratchet, start_worker) -> None:
    key = _name("quota")
    await client.rate_limits.aio_put(key, limit=2, per="minute")
    wf = client.workflow(_name("rlr"))

    @wf.task(rate_limits=[RateLimit(key=key)])
    async def call(input: dict, ctx: Context) -> dict:
        return {"ok": True}

    await start_worker("rlr", workflows=[wf], slots=10)
    # One after the other, to use the window's 2 units: a run that reaches the scheduler
    # before the key's definition waits in the key's line, and a line releases at limit/per
    # (one per 30 s here). Alone in it, the first run is released at once and the line closes;
    # the second then fits the window directly.
    for i in range(2):
        ref = await wf.aio_run_no_wait({"i": i})
        await eventually(lambda ref=ref: _runs_done(client, [ref.run_id]))
    await stack.scheduler.stop()
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()
    late = await wf.aio_run_no_wait({"i": 99})

    async def queued_task() -> bool:
        run = await client.runs.aio_get(late.run_id, missing_ok=True)
        return run is not None and bool(run["tasks"]) and all(t["status"] == "QUEUED" for t in run["tasks"])

    await eventually(queued_task)
    # the minute window has not passed: after the restart it still waits
    run = await client.runs.aio_get(late.run_id)
    assert run["status"] == "PENDING"
    await client.arequest("PUT", f"/rate-limits/{key}", json={"limit": 5, "per": "minute"})
    await eventually(lambda: _runs_done(client, [late.run_id]))


async def test_priority_order_on_one_slot(client: Ratchet, start_worker) -> None:
    wf = client.workflow(_name("prio"))
    order: list[int] = []

    @wf.task()
    async def step(input: dict, ctx: Context) -> dict:
        order.append(input["i"])
        return {}

    refs = [await wf.aio_run_no_wait({"i": i}, priority=p) for i, p in enumerate([1, 1, 3, 2, 3, 1])]

    async def all_queued() -> bool:
        for r in refs:
            run = await client.runs.aio_get(r.run_id, missing_ok=True)
            if run is None or not run["tasks"] or run["tasks"][0]["status"] != "QUEUED":
                return False
        return True

    await eventually(all_queued)
    await start_worker("prio", workflows=[wf], slots=1)
    await eventually(lambda: _runs_done(client, [r.run_id for r in refs]))
    assert order == [2, 4, 3, 0, 1, 5]


async def test_labels_and_sticky(client: Ratchet, start_worker) -> None:
    wf = client.workflow(_name("aff"), sticky=Sticky.HARD)

    @wf.task(desired_labels={"gpu": DesiredLabel("a100", required=True)})
    async def first(input: dict, ctx: Context) -> dict:
        return {}

    @wf.task(parents=[first])
    async def second(input: dict, ctx: Context) -> dict:
        return {}

    cpu = await start_worker("cpu-box", workflows=[wf], slots=5, labels={"gpu": "none"})
    refs = [await wf.aio_run_no_wait({"i": i}) for i in range(3)]

    async def queued() -> bool:
        run = await client.runs.aio_get(refs[0].run_id, missing_ok=True)
        return run is not None and bool(run["tasks"]) and any(t["status"] == "QUEUED" for t in run["tasks"])

    await eventually(queued)
    gpu = await start_worker("gpu-box", workflows=[wf], slots=5, labels={"gpu": "a100"})
    await eventually(lambda: _runs_done(client, [r.run_id for r in refs]))
    for ref in refs:
        run = await client.runs.aio_get(ref.run_id)
        workers = {t["name"]: t["worker_id"] for t in run["tasks"]}
        assert workers["first"] == gpu.worker_id  # required label
        assert workers["second"] == gpu.worker_id  # HARD sticky, though cpu-box is idle
    assert cpu.worker_id != gpu.worker_id


async def test_bad_fairness_definitions_are_400(client: Ratchet) -> None:
    bad_key = client.workflow(_name("badkey"), concurrency=Concurrency(key="input.user +", max_runs=1))

    @bad_key.task()
    def t1(input: dict, ctx: Context) -> dict:
        return {}

    with pytest.raises(ApiError) as exc:
        await bad_key.aio_run_no_wait({})
    assert exc.value.status == 400
    assert "line 1, column 12" in exc.value.detail

    unknown = client.workflow(_name("unknownrl"))

    @unknown.task(rate_limits=[RateLimit(key="never-defined-" + uuid.uuid4().hex[:6])])
    def t2(input: dict, ctx: Context) -> dict:
        raise NonRetryable("never runs")

    with pytest.raises(ApiError) as exc:
        await unknown.aio_run_no_wait({})
    assert exc.value.status == 400
    assert "unknown rate limit key" in exc.value.detail

    with pytest.raises(ApiError) as exc:
        await client.arequest("PUT", "/rate-limits/x", json={"limit": 0, "per": "second"})
    assert exc.value.status == 400


async def test_round_robin_between_a_flood_and_a_trickle(stack, tenant: str, client: Ratchet, start_worker) -> None:
    wf = client.workflow(_name("rr"))
    done: list[str] = []

    @wf.task(concurrency=Concurrency(key="input.g", max_runs=1000))
    async def job(input: dict, ctx: Context) -> dict:
        done.append(input["g"])
        return {}

    flood = [await wf.aio_run_no_wait({"g": "flood"}) for _ in range(40)]
    small = [await wf.aio_run_no_wait({"g": "small"}) for _ in range(5)]
    await start_worker("rr", workflows=[wf], slots=1)
    await eventually(lambda: _runs_done(client, [r.run_id for r in flood + small]), timeout_s=60)
    # the five trickle tasks are served within the first dozen, not after the 40 flood tasks
    last_small = max(i for i, g in enumerate(done) if g == "small")
    assert last_small < 12, done
