"""Child runs end to end: runs started inside a task are children of its run.

Real stack (API, scheduler, dispatcher) and SDK workers; each test has its own tenant.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Stack, eventually
from ratchet import ApiError, Context, NonRetryable, Ratchet, RunFailed

from services.scheduler.service import SchedulerService

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _status(client: Ratchet, run_id: str) -> str | None:
    run = await client.runs.aio_get(run_id, missing_ok=True)
    return None if run is None else str(run["status"])


async def test_fan_out_sums_and_every_child_links_to_its_parent(
    client: Ratchet, start_worker: Any
) -> None:
    @client.task(name="square")
    async def square(input: dict, ctx: Context) -> dict:
        return {"v": input["i"] * input["i"]}

    parent = client.workflow("fan-out")

    @parent.task()
    async def fan_out(input: dict, ctx: Context) -> dict:
        refs = await square.aio_run_many([{"i": i} for i in range(50)])
        outs = await asyncio.gather(*(ref.aio_result(60) for ref in refs))
        return {"sum": sum(o["square"]["v"] for o in outs), "ids": [r.run_id for r in refs]}

    await start_worker("w-fan", workflows=[parent, square], slots=20)
    ref = await parent.aio_run_no_wait({})
    out = await ref.aio_result(90)
    assert out["fan_out"]["sum"] == sum(i * i for i in range(50))
    ids = out["fan_out"]["ids"]
    assert len(set(ids)) == 50

    for child_id in ids[:5]:
        child = await client.runs.aio_get(child_id)
        assert child["parent_run_id"] == ref.run_id
        assert child["parent_task"] == "fan_out"
        assert child["depth"] == 1
    listed = await client.runs.aio_list(parent_run_id=ref.run_id, limit=100)
    assert sorted(r["id"] for r in listed) == sorted(ids)
    assert all(r["parent_run_id"] == ref.run_id for r in listed)
    view = await client.runs.aio_get(ref.run_id)
    assert view["children_count"] == 50
    assert {c["id"] for c in view["children"]} == set(ids)
    assert all(c["status"] == "SUCCEEDED" for c in view["children"])
    assert view["parent_run_id"] is None and view["depth"] == 0


async def test_retried_parent_gets_the_same_children_back(
    client: Ratchet, start_worker: Any
) -> None:
    @client.task(name="leaf")
    async def leaf(input: dict, ctx: Context) -> dict:
        return {"i": input["i"]}

    parent = client.workflow("retrying-parent")
    spawned: list[list[str]] = []

    @parent.task(retries=2, backoff_base=0.1)
    async def spawn(input: dict, ctx: Context) -> dict:
        refs = [await leaf.aio_run_no_wait({"i": i}) for i in range(3)]
        spawned.append([r.run_id for r in refs])
        if ctx.attempt == 0:
            raise RuntimeError("first attempt fails after spawning")
        outs = [await r.aio_result(30) for r in refs]
        return {"got": [o["leaf"]["i"] for o in outs]}

    await start_worker("w-retry", workflows=[parent, leaf], slots=6)
    ref = await parent.aio_run_no_wait({})
    out = await ref.aio_result(60)
    assert out["spawn"]["got"] == [0, 1, 2]
    assert len(spawned) == 2 and spawned[0] == spawned[1]
    children = await client.runs.aio_list(parent_run_id=ref.run_id)
    assert sorted(c["id"] for c in children) == sorted(spawned[0])


async def test_explicit_key_names_one_child(client: Ratchet, start_worker: Any) -> None:
    @client.task(name="keyed")
    async def keyed(input: dict, ctx: Context) -> dict:
        return {"v": input["v"]}

    parent = client.workflow("keying-parent")

    @parent.task()
    async def spawn(input: dict, ctx: Context) -> dict:
        first = await keyed.aio_run_no_wait({"v": 1}, key="only-one")
        again = await keyed.aio_run_no_wait({"v": 2}, key="only-one")
        other = await keyed.aio_run({"v": 3}, key="another")
        refs = await keyed.aio_run_many([{"v": 4}, {"v": 5}], keys=["only-one", "third"])
        return {
            "same": first.run_id == again.run_id == refs[0].run_id,
            "first": await again.aio_result(30),
            "other": other,
            "third": await refs[1].aio_result(30),
        }

    await start_worker("w-key", workflows=[parent, keyed], slots=4)
    ref = await parent.aio_run_no_wait({})
    out = (await ref.aio_result(60))["spawn"]
    assert out["same"] is True
    assert out["first"] == {"keyed": {"v": 1}}  # the first trigger's input won
    assert out["other"] == {"keyed": {"v": 3}}
    assert out["third"] == {"keyed": {"v": 5}}
    assert len(await client.runs.aio_list(parent_run_id=ref.run_id)) == 3
    with pytest.raises(Exception, match="key= names a child run"):
        await keyed.aio_run_no_wait({"v": 0}, key="outside")


async def test_cancelling_a_parent_cancels_children_and_grandchildren(
    client: Ratchet, start_worker: Any
) -> None:
    started: dict[str, str] = {}

    @client.task(name="grandchild")
    async def grandchild(input: dict, ctx: Context) -> dict:
        started["grandchild"] = ctx.run_id
        await asyncio.sleep(120)  # until cancelled
        return {}

    @client.task(name="child")
    async def child(input: dict, ctx: Context) -> dict:
        started["child"] = ctx.run_id
        return await grandchild.aio_run({})

    parent = client.workflow("cancelled-parent")

    @parent.task()
    async def top(input: dict, ctx: Context) -> dict:
        return await child.aio_run({})

    await start_worker("w-cancel", workflows=[parent, child, grandchild], slots=6)
    ref = await parent.aio_run_no_wait({})

    async def grandchild_running() -> bool:
        run_id = started.get("grandchild")
        return run_id is not None and await _status(client, run_id) == "RUNNING"

    await eventually(grandchild_running, timeout_s=30)
    await client.runs.aio_cancel(ref.run_id)

    async def all_cancelled() -> bool:
        ids = [ref.run_id, started["child"], started["grandchild"]]
        return [await _status(client, i) for i in ids] == ["CANCELLED"] * 3

    await eventually(all_cancelled, timeout_s=30)
    with pytest.raises(RunFailed):
        await ref.aio_result(5)
    grand = await client.runs.aio_get(started["grandchild"])
    assert grand["parent_run_id"] == started["child"] and grand["depth"] == 2


async def test_depth_limit_is_a_clear_error(client: Ratchet, stack: Stack,
                                            start_worker: Any) -> None:
    max_depth = stack.settings.max_child_depth
    nested = client.workflow("nested")

    @nested.task()
    async def dive(input: dict, ctx: Context) -> dict:
        try:
            return await nested.aio_run({"level": input["level"] + 1})
        except ApiError as exc:
            return {"refused_at": input["level"], "status": exc.status, "error": str(exc)}

    await start_worker("w-deep", workflows=[nested], slots=max_depth + 2)
    out: Any = await nested.aio_run({"level": 0}, timeout_s=90)
    while "dive" in out:
        out = out["dive"]
    assert out["refused_at"] == max_depth  # the run at the deepest level may not spawn
    assert out["status"] == 400
    assert "max_child_depth" in out["error"]


async def test_fan_out_limit_is_a_clear_error(client: Ratchet, stack: Stack,
                                              start_worker: Any) -> None:
    @client.task(name="noop")
    async def noop(input: dict, ctx: Context) -> dict:
        return {}

    limit = stack.settings.max_children_per_task
    parent = client.workflow("greedy")

    @parent.task()
    async def greedy(input: dict, ctx: Context) -> dict:
        ctx._reserve_spawns(limit - 1)  # as if it had started limit - 1 children already
        last = await noop.aio_run_no_wait({})
        try:
            await noop.aio_run_many([{}, {}])
        except ApiError as exc:
            return {"last": last.run_id, "status": exc.status, "error": str(exc)}
        return {"last": last.run_id, "status": 0, "error": ""}

    await start_worker("w-greedy", workflows=[parent, noop], slots=4)
    ref = await parent.aio_run_no_wait({})
    out = (await ref.aio_result(60))["greedy"]
    assert out["status"] == 400
    assert "max_children_per_task" in out["error"]
    listed = await client.runs.aio_list(parent_run_id=ref.run_id)
    assert [r["id"] for r in listed] == [out["last"]]


async def test_parent_filter_and_parent_links_stay_within_the_tenant(
    client: Ratchet, stack: Stack, start_worker: Any
) -> None:
    @client.task(name="kid")
    async def kid(input: dict, ctx: Context) -> dict:
        return {}

    parent = client.workflow("owner")
    seen: dict[str, str] = {}

    @parent.task()
    async def own(input: dict, ctx: Context) -> dict:
        seen["task_id"] = ctx.task_id
        await (await kid.aio_run_no_wait({})).aio_result(30)
        return {}

    await start_worker("w-owner", workflows=[parent, kid], slots=4)
    ref = await parent.aio_run_no_wait({})
    await ref.aio_result(30)
    assert len(await client.runs.aio_list(parent_run_id=ref.run_id)) == 1

    from libs.common import db, tokens  # another tenant, made like the fixture makes one

    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        token = await tokens.ensure_tenant(pool, "other-" + ref.run_id[:12])
    finally:
        await pool.close()
    other = Ratchet(token=token, api_url=stack.api_url, grpc_addr=stack.grpc_addr)
    try:
        assert await other.runs.aio_list(parent_run_id=ref.run_id) == []
        other_wf = other.workflow("intruder")

        @other_wf.task()
        async def intrude(input: dict, ctx: Context) -> dict:
            return {}

        await other.aregister(other_wf)
        body = {"input": {}, "parent": {"run_id": ref.run_id, "task_id": seen["task_id"]}}
        with pytest.raises(ApiError) as err:
            await other.arequest("POST", "/workflows/intruder/run", json=body)
        assert err.value.status == 404
    finally:
        await other.aclose()


async def test_links_and_the_cascade_survive_a_scheduler_restart(
    client: Ratchet, stack: Stack, start_worker: Any
) -> None:
    started: dict[str, str] = {}

    @client.task(name="sleeper")
    async def sleeper(input: dict, ctx: Context) -> dict:
        started["child"] = ctx.run_id
        await asyncio.sleep(120)  # until cancelled
        return {}

    parent = client.workflow("restarted-parent")

    @parent.task()
    async def wait_child(input: dict, ctx: Context) -> dict:
        return await sleeper.aio_run({})

    await start_worker("w-restart", workflows=[parent, sleeper], slots=4)
    ref = await parent.aio_run_no_wait({})

    async def child_running() -> bool:
        run_id = started.get("child")
        return run_id is not None and await _status(client, run_id) == "RUNNING"

    await eventually(child_running, timeout_s=30)
    await stack.scheduler.stop()
    stack.scheduler = SchedulerService(stack.settings)
    await stack.scheduler.start()
    assert stack.scheduler.engine.children_of(ref.run_id) == {started["child"]}

    await client.runs.aio_cancel(ref.run_id)

    async def both_cancelled() -> bool:
        return [await _status(client, i) for i in (ref.run_id, started["child"])] == [
            "CANCELLED", "CANCELLED"
        ]

    await eventually(both_cancelled, timeout_s=30)


async def test_a_failed_child_raises_run_failed_in_its_parent(
    client: Ratchet, start_worker: Any
) -> None:
    @client.task(name="flaky")
    async def flaky(input: dict, ctx: Context) -> dict:
        if input["i"] == 1:
            raise NonRetryable("child 1 cannot")
        return {"i": input["i"]}

    parent = client.workflow("careful-parent")

    @parent.task()
    async def careful(input: dict, ctx: Context) -> dict:
        refs = await flaky.aio_run_many([{"i": i} for i in range(3)])
        outs = await asyncio.gather(*(ref.aio_result(30) for ref in refs), return_exceptions=True)
        return {
            "ok": [o["flaky"]["i"] for o in outs if isinstance(o, dict)],
            "failed": [str(o) for o in outs if isinstance(o, RunFailed)],
        }

    await start_worker("w-careful", workflows=[parent, flaky], slots=4)
    out = (await parent.aio_run({}, timeout_s=60))["careful"]
    assert out["ok"] == [0, 2]
    assert len(out["failed"]) == 1 and "child 1 cannot" in out["failed"][0]


async def test_a_sync_task_starts_children_too(client: Ratchet, start_worker: Any) -> None:
    @client.task(name="double")
    async def double(input: dict, ctx: Context) -> dict:
        return {"v": 2 * input["v"]}

    parent = client.workflow("sync-parent")

    @parent.task()
    def sync_parent(input: dict, ctx: Context) -> dict:  # runs in a worker thread
        refs = double.run_many([{"v": 1}, {"v": 2}])
        one = double.run({"v": 10})
        return {"vs": [r.result(30)["double"]["v"] for r in refs] + [one["double"]["v"]]}

    await start_worker("w-sync", workflows=[parent, double], slots=4)
    ref = await parent.aio_run_no_wait({})
    out = await ref.aio_result(60)
    assert out["sync_parent"]["vs"] == [2, 4, 20]
    assert len(await client.runs.aio_list(parent_run_id=ref.run_id)) == 3
