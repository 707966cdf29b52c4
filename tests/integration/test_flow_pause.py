"""Pausing and resuming a workflow (docs/flow-control.md): queue keeps new runs from every
trigger until resume, drop refuses API triggers (409) and skips event triggers (counted);
running tasks finish either way; the CLI and the audit log see both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import Stack, eventually
from ratchet import ApiError, Context, Ratchet

from services.matcher.service import MatcherService
from tests.integration.test_cli import cli_env, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-pause-{uuid.uuid4().hex[:6]}",
                         rules_ttl_s=3600.0)
    await svc.start()
    yield svc
    await svc.stop()


def _echo(client: Ratchet, name: str, **kw: Any) -> Any:
    wf = client.workflow(name, **kw)

    @wf.task()
    async def echo(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"got": input}

    return wf


async def _held(client: Ratchet, name: str, count: int) -> bool:
    return (await client.workflows.aio_pause_state(name))["held"] == count


async def test_queue_keeps_new_runs_until_resume(
    matcher: MatcherService, client: Ratchet, start_worker,
) -> None:
    gate = asyncio.Event()
    wf = client.workflow("pause-q", on_events=["pause.q"])

    @wf.task()
    async def step(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if input.get("wait"):
            await gate.wait()
        return {"got": input}

    await start_worker("w-pause-q", workflows=[wf], slots=4)
    running = await wf.aio_run_no_wait({"wait": True})

    async def started() -> bool:
        run = await client.runs.aio_get(running.run_id, missing_ok=True)
        return run is not None and run["status"] == "RUNNING"

    await eventually(started)
    state = await client.workflows.aio_pause("pause-q", mode="queue")
    assert state["paused"] and state["mode"] == "queue"
    held_api = await wf.aio_run_no_wait({"n": 1})
    await client.events.aio_push("pause.q", {"n": 2})
    await eventually(lambda: _held(client, "pause-q", 2))
    assert await client.runs.aio_get(held_api.run_id, missing_ok=True) is None  # not started
    view = await client.arequest("GET", f"/runs/{held_api.run_id}/flow")
    assert view["kind"] == "paused" and view["state"] == "sealed"
    gate.set()  # the run started before the pause finishes
    assert (await running.aio_result())["step"] == {"got": {"wait": True}}
    resumed = await client.workflows.aio_resume("pause-q")
    assert not resumed["paused"] and resumed["held"] == 2
    assert (await held_api.aio_result())["step"] == {"got": {"n": 1}}

    async def all_done() -> bool:
        runs = await client.runs.aio_list(workflow="pause-q", limit=10)
        return len(runs) == 3 and all(r["status"] == "SUCCEEDED" for r in runs)

    await eventually(all_done)
    after = await wf.aio_run_no_wait({"n": 3})  # not paused any more: starts at once
    assert (await after.aio_result())["step"] == {"got": {"n": 3}}
    audit = await client.arequest("GET", "/audit", params={"action": "workflow.pause"})
    assert [a["target"] for a in audit] == ["pause-q"] and audit[0]["detail"]["mode"] == "queue"
    audit = await client.arequest("GET", "/audit", params={"action": "workflow.resume"})
    assert [a["target"] for a in audit] == ["pause-q"]


async def test_drop_refuses_api_triggers_and_skips_events(
    matcher: MatcherService, stack: Stack, tenant: str, client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "pause-d", on_events=["pause.d"])
    marker = _echo(client, "pause-d-marker", on_events=["pause.d"])
    await start_worker("w-pause-d", workflows=[wf, marker], slots=4)
    await client.aregister(wf, marker)
    env = cli_env(stack.api_url, stack.tokens[tenant])  # type: ignore[attr-defined]
    result = await run_cli("workflows", "pause", "pause-d", "--mode", "drop", "--json", env=env)
    assert result.code == 0, result
    assert result.json()["mode"] == "drop"
    with pytest.raises(ApiError) as refused:
        await wf.aio_run_no_wait({"n": 1})
    assert refused.value.status == 409
    assert "pause-d" in refused.value.detail and "paused" in refused.value.detail
    with pytest.raises(ApiError) as refused_bulk:
        await wf.aio_run_many([{"n": 2}, {"n": 3}])
    assert refused_bulk.value.status == 409
    await client.events.aio_push("pause.d", {"n": 4})  # pause-d skips it; the marker runs

    async def marker_ran() -> bool:
        return len(await client.runs.aio_list(workflow="pause-d-marker", limit=5)) == 1

    await eventually(marker_ran)
    await eventually(lambda: _dropped(client, "pause-d", 1))
    assert await client.runs.aio_list(workflow="pause-d", limit=5) == []
    result = await run_cli("workflows", "resume", "pause-d", env=env)
    assert result.code == 0 and "resumed" in result.out, result
    assert not (await client.workflows.aio_pause_state("pause-d"))["paused"]
    ref = await wf.aio_run_no_wait({"n": 5})
    assert (await ref.aio_result())["echo"] == {"got": {"n": 5}}


async def _dropped(client: Ratchet, name: str, count: int) -> bool:
    return (await client.workflows.aio_pause_state(name))["dropped"] == count


async def test_pausing_an_unknown_workflow_is_404_and_a_bad_mode_400(client: Ratchet) -> None:
    with pytest.raises(ApiError) as missing:
        await client.workflows.aio_pause("no-such-workflow")
    assert missing.value.status == 404
    wf = _echo(client, "pause-bad")
    await client.aregister(wf)
    with pytest.raises(ApiError) as bad:
        await client.workflows.aio_pause("pause-bad", mode="later")
    assert bad.value.status == 400


async def test_cron_triggers_are_skipped_in_drop_mode_and_kept_in_queue_mode(
    client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "pause-cron", on_crons=["* * * * * *"])  # every second
    await start_worker("w-pause-cron", workflows=[wf], slots=4)
    await client.aregister(wf)
    try:
        await _cron_pauses(client)
    finally:  # a version without the cron: later tests' tickers must not see it
        await client.aregister(_echo(client, "pause-cron"))


async def _cron_pauses(client: Ratchet) -> None:
    await client.workflows.aio_pause("pause-cron", mode="drop")

    async def dropped_at_least(n: int) -> bool:
        return (await client.workflows.aio_pause_state("pause-cron"))["dropped"] >= n

    async def run_count() -> int:
        return len(await client.runs.aio_list(workflow="pause-cron", limit=500))

    await eventually(lambda: dropped_at_least(1), timeout_s=30)
    before = await run_count()  # every tick before the first dropped one was applied by now
    await eventually(lambda: dropped_at_least(3), timeout_s=30)
    assert await run_count() == before
    await client.workflows.aio_pause("pause-cron", mode="queue")  # a mode change keeps counts
    assert (await client.workflows.aio_pause_state("pause-cron"))["dropped"] >= 3

    async def held_at_least(n: int) -> bool:
        return (await client.workflows.aio_pause_state("pause-cron"))["held"] >= n

    await eventually(lambda: held_at_least(2), timeout_s=30)
    await client.workflows.aio_pause("pause-cron", mode="drop")  # no more ticks held
    held = (await client.workflows.aio_pause_state("pause-cron"))["held"]
    assert held >= 2
    # Held ticks start on resume (and the cron goes on).
    await client.workflows.aio_resume("pause-cron")

    async def started() -> bool:
        return await run_count() >= before + held

    await eventually(started, timeout_s=30)
