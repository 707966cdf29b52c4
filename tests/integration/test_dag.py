"""Single tasks and DAGs end to end: API → scheduler → dispatcher → SDK worker."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from conftest import eventually
from ratchet import ApiError, Context, Ratchet, RunFailed

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Doc(msgspec.Struct):
    doc_id: str
    user: str


async def test_single_task_returns_output(client: Ratchet, start_worker) -> None:
    @client.task(name="echo")
    async def echo(input: dict, ctx: Context) -> dict:
        return {"got": input, "attempt": ctx.attempt, "run": ctx.run_id}

    await start_worker("w1", workflows=[echo], slots=4)
    ref = await echo.aio_run_no_wait({"x": 1})
    out = await ref.aio_result(30)
    assert out["echo"]["got"] == {"x": 1}
    assert out["echo"]["attempt"] == 0
    assert out["echo"]["run"] == ref.run_id
    run = await client.runs.aio_get(ref.run_id)
    assert run["status"] == "SUCCEEDED"
    assert [t["status"] for t in run["tasks"]] == ["SUCCEEDED"]


async def test_diamond_dag_order_and_outputs(client: Ratchet, start_worker) -> None:
    wf = client.workflow("diamond", input=Doc)
    order: list[str] = []

    @wf.task()
    async def fetch(input: Doc, ctx: Context) -> dict:
        order.append("fetch")
        return {"text": f"doc {input.doc_id} by {input.user}"}

    @wf.task(parents=[fetch])
    def left(input: Doc, ctx: Context) -> dict:  # sync: runs in a thread
        order.append("left")
        return {"words": len(ctx.parent_output(fetch)["text"].split())}

    @wf.task(parents=[fetch])
    async def right(input: Doc, ctx: Context) -> dict:
        order.append("right")
        return {"upper": ctx.parent_output(fetch)["text"].upper()}

    @wf.task(parents=[left, right])
    async def join(input: Doc, ctx: Context) -> dict:
        order.append("join")
        return {"words": ctx.parent_output(left)["words"], "upper": ctx.parent_output("right")["upper"]}

    await start_worker("w-diamond", workflows=[wf], slots=4)
    out = await wf.aio_run(Doc(doc_id="7", user="ann"), timeout_s=30)
    assert out["fetch"] == {"text": "doc 7 by ann"}
    assert out["left"] == {"words": 4}
    assert out["right"] == {"upper": "DOC 7 BY ANN"}
    assert out["join"] == {"words": 4, "upper": "DOC 7 BY ANN"}
    assert order[0] == "fetch" and order[-1] == "join"
    assert sorted(order[1:3]) == ["left", "right"]


async def test_many_runs_share_slots(client: Ratchet, start_worker) -> None:
    running = 0
    peak = 0

    @client.task(name="slow")
    async def slow(input: dict, ctx: Context) -> dict:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return {"i": input["i"]}

    await start_worker("w-slots", workflows=[slow], slots=3)
    refs = [await slow.aio_run_no_wait({"i": i}) for i in range(20)]
    outs = await asyncio.gather(*(r.aio_result(60) for r in refs))
    assert sorted(o["slow"]["i"] for o in outs) == list(range(20))
    assert 1 <= peak <= 3


async def test_failure_raises_run_failed(client: Ratchet, start_worker) -> None:
    @client.task(name="boom")
    async def boom(input: dict, ctx: Context) -> dict:
        raise ValueError("no good")

    await start_worker("w-boom", workflows=[boom], slots=2)
    with pytest.raises(RunFailed) as info:
        await boom.aio_run({}, timeout_s=30)
    assert info.value.status == "FAILED"
    assert info.value.errors["boom"]["type"] == "ValueError"
    assert "no good" in info.value.errors["boom"]["message"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"name": "a", "parents": ["b"]}, {"name": "b", "parents": ["a"]}], "cycle"),
        ([{"name": "a", "parents": ["ghost"]}], "unknown parent"),
        ([{"name": "a"}, {"name": "a"}], "duplicate"),
        ([], "no tasks"),
    ],
)
async def test_bad_registration_is_400(client: Ratchet, tasks: list, message: str) -> None:
    with pytest.raises(ApiError) as info:
        await client.arequest("POST", "/workflows", json={"name": "bad", "tasks": tasks})
    assert info.value.status == 400
    assert message in info.value.detail


async def test_unknown_workflow_is_404(client: Ratchet) -> None:
    with pytest.raises(ApiError) as info:
        await client.arequest("POST", "/workflows/nope/run", json={"input": {}})
    assert info.value.status == 404


async def test_bad_token_is_401(stack, client: Ratchet) -> None:
    other = Ratchet(token="wrong", api_url=stack.api_url, grpc_addr=stack.grpc_addr)
    with pytest.raises(ApiError) as info:
        await other.arequest("GET", "/workflows")
    assert info.value.status == 401
    await other.aclose()


async def test_run_events_list_every_transition_in_order(client: Ratchet, start_worker) -> None:
    wf = client.workflow("historic")

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:
        return {"n": 1}

    @wf.task(parents=[first], retries=1)
    async def second(input: dict, ctx: Context) -> dict:
        if ctx.attempt == 0:
            raise RuntimeError("flaky once")
        return {"n": 2}

    await start_worker("w-historic", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    await ref.aio_result(30)
    events = await client.arequest("GET", f"/runs/{ref.run_id}/events")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [(e["kind"], e["task_name"], e["attempt"]) for e in events]
    assert kinds[0] == ("run.created", None, None)
    assert kinds[-1] == ("run.succeeded", None, None)
    first_events = [k for k, name, _ in kinds if name == "first"]
    assert first_events == ["task.queued", "task.assigned", "task.running", "task.succeeded"]
    second_events = [(k, a) for k, name, a in kinds if name == "second"]
    assert second_events[-1] == ("task.succeeded", 1)
    retry = next(e for e in events if e["kind"] == "task.retrying")
    assert retry["detail"]["message"] == "flaky once"
    # The second task starts only after the first succeeded.
    assert kinds.index(("task.succeeded", "first", 0)) < kinds.index(("task.queued", "second", 0))


async def test_bulk_trigger_spans_several_messages(client: Ratchet, start_worker) -> None:
    # ~2 KiB inputs: 300 runs need several TriggerRuns messages of at most 128 KiB.
    @client.task(name="bulk-echo")
    async def bulk_echo(input: dict, ctx: Context) -> dict:
        return {"i": input["i"], "pad": len(input["pad"])}

    await start_worker("w-bulk", workflows=[bulk_echo], slots=50)
    await client._register_async(bulk_echo)
    body = {"runs": [{"input": {"i": i, "pad": "x" * 2048}} for i in range(300)]}
    out = await client.arequest("POST", "/workflows/bulk-echo/run/bulk", json=body)
    assert len(set(out["run_ids"])) == 300
    for i, run_id in enumerate(out["run_ids"]):
        async def done(run_id: str = run_id) -> bool:
            try:
                run = await client.runs.aio_get(run_id)
            except ApiError as exc:  # accepted, not yet written by the scheduler
                if exc.status != 404:
                    raise
                return False
            return run["status"] == "SUCCEEDED"

        await eventually(done, timeout_s=60)
        run = await client.runs.aio_get(run_id)
        assert run["output"] == {"bulk-echo": {"i": i, "pad": 2048}}

    with pytest.raises(ApiError) as info:
        await client.arequest("POST", "/workflows/bulk-echo/run/bulk", json={"runs": []})
    assert info.value.status == 400
