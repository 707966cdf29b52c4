"""Forking a run (docs/interaction.md) on the real stack: reused and re-run tasks, a new
input, `forked_from` on both runs, and a durable task forked from a step of its log."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from conftest import eventually
from ratchet import Context, DurableContext, Ratchet, RunFailed
from ratchet.errors import ApiError

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_fork_reuses_what_does_not_depend_on_from_task_and_reruns_the_rest(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"pipeline-{uuid.uuid4().hex[:6]}")

    @wf.task()
    def fetch(input: dict, ctx: Context) -> dict:
        return {"nonce": uuid.uuid4().hex}

    @wf.task()
    def side(input: dict, ctx: Context) -> dict:  # depends on nothing
        return {"nonce": uuid.uuid4().hex}

    @wf.task(parents=[fetch])
    def summarize(input: dict, ctx: Context) -> dict:
        if input.get("prompt") == "bad":
            raise ValueError("the prompt is bad")
        return {"nonce": uuid.uuid4().hex, "prompt": input["prompt"],
                "fetched": ctx.parent_output(fetch)["nonce"]}

    @wf.task(parents=[summarize])
    def publish(input: dict, ctx: Context) -> dict:
        return {"nonce": uuid.uuid4().hex, "of": ctx.parent_output(summarize)["nonce"]}

    await start_worker("w-pipeline", workflows=[wf], slots=4)
    ref = await wf.aio_run_no_wait({"prompt": "bad"})
    with pytest.raises(RunFailed):
        await ref.aio_result(60)
    first = await client.runs.aio_get(ref.run_id)
    assert first["output"].keys() == {"fetch", "side"}

    fork = await client.runs.aio_fork(ref.run_id, from_task="summarize",
                                      input={"prompt": "good"})
    out = await fork.aio_result(60)
    assert out["fetch"] == first["output"]["fetch"]  # reused, not run again
    assert out["side"] == first["output"]["side"]
    assert out["summarize"]["prompt"] == "good"
    assert out["summarize"]["fetched"] == first["output"]["fetch"]["nonce"]
    assert out["publish"]["of"] == out["summarize"]["nonce"]
    forked = await client.runs.aio_get(fork.run_id)
    assert forked["forked_from"] == ref.run_id and forked["from_task"] == "summarize"
    assert forked["input"] == {"prompt": "good"}
    assert (await client.runs.aio_get(ref.run_id))["forks"] == [fork.run_id]
    # Attempts show what ran: the reused tasks never did in the fork.
    ran = {t["name"] for t in forked["tasks"] if t["attempts"]}
    assert ran == {"summarize", "publish"}

    # From the root, everything downstream runs again; the untouched branch is reused.
    again = await client.runs.aio_fork(fork.run_id, from_task="fetch")
    out2 = await again.aio_result(60)
    assert out2["side"] == first["output"]["side"]
    assert out2["fetch"] != out["fetch"] and out2["summarize"]["prompt"] == "good"

    with pytest.raises(ApiError) as unknown:
        await client.runs.aio_fork(ref.run_id, from_task="nope")
    assert unknown.value.status == 404 and "summarize" in str(unknown.value)
    with pytest.raises(ApiError) as not_durable:
        await client.runs.aio_fork(ref.run_id, from_task="fetch", from_step=1)
    assert not_durable.value.status == 400


async def test_a_durable_task_forked_from_a_step_keeps_the_log_before_it(
    client: Ratchet, start_worker: Any
) -> None:
    @client.durable_task(name="agent", execution_timeout=timedelta(minutes=2))
    async def agent(input: dict, ctx: DurableContext) -> dict:
        ctx.set_state({"step": "asking x"})                          # position 0
        x = await ctx.aio_wait_for_signal("x")                       # position 1
        ctx.set_state({"step": "asking y"})                          # position 2
        y = await ctx.aio_wait_for_signal("y")                       # position 3
        return {"x": x, "y": y, "input": input}

    await start_worker("w-agent", workflows=[agent], slots=2)
    ref = await agent.aio_run_no_wait({"v": 1})
    await client.runs.aio_signal(ref.run_id, "x", 1)
    await client.runs.aio_signal(ref.run_id, "y", 2)
    assert (await ref.aio_result(60))["agent"] == {"x": 1, "y": 2, "input": {"v": 1}}

    fork = await client.runs.aio_fork(ref.run_id, from_task="agent", from_step=2)

    async def asking_y() -> bool:
        return await client.runs.aio_state(fork.run_id) == {"step": "asking y"}

    await eventually(asking_y, timeout_s=30)
    await client.runs.aio_signal(fork.run_id, "y", 20)
    # x came from the kept log (no new "x" was sent); y was waited for again.
    assert (await fork.aio_result(60))["agent"] == {"x": 1, "y": 20, "input": {"v": 1}}
    forked = await client.runs.aio_get(fork.run_id)
    assert forked["forked_from"] == ref.run_id and forked["from_step"] == 2
