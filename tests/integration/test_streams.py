"""Run streams end to end: ctx.put_stream → dispatcher → JetStream → SSE → r.runs.stream."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import httpx
import pytest
from ratchet import ApiError, Context, Ratchet

from libs.common import db, tokens
from tests.integration.conftest import Stack, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

TYPED = ["token ", b"\x00\xffraw", {"k": [1, 2.5, None]}, 7, ["a", True], "", "é✓"]


async def _collect(client: Ratchet, run_id: str, timeout_s: float = 30) -> list[Any]:
    async def read() -> list[Any]:
        return [chunk async for chunk in client.runs.aio_stream(run_id)]

    return await asyncio.wait_for(read(), timeout_s)


async def test_chunk_types_round_trip_for_a_subscriber_after_the_run(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"stream-types-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def speak(input: dict, ctx: Context) -> dict:
        for chunk in TYPED:
            await ctx.aio_put_stream(chunk)
        return {"n": len(TYPED)}

    await start_worker("w-stream-types", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    # Subscribed right after the trigger, before the scheduler even stored the run.
    early = asyncio.create_task(_collect(client, ref.run_id))
    assert await ref.aio_result(30) == {"speak": {"n": len(TYPED)}}
    assert await early == TYPED
    # The run is over before this one subscribed: every chunk is still there, typed, in order.
    chunks = await _collect(client, ref.run_id)
    assert chunks == TYPED
    assert [type(c) for c in chunks] == [type(c) for c in TYPED]
    # The sync iterator reads the same (in a thread: the services share this loop).
    assert await asyncio.to_thread(lambda: list(client.runs.stream(ref.run_id))) == TYPED


async def test_late_subscriber_gets_every_chunk_then_live_ones(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"stream-live-{uuid.uuid4().hex[:6]}")
    first_half = threading.Event()
    release = threading.Event()

    @wf.task(execution_timeout=60)
    def talk(input: dict, ctx: Context) -> dict:  # sync: put_stream waits in its thread
        for i in range(20):
            ctx.put_stream(f"t{i}")
        first_half.set()
        if not release.wait(30):
            raise RuntimeError("the test never released the task")
        for i in range(20, 40):
            ctx.put_stream({"i": i})
        return {}

    await start_worker("w-stream-live", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({})
    await eventually(lambda: asyncio.sleep(0, first_half.is_set()))

    received: list[Any] = []
    seen_first_half = asyncio.Event()

    async def read() -> None:
        async for chunk in client.runs.aio_stream(ref.run_id):
            received.append(chunk)
            if len(received) == 20:
                seen_first_half.set()

    reader = asyncio.create_task(read())
    try:
        # Attached after 20 chunks were put: those arrive while the task is still running.
        await asyncio.wait_for(seen_first_half.wait(), 30)
        assert not release.is_set()
        release.set()
        await asyncio.wait_for(reader, 30)
    finally:
        release.set()
        reader.cancel()
    assert received == [f"t{i}" for i in range(20)] + [{"i": i} for i in range(20, 40)]
    run = await client.runs.aio_get(ref.run_id)
    assert run["status"] == "SUCCEEDED"


async def test_stream_of_a_run_without_chunks_just_ends(
    client: Ratchet, start_worker: Any
) -> None:
    wf = client.workflow(f"stream-none-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def quiet(input: dict, ctx: Context) -> dict:
        return {}

    await start_worker("w-stream-none", workflows=[wf], slots=1)
    ref = await wf.aio_run_no_wait({})
    await ref.aio_result(30)
    assert await _collect(client, ref.run_id) == []


async def test_stream_is_tenant_scoped(
    stack: Stack, client: Ratchet, tenant: str, start_worker: Any
) -> None:
    wf = client.workflow(f"stream-mine-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def secret(input: dict, ctx: Context) -> dict:
        await ctx.aio_put_stream("mine")
        return {}

    await start_worker("w-stream-mine", workflows=[wf], slots=1)
    ref = await wf.aio_run_no_wait({})
    await ref.aio_result(30)
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        other_token = await tokens.ensure_tenant(pool, "t" + uuid.uuid4().hex[:12])
    finally:
        await pool.close()
    other = Ratchet(token=other_token, api_url=stack.api_url, grpc_addr=stack.grpc_addr)
    try:
        with pytest.raises(ApiError) as err:
            async for _ in other.runs.aio_stream(ref.run_id, appear_wait_s=0):
                pass
        assert err.value.status == 404
    finally:
        await other.aclose()
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        assert (await http.get(f"/runs/{ref.run_id}/stream")).status_code == 401
        mine = {"authorization": f"Bearer {stack.tokens[tenant]}"}  # type: ignore[attr-defined]
        assert (await http.get("/runs/no.such.run/stream", headers=mine)).status_code == 404
    assert await _collect(client, ref.run_id) == ["mine"]
