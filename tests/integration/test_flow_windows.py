"""Debounce and batching (docs/flow-control.md): one run per window or batch, every trigger
answering with its id, keep last/all, size and max_wait, events, scheduler restarts inside an
open window and an open batch, and the registration errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import Stack, eventually
from ratchet import ApiError, Batch, Context, Debounce, Ratchet

from services.matcher.service import MatcherService
from services.scheduler.service import SchedulerService

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-flow-{uuid.uuid4().hex[:6]}",
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


async def _runs(client: Ratchet, workflow: str) -> list[dict[str, Any]]:
    return list(await client.runs.aio_list(workflow=workflow, limit=500))


async def _restart_scheduler(stack: Stack) -> None:
    await stack.scheduler.stop()
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()


async def test_debounce_keep_last_one_run_per_key(client: Ratchet, start_worker) -> None:
    wf = _echo(client, "deb-last", debounce=Debounce(
        key="input.thread", period=timedelta(milliseconds=600), max_wait=timedelta(seconds=20)))
    await start_worker("w-deb-last", workflows=[wf], slots=4)
    refs = [await wf.aio_run_no_wait({"thread": "t1", "n": i}) for i in range(5)]
    other = await wf.aio_run_no_wait({"thread": "t2", "n": 9})
    assert len({r.run_id for r in refs}) == 1 and other.run_id != refs[0].run_id
    outs = await asyncio.gather(*(r.aio_result() for r in refs))  # every caller gets the run
    assert all(o["echo"] == {"got": {"thread": "t1", "n": 4}} for o in outs)
    assert (await other.aio_result())["echo"] == {"got": {"thread": "t2", "n": 9}}
    assert {r["id"] for r in await _runs(client, "deb-last")} == {refs[0].run_id, other.run_id}
    view = await client.arequest("GET", f"/runs/{refs[0].run_id}/flow")
    assert view["kind"] == "debounce" and view["key"] == "t1" and view["state"] == "started"
    assert [t["seq"] for t in view["triggers"]] == [1, 2, 3, 4, 5]
    assert view["triggers"][0]["trigger_id"] == refs[0].run_id  # the first trigger's id


async def test_debounce_keep_all_gives_every_input_in_order(client: Ratchet, start_worker) -> None:
    wf = _echo(client, "deb-all", debounce=Debounce(
        key="input.doc", period=timedelta(milliseconds=600), max_wait=timedelta(seconds=20),
        keep="all"))
    await start_worker("w-deb-all", workflows=[wf], slots=4)
    refs = await wf.aio_run_many([{"doc": "d", "rev": i} for i in range(4)])
    refs.append(await wf.aio_run_no_wait({"doc": "d", "rev": 4}))
    assert len({r.run_id for r in refs}) == 1
    out = await refs[-1].aio_result()
    assert out["echo"] == {"got": {"items": [{"doc": "d", "rev": i} for i in range(5)]}}


async def test_max_wait_ends_a_window_that_keeps_getting_triggers(
    client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "deb-max", debounce=Debounce(
        period=timedelta(seconds=2), max_wait=timedelta(milliseconds=800), keep="all"))
    await start_worker("w-deb-max", workflows=[wf], slots=4)
    refs = []
    # Triggers every 100 ms never leave a 2 s quiet period; max_wait still ends each window.
    while len({r.run_id for r in refs}) < 3:
        refs.append(await wf.aio_run_no_wait({"n": len(refs)}))
        await asyncio.sleep(0.1)  # pacing the triggers, not waiting for an outcome
    outs = await asyncio.gather(*(r.aio_result() for r in refs))
    by_run: dict[str, list[int]] = {}
    for ref, out in zip(refs, outs, strict=True):
        by_run[ref.run_id] = [item["n"] for item in out["echo"]["got"]["items"]]
    assert sorted(n for ns in by_run.values() for n in ns) == list(range(len(refs)))
    for ref in refs:  # each trigger is in the run it was answered with
        assert ref.run_id in by_run and int(refs.index(ref)) in by_run[ref.run_id]


async def test_debounced_events_start_one_run(
    matcher: MatcherService, client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "deb-evt", on_events=["msg.new"], debounce=Debounce(
        key="input.thread", period=timedelta(milliseconds=500), max_wait=timedelta(seconds=20)))
    await start_worker("w-deb-evt", workflows=[wf], slots=4)
    for i in range(6):
        await client.events.aio_push("msg.new", {"thread": "x", "text": f"m{i}"})

    async def one_run_done() -> bool:
        runs = await _runs(client, "deb-evt")
        return len(runs) == 1 and runs[0]["status"] == "SUCCEEDED"

    await eventually(one_run_done)
    run = await client.runs.aio_get((await _runs(client, "deb-evt"))[0]["id"])
    assert run["input"] == {"thread": "x", "text": "m5"}
    view = await client.arequest("GET", f"/runs/{run['id']}/flow")
    assert [t["source"] for t in view["triggers"]] == ["event"] * 6


async def test_scheduler_restart_inside_a_debounce_window(
    stack: Stack, client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "deb-restart", debounce=Debounce(
        key="input.k", period=timedelta(seconds=3), max_wait=timedelta(seconds=30)))
    await start_worker("w-deb-restart", workflows=[wf], slots=4)
    before = [await wf.aio_run_no_wait({"k": "a", "n": i}) for i in range(3)]
    run_id = before[0].run_id
    window = await client.arequest("GET", f"/runs/{run_id}/flow")
    assert window["state"] == "open"
    await _restart_scheduler(stack)
    kept = await client.arequest("GET", f"/runs/{run_id}/flow")
    assert kept["deadline"] == window["deadline"] and kept["state"] == "open"
    after = [await wf.aio_run_no_wait({"k": "a", "n": i}) for i in range(3, 5)]
    assert {r.run_id for r in before + after} == {run_id}
    outs = await asyncio.gather(*(r.aio_result() for r in before + after))
    assert all(o["echo"] == {"got": {"k": "a", "n": 4}} for o in outs)
    assert [r["id"] for r in await _runs(client, "deb-restart")] == [run_id]


async def test_batches_by_size_and_by_max_wait(client: Ratchet, start_worker) -> None:
    wf = _echo(client, "digest", batch=Batch(key="input.org", size=5,
                                             max_wait=timedelta(milliseconds=700)))
    await start_worker("w-digest", workflows=[wf], slots=4)
    refs = await wf.aio_run_many([{"org": "acme", "i": i} for i in range(12)])
    small = await wf.aio_run_no_wait({"org": "other", "i": 0})
    ids = [r.run_id for r in refs]
    assert ids[:5] == [ids[0]] * 5 and ids[5:10] == [ids[5]] * 5 and ids[10:] == [ids[10]] * 2
    assert len({ids[0], ids[5], ids[10], small.run_id}) == 4
    outs = await asyncio.gather(*(r.aio_result() for r in [*refs, small]))
    assert outs[0]["echo"]["got"]["items"] == [{"org": "acme", "i": i} for i in range(5)]
    assert outs[5]["echo"]["got"]["items"] == [{"org": "acme", "i": i} for i in range(5, 10)]
    assert outs[10]["echo"]["got"]["items"] == [{"org": "acme", "i": 10}, {"org": "acme", "i": 11}]
    assert outs[12]["echo"]["got"]["items"] == [{"org": "other", "i": 0}]
    assert len(await _runs(client, "digest")) == 4
    view = await client.arequest("GET", f"/runs/{ids[5]}/flow")
    assert view["kind"] == "batch" and view["count"] == 5 and len(view["triggers"]) == 5


async def test_scheduler_restart_inside_an_open_batch(
    stack: Stack, client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "digest-restart", batch=Batch(size=50, max_wait=timedelta(seconds=3)))
    await start_worker("w-digest-restart", workflows=[wf], slots=4)
    refs = [await wf.aio_run_no_wait({"i": i}) for i in range(3)]
    run_id = refs[0].run_id
    await _restart_scheduler(stack)
    refs += [await wf.aio_run_no_wait({"i": i}) for i in range(3, 5)]
    assert {r.run_id for r in refs} == {run_id}
    out = await refs[-1].aio_result()
    assert out["echo"]["got"]["items"] == [{"i": i} for i in range(5)]
    assert [r["id"] for r in await _runs(client, "digest-restart")] == [run_id]
    view = await client.arequest("GET", f"/runs/{run_id}/flow")
    assert view["state"] == "started" and [t["seq"] for t in view["triggers"]] == [1, 2, 3, 4, 5]


async def test_registration_errors_are_clear_400s(stack: Stack, tenant: str) -> None:
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    task = {"name": "t"}
    async with httpx.AsyncClient(base_url=stack.api_url,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        both = await http.post("/workflows", json={
            "name": "both", "tasks": [task],
            "debounce": {"period_s": 1, "max_wait_s": 5},
            "batch": {"size": 5, "max_wait_s": 1},
        })
        assert both.status_code == 400
        assert "debounce and batch cannot both be set" in both.json()["detail"]
        bad_key = await http.post("/workflows", json={
            "name": "badkey", "tasks": [task],
            "debounce": {"key": "input.thread +", "period_s": 1, "max_wait_s": 5},
        })
        assert bad_key.status_code == 400
        detail = bad_key.json()["detail"]
        assert "debounce key" in detail and "column" in detail, detail


async def test_a_key_that_cannot_be_evaluated_is_a_400(client: Ratchet) -> None:
    wf = _echo(client, "deb-badinput", debounce=Debounce(
        key="input.thread.id", period=timedelta(seconds=1), max_wait=timedelta(seconds=2)))
    await client.aregister(wf)
    with pytest.raises(ApiError) as bad:
        await wf.aio_run_no_wait({"thread": 5})
    assert bad.value.status == 400 and "debounce key" in bad.value.detail


async def test_idempotent_events_into_a_debounce_window(
    matcher: MatcherService, client: Ratchet, start_worker,
) -> None:
    """A repeated key joins nothing; the key names the window's run, so with until_finished it
    is free again once that run ended."""
    wf = _echo(client, "deb-idem", on_events=["chat.msg"],
               debounce=Debounce(key="input.thread", period=timedelta(milliseconds=400),
                                 max_wait=timedelta(seconds=20), keep="all"),
               idempotency_key="input.msg_id", idempotency_ttl="until_finished")
    await start_worker("w-deb-idem", workflows=[wf], slots=4)
    for msg_id in ("m1", "m1", "m2"):
        await client.events.aio_push("chat.msg", {"thread": "t", "msg_id": msg_id})

    async def finished(n: int) -> list[dict[str, Any]]:
        runs = await _runs(client, "deb-idem")
        return runs if len(runs) == n and all(r["status"] == "SUCCEEDED" for r in runs) else []

    await eventually(lambda: _truthy(finished(1)))
    first = (await finished(1))[0]
    run = await client.runs.aio_get(first["id"])
    assert [i["msg_id"] for i in run["output"]["echo"]["got"]["items"]] == ["m1", "m2"]
    await client.events.aio_push("chat.msg", {"thread": "t", "msg_id": "m1"})  # free again
    await eventually(lambda: _truthy(finished(2)))


async def _truthy(value: Any) -> bool:
    return bool(await value)
