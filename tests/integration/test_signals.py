"""Signals to a run (docs/interaction.md) on the real stack: buffered before the wait, in
send order, once; timeouts; wait_any; the API's refusals; across a scheduler restart."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import Stack, eventually
from ratchet import DurableContext, Ratchet, Signal, Sleep
from ratchet.errors import ApiError

from libs.common.messages import MAX_PENDING_SIGNALS, MAX_SIGNAL_BYTES

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def waiting_for(client: Ratchet, run_id: str, n: int) -> bool:
    """The run's inbox holds `n` signals no wait has taken."""
    doc = await client._transport.arequest("GET", f"/runs/{run_id}/signals")
    return bool(doc["waiting"] == n)


async def is_running(client: Ratchet, run_id: str) -> bool:
    run = await client.runs.aio_get(run_id, missing_ok=True)
    return run is not None and run["status"] == "RUNNING"


async def test_signals_sent_before_the_wait_arrive_once_in_send_order(
    client: Ratchet, start_worker: Any
) -> None:
    @client.durable_task(name="collect", execution_timeout=timedelta(minutes=2))
    async def collect(input: dict, ctx: DurableContext) -> dict:
        await ctx.aio_wait_for_signal("start", timeout=timedelta(minutes=1))
        got = [await ctx.aio_wait_for_signal("item", timeout=timedelta(minutes=1))
               for _ in range(3)]
        return {"got": got}

    ref = await collect.aio_run_no_wait({})
    # No worker yet: every signal waits in the run's inbox.
    for i in range(3):
        await client.runs.aio_signal(ref.run_id, "item", {"i": i})
    await client.runs.aio_signal(ref.run_id, "other", {"never": "taken"})
    await eventually(lambda: waiting_for(client, ref.run_id, 4))
    await start_worker("w-collect", workflows=[collect], slots=1)
    await client.runs.aio_signal(ref.run_id, "start", None)
    out = (await ref.aio_result(60))["collect"]
    assert out == {"got": [{"i": 0}, {"i": 1}, {"i": 2}]}
    doc = await client._transport.arequest("GET", f"/runs/{ref.run_id}/signals")
    by_name: dict[str, list[str]] = {}
    for s in sorted(doc["signals"], key=lambda s: s["seq"]):
        by_name.setdefault(s["name"], []).append(s["status"])
    assert by_name == {"item": ["delivered"] * 3, "other": ["pending"], "start": ["delivered"]}


async def test_a_signal_wakes_a_parked_task_that_holds_no_slot(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"gate-{uuid.uuid4().hex[:6]}")

    @wf.durable_task(execution_timeout=timedelta(minutes=2))
    async def gate(input: dict, ctx: DurableContext) -> dict:
        sig = await ctx.aio_wait_for_signal("approve")
        return {"by": sig["by"]}

    @client.task(name="quick")
    def quick(input: dict, ctx: Any) -> dict:
        return {"ok": True}

    await start_worker("w-gate", workflows=[wf, quick], slots=1)
    refs = [await wf.aio_run_no_wait({}) for _ in range(3)]
    for ref in refs:
        await eventually(lambda ref=ref: is_running(client, ref.run_id))
    # Three parked waits on a one-slot worker, and the slot is still free for other work.
    assert (await quick.aio_run({}))["quick"] == {"ok": True}
    for n, ref in enumerate(refs):
        await client.runs.aio_signal(ref.run_id, "approve", {"by": f"ada-{n}"})
    outs = [(await ref.aio_result(60))[gate.name] for ref in refs]
    assert outs == [{"by": f"ada-{n}"} for n in range(3)]


async def test_a_signal_wait_times_out_and_wait_any_takes_a_signal_branch(
    client: Ratchet, start_worker: Any
) -> None:
    @client.durable_task(name="impatient", execution_timeout=timedelta(minutes=2))
    async def impatient(input: dict, ctx: DurableContext) -> dict:
        try:
            await ctx.aio_wait_for_signal("never", timeout=timedelta(milliseconds=300))
            timed_out = False
        except TimeoutError:
            timed_out = True
        first = await ctx.aio_wait_any(Signal("go"), Sleep(timedelta(minutes=5)))
        return {"timed_out": timed_out, "index": first.index, "payload": first.payload,
                "signal": isinstance(first.condition, Signal)}

    await start_worker("w-impatient", workflows=[impatient], slots=1)
    ref = await impatient.aio_run_no_wait({})
    await client.runs.aio_signal(ref.run_id, "go", {"n": 7})
    out = (await ref.aio_result(60))["impatient"]
    assert out == {"timed_out": True, "index": 0, "payload": {"n": 7}, "signal": True}


async def test_the_api_refuses_finished_runs_bad_names_and_large_payloads(
    client: Ratchet, start_worker: Any
) -> None:
    @client.task(name="done-fast")
    def done_fast(input: dict, ctx: Any) -> dict:
        return {}

    await start_worker("w-done", workflows=[done_fast], slots=1)
    ref = await done_fast.aio_run_no_wait({})
    await ref.aio_result(60)
    with pytest.raises(ApiError) as finished:
        await client.runs.aio_signal(ref.run_id, "late", {})
    assert finished.value.status == 409
    assert "SUCCEEDED" in str(finished.value)
    with pytest.raises(ApiError) as unknown:
        await client.runs.aio_signal("no-such-run", "x", {})
    assert unknown.value.status == 404
    with pytest.raises(ApiError) as bad_name:
        await client.runs.aio_signal(ref.run_id, "has space", {})
    assert bad_name.value.status in (400, 404)  # a space cannot reach the route's name


async def test_the_inbox_is_bounded(client: Ratchet, stack: Stack, tenant: str) -> None:
    @client.durable_task(name="deaf", execution_timeout=timedelta(minutes=5))
    async def deaf(input: dict, ctx: DurableContext) -> dict:
        return {}

    ref = await deaf.aio_run_no_wait({})  # no worker: the run stays unfinished
    await eventually(lambda: is_running_or_pending(client, ref.run_id))
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    too_big = {"blob": "x" * MAX_SIGNAL_BYTES}
    async with httpx.AsyncClient(base_url=stack.api_url,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        resp = await http.post(f"/runs/{ref.run_id}/signals/big", json=too_big)
        assert resp.status_code == 413, resp.text
        sem = asyncio.Semaphore(16)

        async def send(i: int) -> int:
            async with sem:
                r = await http.post(f"/runs/{ref.run_id}/signals/fill", json={"i": i})
                return r.status_code

        codes = await asyncio.gather(*(send(i) for i in range(MAX_PENDING_SIGNALS)))
        assert set(codes) == {202}
        await eventually(lambda: waiting_for(client, ref.run_id, MAX_PENDING_SIGNALS),
                         timeout_s=60)
        resp = await http.post(f"/runs/{ref.run_id}/signals/fill", json={"i": -1})
        assert resp.status_code == 429, resp.text
        assert str(MAX_PENDING_SIGNALS) in resp.json()["detail"]
    await client.runs.aio_cancel(ref.run_id)


async def is_running_or_pending(client: Ratchet, run_id: str) -> bool:
    run = await client.runs.aio_get(run_id, missing_ok=True)
    return run is not None and run["status"] in ("PENDING", "RUNNING")


async def test_signals_survive_a_scheduler_restart(
    client: Ratchet, start_worker: Any, stack: Stack
) -> None:
    from services.scheduler.service import SchedulerService

    @client.durable_task(name="steady", execution_timeout=timedelta(minutes=3))
    async def steady(input: dict, ctx: DurableContext) -> dict:
        first = await ctx.aio_wait_for_signal("first")
        second = await ctx.aio_wait_for_signal("second")
        return {"first": first, "second": second, "attempt": ctx.attempt}

    await start_worker("w-steady", workflows=[steady], slots=1)
    ref = await steady.aio_run_no_wait({})
    await eventually(lambda: is_running(client, ref.run_id))
    # "second" is sent first: it waits in the inbox across the restart.
    await client.runs.aio_signal(ref.run_id, "second", {"n": 2})
    await eventually(lambda: waiting_for(client, ref.run_id, 1))
    await stack.scheduler.stop()
    # Sent while no scheduler runs: the command waits in the stream.
    await client.runs.aio_signal(ref.run_id, "first", {"n": 1})
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()
    out = (await ref.aio_result(60))["steady"]
    assert out["first"] == {"n": 1} and out["second"] == {"n": 2}


KILL_WORKER = """
import sys
from datetime import timedelta
from ratchet import DurableContext, Ratchet

r = Ratchet()
name = sys.argv[1]

@r.durable_task(name=name, execution_timeout=timedelta(minutes=5))
async def listen(input: dict, ctx: DurableContext) -> dict:
    a = await ctx.aio_wait_for_signal("a")
    ctx.set_state({"step": "got a"})
    b = await ctx.aio_wait_for_signal("b")
    return {"a": a, "b": b, "attempt": ctx.attempt}

r.worker("kill-" + name, workflows=[listen], slots=1).start()
"""


async def test_signals_survive_worker_sigkills(
    client: Ratchet, stack: Stack, tenant: str
) -> None:
    import os
    import signal
    import subprocess
    import sys

    import asyncpg

    name = f"listen-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, RATCHET_TOKEN=stack.tokens[tenant],  # type: ignore[attr-defined]
               RATCHET_API_URL=stack.api_url, RATCHET_GRPC_ADDR=stack.grpc_addr)
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", KILL_WORKER, name], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    pg = await asyncpg.connect(stack.settings.database_url)

    async def parked_at(position: int) -> bool:
        row = await pg.fetchrow(
            "SELECT waiting_attempt FROM durable_log WHERE tenant_id = $1 AND position = $2"
            " AND status = 'pending'", tenant, position)
        return row is not None and row["waiting_attempt"] is not None

    try:
        first = spawn()
        wf = client.workflow(name)

        async def registered() -> bool:
            try:
                return bool(await client.workflows.aio_versions(name))
            except ApiError:
                return False

        await eventually(registered, timeout_s=30)
        version = (await client.workflows.aio_versions(name))[0]["id"]
        ref = await wf.aio_run_no_wait({}, version_id=version)
        await eventually(lambda: parked_at(0), timeout_s=30)
        await client.runs.aio_signal(ref.run_id, "a", {"n": 1})
        await eventually(lambda: parked_at(2), timeout_s=30)  # 1 is the set_state
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # No worker: "b" waits for the wait it satisfies; "a" again is a new signal, kept.
        await client.runs.aio_signal(ref.run_id, "b", {"n": 2})
        await client.runs.aio_signal(ref.run_id, "a", {"n": 3})
        spawn()  # replays "a" from the log, takes "b"
        out = (await ref.aio_result(90))[name]
        assert await client.runs.aio_state(ref.run_id) == {"step": "got a"}
    finally:
        await pg.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert out["a"] == {"n": 1} and out["b"] == {"n": 2}
    assert out["attempt"] >= 1
    doc = await client._transport.arequest("GET", f"/runs/{ref.run_id}/signals")
    statuses = {(s["name"], s["status"]) for s in doc["signals"]}
    assert statuses == {("a", "delivered"), ("b", "delivered"), ("a", "pending")}
