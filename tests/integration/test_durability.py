"""Retries, timeouts, NonRetryable, cancel, replay, hooks, versions, history, bad input."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import httpx
import msgspec
import pytest
from conftest import eventually
from ratchet import ApiError, Context, NonRetryable, Ratchet, RunFailed

from libs.common import subjects

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_retries_then_success_keeps_every_error(client: Ratchet, start_worker) -> None:
    @client.task(name="flaky", retries=3, backoff_base=0.05, backoff_max=0.2)
    async def flaky(input: dict, ctx: Context) -> dict:
        if ctx.attempt < 2:
            raise RuntimeError(f"transient {ctx.attempt}")
        return {"attempt": ctx.attempt}

    await start_worker("w-flaky", workflows=[flaky], slots=2)
    ref = await flaky.aio_run_no_wait({})
    assert await ref.aio_result(30) == {"flaky": {"attempt": 2}}
    run = await client.runs.aio_get(ref.run_id)
    attempts = run["tasks"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert attempts[0]["error"]["type"] == "RuntimeError"
    assert attempts[1]["error"]["message"] == "transient 1"
    assert "Traceback" in attempts[0]["error"]["traceback"]


async def test_non_retryable_fails_at_once(client: Ratchet, start_worker) -> None:
    calls = 0

    @client.task(name="fatal", retries=5, backoff_base=0.05)
    async def fatal(input: dict, ctx: Context) -> dict:
        nonlocal calls
        calls += 1
        raise NonRetryable("bad request to the LLM")

    await start_worker("w-fatal", workflows=[fatal], slots=2)
    with pytest.raises(RunFailed) as info:
        await fatal.aio_run({}, timeout_s=30)
    assert calls == 1
    assert info.value.errors["fatal"]["type"] == "NonRetryable"
    assert info.value.errors["fatal"]["non_retryable"] is True


async def test_execution_timeout_cancels_and_retries(client: Ratchet, start_worker) -> None:
    seen_cancel = asyncio.Event()

    @client.task(name="sleepy", retries=1, backoff_base=0.05, execution_timeout=timedelta(seconds=0.5))
    async def sleepy(input: dict, ctx: Context) -> dict:
        if ctx.attempt == 0:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen_cancel.set()
                raise
        return {"attempt": ctx.attempt}

    await start_worker("w-sleepy", workflows=[sleepy], slots=2)
    ref = await sleepy.aio_run_no_wait({})
    assert await ref.aio_result(30) == {"sleepy": {"attempt": 1}}
    assert seen_cancel.is_set()
    run = await client.runs.aio_get(ref.run_id)
    statuses = [a["status"] for a in run["tasks"][0]["attempts"]]
    assert statuses == ["TIMED_OUT", "SUCCEEDED"]


async def test_refresh_timeout_extends_deadline(client: Ratchet, start_worker) -> None:
    @client.task(name="refresher", execution_timeout=timedelta(seconds=1))
    async def refresher(input: dict, ctx: Context) -> dict:
        ctx.refresh_timeout(timedelta(seconds=10))
        await asyncio.sleep(1.5)
        return {"done": True}

    await start_worker("w-refresh", workflows=[refresher], slots=1)
    assert await refresher.aio_run({}, timeout_s=30) == {"refresher": {"done": True}}


async def test_schedule_timeout_fails_queued_task(client: Ratchet) -> None:
    @client.task(name="nobody-runs-me", schedule_timeout=timedelta(seconds=0.5))
    async def orphan(input: dict, ctx: Context) -> dict:
        return {}

    with pytest.raises(RunFailed) as info:
        await orphan.aio_run({}, timeout_s=30)
    assert info.value.errors["nobody-runs-me"]["type"] == "ScheduleTimeout"


async def test_cancel_stops_running_task(client: Ratchet, start_worker) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    wf = client.workflow("cancel-me")

    @wf.task()
    async def long(input: dict, ctx: Context) -> dict:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    @wf.task(parents=[long])
    async def after(input: dict, ctx: Context) -> dict:
        return {}

    await start_worker("w-cancel", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    await asyncio.wait_for(started.wait(), 20)
    await client.arequest("POST", f"/runs/{ref.run_id}/cancel")
    with pytest.raises(RunFailed) as info:
        await ref.aio_result(30)
    assert info.value.status == "CANCELLED"
    await asyncio.wait_for(cancelled.wait(), 10)
    run = await client.runs.aio_get(ref.run_id)
    assert {t["name"]: t["status"] for t in run["tasks"]} == {
        "long": "CANCELLED", "after": "CANCELLED",
    }


async def test_sync_task_sees_cooperative_cancel(client: Ratchet, start_worker) -> None:
    started = threading.Event()
    observed = threading.Event()

    @client.task(name="coop")
    def coop(input: dict, ctx: Context) -> dict:
        started.set()
        if ctx.wait_cancelled(30):
            observed.set()
        return {}

    await start_worker("w-coop", workflows=[coop], slots=1)
    ref = await coop.aio_run_no_wait({})
    await eventually(lambda: _is_set(started))
    await client.arequest("POST", f"/runs/{ref.run_id}/cancel")
    await eventually(lambda: _is_set(observed))


async def _is_set(ev: threading.Event) -> bool:
    return ev.is_set()


async def test_replay_reruns_failed_task_and_descendants(client: Ratchet, start_worker) -> None:
    fail = {"on": True}
    runs_of: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    wf = client.workflow("replayable")

    @wf.task()
    async def a(input: dict, ctx: Context) -> dict:
        runs_of["a"] += 1
        return {"a": 1}

    @wf.task(parents=[a])
    async def b(input: dict, ctx: Context) -> dict:
        runs_of["b"] += 1
        if fail["on"]:
            raise NonRetryable("broken")
        return {"b": 2}

    @wf.task(parents=[b])
    async def c(input: dict, ctx: Context) -> dict:
        runs_of["c"] += 1
        return {"c": ctx.parent_output(b)["b"] + 1}

    await start_worker("w-replay", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    with pytest.raises(RunFailed):
        await ref.aio_result(30)
    fail["on"] = False
    await client.arequest("POST", f"/runs/{ref.run_id}/replay")

    async def succeeded() -> bool:
        run = await client.runs.aio_get(ref.run_id)
        return run["status"] == "SUCCEEDED"

    await eventually(succeeded)
    run = await client.runs.aio_get(ref.run_id)
    assert run["output"] == {"a": {"a": 1}, "b": {"b": 2}, "c": {"c": 3}}
    history = await client.arequest("GET", f"/runs/{ref.run_id}/events")
    assert runs_of == {"a": 1, "b": 2, "c": 1}, history
    kinds = [e["kind"] for e in history]
    assert kinds[0] == "run.created"
    assert "run.failed" in kinds and "run.replayed" in kinds and kinds[-1] == "run.succeeded"
    assert kinds.index("run.failed") < kinds.index("run.replayed")


async def test_on_failure_and_on_success_hooks(client: Ratchet, start_worker) -> None:
    wf = client.workflow("hooked")

    @wf.task()
    async def work(input: dict, ctx: Context) -> dict:
        if input.get("fail"):
            raise NonRetryable("nope")
        return {"ok": True}

    @wf.on_failure_task()
    async def cleanup(input: dict, ctx: Context) -> dict:
        return {"failed": sorted(ctx.task_errors())}

    @wf.on_success_task()
    async def celebrate(input: dict, ctx: Context) -> dict:
        return {"yay": True}

    await start_worker("w-hooks", workflows=[wf], slots=2)
    out = await wf.aio_run({"fail": False}, timeout_s=30)
    assert out == {"work": {"ok": True}, "celebrate": {"yay": True}}
    ref = await wf.aio_run_no_wait({"fail": True})
    with pytest.raises(RunFailed):
        await ref.aio_result(30)
    run = await client.runs.aio_get(ref.run_id)
    assert run["output"]["cleanup"] == {"failed": ["work"]}
    statuses = {t["name"]: t["status"] for t in run["tasks"]}
    assert statuses["celebrate"] == "SKIPPED"


async def test_versions_are_content_hashed_and_runs_pinned(client: Ratchet) -> None:
    spec = {"name": "versioned", "tasks": [{"name": "one"}]}
    first = await client.arequest("POST", "/workflows", json=spec)
    again = await client.arequest("POST", "/workflows", json=spec)
    assert first["id"] == again["id"] and again["created"] is False
    ref = await client.arequest("POST", "/workflows/versioned/run", json={"input": {}})
    spec2 = {"name": "versioned", "tasks": [{"name": "one"}, {"name": "two", "parents": ["one"]}]}
    second = await client.arequest("POST", "/workflows", json=spec2)
    assert second["id"] != first["id"]

    async def created() -> bool:
        try:
            await client.arequest("GET", f"/runs/{ref['run_id']}")
            return True
        except ApiError:
            return False

    await eventually(created)
    run = await client.arequest("GET", f"/runs/{ref['run_id']}")
    assert run["version_id"] == first["id"]
    assert [t["name"] for t in run["tasks"]] == ["one"]


class Strict(msgspec.Struct):
    doc_id: str
    pages: int


async def test_bad_input_errors(stack, client: Ratchet) -> None:
    wf = client.workflow("strict-input", input=Strict)

    @wf.task()
    async def only(input: Strict, ctx: Context) -> dict:
        return {}

    await client._register_async(wf)
    with pytest.raises(ApiError) as info:
        await client.arequest("POST", "/workflows/strict-input/run", json={"input": {"doc_id": "x"}})
    assert info.value.status == 422 and "pages" in info.value.detail
    with pytest.raises(ApiError) as info:
        await client.arequest(
            "POST", "/workflows/strict-input/run", json={"input": {"doc_id": "x", "pages": "many"}}
        )
    assert info.value.status == 422 and "pages" in info.value.detail
    headers = {"authorization": f"Bearer {client.config.token}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers) as http:
        bad_json = await http.post("/workflows/strict-input/run", content=b"{not json")
        assert bad_json.status_code == 400
        huge = b'{"input": {"doc_id": "' + b"x" * (stack.settings.max_payload_bytes + 10) + b'"}}'
        too_big = await http.post("/workflows/strict-input/run", content=huge)
        assert too_big.status_code == 413
    runs = await client.arequest("GET", "/runs", params={"workflow": "strict-input"})
    assert runs == []  # nothing half-created


async def test_poison_command_is_dead_lettered(
    stack, client: Ratchet, tenant: str, start_worker
) -> None:
    import nats

    nc = await nats.connect(stack.settings.nats_url)
    js = nc.jetstream()
    sub = await js.subscribe(f"dlq.cmd.{tenant}.>", stream="DLQ")
    await js.publish(subjects.cmd(tenant, "run.trigger"), b"\xc1not msgpack")
    msg = await sub.next_msg(timeout=20)
    assert msg.headers["Ratchet-Dlq-Subject"] == f"cmd.{tenant}.run.trigger"
    assert msg.headers["Ratchet-Dlq-Seq"].isdigit()
    await nc.close()

    # ...and commands behind it still flow.
    @client.task(name="after-poison")
    async def after(input: dict, ctx: Context) -> dict:
        return {"ok": 1}

    await start_worker("w-after-poison", workflows=[after], slots=1)
    assert await after.aio_run({}, timeout_s=30) == {"after-poison": {"ok": 1}}
