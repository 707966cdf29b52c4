"""Crons and scheduled runs: exactly one run per tick with two tickers, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats
import pytest
from conftest import Stack, eventually
from ratchet import ApiError, Context, Ratchet

from libs.common import db
from libs.common.cronexpr import latest_tick, next_tick
from services.scheduler.cron import CronTicker, cron_run_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def infra(stack: Stack) -> AsyncIterator[tuple[asyncpg.Pool, Any]]:
    pool = await db.create_pool(stack.settings.database_url, max_size=4)
    nc = await nats.connect(stack.settings.nats_url)
    yield pool, nc.jetstream()
    await nc.drain()
    await pool.close()


def _tickers(stack: Stack, infra: tuple[asyncpg.Pool, Any], clock: Clock) -> list[CronTicker]:
    pool, js = infra
    # Two schedulers' tickers; poll loops are not started, the test drives tick_once itself.
    return [CronTicker(stack.settings, pool, js, now=clock, poll_interval_s=0.05)
            for _ in range(2)]


async def _runs(client: Ratchet, workflow: str) -> list[dict[str, Any]]:
    return await client.arequest("GET", "/runs", params={"workflow": workflow, "limit": 100})


async def _register(client: Ratchet, name: str, on_crons: list[str] | None = None) -> None:
    await client.arequest("POST", "/workflows", json={
        "name": name, "tasks": [{"name": "t"}], "on_crons": on_crons or []})


async def _tick_both(tickers: list[CronTicker]) -> None:
    await asyncio.gather(*(t.tick_once() for t in tickers))


async def test_cron_fires_once_per_tick_with_two_tickers(
    client: Ratchet, stack: Stack, infra: tuple[asyncpg.Pool, Any], tenant: str
) -> None:
    # A yearly cron: the real clock (and any real ticker) never reaches it during the test.
    await _register(client, "yearly")
    cron = await client.arequest("POST", "/crons", json={
        "workflow": "yearly", "expression": "0 0 1 1 *", "input": {"n": 1},
        "metadata": {"k": "v"}, "name": "new-year"})
    first_due = datetime.fromisoformat(cron["next_due_at"])
    clock = Clock(first_due - timedelta(seconds=1))
    tickers = _tickers(stack, infra, clock)
    await _tick_both(tickers)
    assert sum(t.fired for t in tickers) == 0

    fired_ticks = []
    for step in range(3):  # three consecutive ticks, each polled many times by both tickers
        tick = first_due.replace(year=first_due.year + step)
        clock.now = tick + timedelta(seconds=5)
        for _ in range(3):
            await _tick_both(tickers)
        fired_ticks.append(tick)
    assert sum(t.fired for t in tickers) == 3

    async def three_runs() -> bool:
        return len(await _runs(client, "yearly")) == 3

    await eventually(three_runs)
    expected = {cron_run_id(tenant, cron["id"], t) for t in fired_ticks}
    assert {r["id"] for r in await _runs(client, "yearly")} == expected
    run = await client.runs.aio_get(next(iter(expected)))
    assert run["input"] == {"n": 1} and run["metadata"] == {"k": "v"}
    [row] = await client.arequest("GET", "/crons")
    assert datetime.fromisoformat(row["last_tick"]) == fired_ticks[-1]


async def test_missed_ticks_fire_only_the_latest(
    client: Ratchet, stack: Stack, infra: tuple[asyncpg.Pool, Any], tenant: str
) -> None:
    await _register(client, "monthly")
    cron = await client.arequest("POST", "/crons", json={
        "workflow": "monthly", "expression": "0 9 1 * *"})
    due = datetime.fromisoformat(cron["next_due_at"])
    clock = Clock(due + timedelta(days=200))  # "down" for about six ticks
    tickers = _tickers(stack, infra, clock)
    await _tick_both(tickers)
    await _tick_both(tickers)
    latest = latest_tick("0 9 1 * *", clock.now)

    async def one_run() -> bool:
        return len(await _runs(client, "monthly")) == 1

    await eventually(one_run)
    [run] = await _runs(client, "monthly")
    assert run["id"] == cron_run_id(tenant, cron["id"], latest)
    [row] = await client.arequest("GET", "/crons")
    assert datetime.fromisoformat(row["next_due_at"]) == next_tick("0 9 1 * *", latest)


async def test_workflow_on_crons_become_crons(
    client: Ratchet, stack: Stack, infra: tuple[asyncpg.Pool, Any]
) -> None:
    await _register(client, "wfcron", on_crons=["0 0 1 1 *", "30 6 * * 1"])
    crons = await client.arequest("GET", "/crons", params={"workflow": "wfcron"})
    assert sorted(c["expression"] for c in crons) == ["0 0 1 1 *", "30 6 * * 1"]
    assert {c["origin"] for c in crons} == {"workflow"}
    with pytest.raises(ApiError) as info:
        await client.arequest("DELETE", f"/crons/{crons[0]['id']}")
    assert info.value.status == 400
    await _register(client, "wfcron", on_crons=["0 0 1 1 *"])
    crons = await client.arequest("GET", "/crons", params={"workflow": "wfcron"})
    assert [c["expression"] for c in crons] == ["0 0 1 1 *"]

    clock = Clock(datetime.fromisoformat(crons[0]["next_due_at"]) + timedelta(seconds=1))
    tickers = _tickers(stack, infra, clock)
    await _tick_both(tickers)
    assert sum(t.fired for t in tickers) == 1

    async def one_run() -> bool:
        return len(await _runs(client, "wfcron")) == 1

    await eventually(one_run)


async def test_cron_api_validation(client: Ratchet) -> None:
    await _register(client, "validated")
    for expression in ("not a cron", "61 * * * *", "* * *"):
        with pytest.raises(ApiError) as info:
            await client.arequest("POST", "/crons", json={
                "workflow": "validated", "expression": expression})
        assert info.value.status == 400, expression
    with pytest.raises(ApiError) as missing:
        await client.arequest("POST", "/crons", json={"workflow": "nope", "expression": "* * * * *"})
    assert missing.value.status == 404
    made = await client.arequest("POST", "/crons", json={
        "workflow": "validated", "expression": "*/5 * * * * *", "name": "every-5s"})
    with pytest.raises(ApiError) as dup:
        await client.arequest("POST", "/crons", json={
            "workflow": "validated", "expression": "* * * * *", "name": "every-5s"})
    assert dup.value.status == 409
    await client.arequest("DELETE", f"/crons/{made['id']}")
    assert await client.arequest("GET", "/crons") == []


async def test_scheduled_run_fires_at_its_time(
    client: Ratchet, stack: Stack, infra: tuple[asyncpg.Pool, Any], start_worker: Any
) -> None:
    wf = client.workflow("later")

    @wf.task()
    async def work(input: dict, ctx: Context) -> dict:
        return {"got": input}

    await start_worker("w-later", workflows=[wf], slots=2)
    run_at = datetime.now(UTC) + timedelta(hours=1)
    created = await client.arequest("POST", "/scheduled", json={
        "workflow": "later", "run_at": run_at.isoformat(), "input": {"x": 1}})
    cancelled = await client.arequest("POST", "/scheduled", json={
        "workflow": "later", "run_at": run_at.isoformat(), "input": {"x": 2}})
    await client.arequest("DELETE", f"/scheduled/{cancelled['id']}")

    clock = Clock(run_at - timedelta(seconds=1))
    tickers = _tickers(stack, infra, clock)
    await _tick_both(tickers)
    assert sum(t.fired for t in tickers) == 0
    clock.now = run_at
    await _tick_both(tickers)
    await _tick_both(tickers)
    assert sum(t.fired for t in tickers) == 1

    out = await client.runs.aio_get(created["run_id"], wait_s=30)
    assert out["status"] == "SUCCEEDED" and out["output"] == {"work": {"got": {"x": 1}}}
    [row] = await client.arequest("GET", "/scheduled")
    assert row["fired_at"] is not None
    with pytest.raises(ApiError) as naive:
        await client.arequest("POST", "/scheduled", json={
            "workflow": "later", "run_at": "2030-01-01T09:00:00"})
    assert naive.value.status == 400


async def test_ticker_loop_starts_and_stops(
    stack: Stack, infra: tuple[asyncpg.Pool, Any]
) -> None:
    pool, js = infra
    ticker = CronTicker(stack.settings, pool, js, poll_interval_s=0.01)
    await ticker.stop()  # safe before start
    await ticker.start()
    await ticker.stop()
    await ticker.stop()
