"""Idempotency keys (docs/flow-control.md): API single and bulk triggers, concurrent requests,
TTL and until_finished, and events (the Ratchet-Idempotency-Key header, a workflow's CEL key)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import Stack, eventually
from ratchet import Context, Ratchet

from libs.common import db, flow
from services.matcher.service import MatcherService
from services.scheduler.persistence import flow as rows

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-idem-{uuid.uuid4().hex[:6]}",
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


async def _run_ids(client: Ratchet, workflow: str) -> set[str]:
    return {r["id"] for r in await client.runs.aio_list(workflow=workflow, limit=500)}


async def test_a_repeated_key_answers_the_first_run(client: Ratchet, start_worker) -> None:
    wf = _echo(client, "idem-single")
    await start_worker("w-idem", workflows=[wf], slots=4)
    first = await wf.aio_run_no_wait({"n": 1}, idempotency_key="order-42")
    again = await wf.aio_run_no_wait({"n": 2}, idempotency_key="order-42")
    other = await wf.aio_run_no_wait({"n": 3}, idempotency_key="order-43")
    assert not first.deduplicated and again.deduplicated and not other.deduplicated
    assert again.run_id == first.run_id != other.run_id
    assert (await again.aio_result())["echo"] == {"got": {"n": 1}}  # the first trigger's input
    assert await _run_ids(client, "idem-single") == {first.run_id, other.run_id}
    # Keys are per workflow: the same key on another workflow starts its own run.
    wf2 = _echo(client, "idem-single-2")
    await start_worker("w-idem-2", workflows=[wf2], slots=1)
    elsewhere = await wf2.aio_run_no_wait({}, idempotency_key="order-42")
    assert not elsewhere.deduplicated and elsewhere.run_id != first.run_id


async def test_concurrent_requests_with_one_key_start_one_run(
    stack: Stack, tenant: str, client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "idem-race")
    await start_worker("w-race", workflows=[wf], slots=4)
    await client.aregister(wf)
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=stack.api_url,
                                 headers={"authorization": f"Bearer {token}"}) as http:
        async def trigger(i: int) -> dict[str, Any]:
            resp = await http.post("/workflows/idem-race/run",
                                   json={"input": {"i": i}, "idempotency_key": "same"})
            assert resp.status_code == 202, resp.text
            return resp.json()  # type: ignore[no-any-return]
        answers = await asyncio.gather(*(trigger(i) for i in range(30)))
    assert len({a["run_id"] for a in answers}) == 1
    assert sum(not a["deduplicated"] for a in answers) == 1
    run_id = answers[0]["run_id"]
    await eventually(lambda: _finished(client, run_id))
    assert await _run_ids(client, "idem-race") == {run_id}


async def _finished(client: Ratchet, run_id: str) -> bool:
    run = await client.runs.aio_get(run_id, missing_ok=True)
    return run is not None and run["status"] == "SUCCEEDED"


async def test_bulk_triggers_claim_keys(client: Ratchet, start_worker) -> None:
    wf = _echo(client, "idem-bulk")
    await start_worker("w-bulk", workflows=[wf], slots=8)
    before = await wf.aio_run_no_wait({"n": 0}, idempotency_key="k0")
    refs = await wf.aio_run_many(
        [{"n": i} for i in range(5)], idempotency_keys=["k0", "k1", "k1", None, "k2"],
    )
    assert [r.deduplicated for r in refs] == [True, False, True, False, False]
    assert refs[0].run_id == before.run_id
    assert refs[2].run_id == refs[1].run_id
    assert len({r.run_id for r in refs}) == 4
    await asyncio.gather(*(r.aio_result() for r in refs))
    assert await _run_ids(client, "idem-bulk") == {r.run_id for r in refs}


async def test_a_key_expires_after_its_ttl(client: Ratchet, start_worker) -> None:
    wf = _echo(client, "idem-ttl")
    await start_worker("w-ttl", workflows=[wf], slots=4)
    first = await wf.aio_run_no_wait({}, idempotency_key="short",
                                     idempotency_ttl=timedelta(milliseconds=300))
    seen: list[str] = []

    async def fresh_run() -> bool:
        ref = await wf.aio_run_no_wait({}, idempotency_key="short",
                                       idempotency_ttl=timedelta(milliseconds=300))
        seen.append(ref.run_id)
        return ref.run_id != first.run_id and not ref.deduplicated

    await eventually(fresh_run, interval_s=0.1)
    assert seen[-1] != first.run_id


async def test_until_finished_holds_the_key_while_the_run_lasts(
    client: Ratchet, start_worker,
) -> None:
    gate = asyncio.Event()
    wf = client.workflow("idem-until")

    @wf.task()
    async def slow(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        await gate.wait()
        return {}

    await start_worker("w-until", workflows=[wf], slots=4)
    first = await wf.aio_run_no_wait({}, idempotency_key="job", idempotency_ttl="until_finished")

    async def running() -> bool:
        run = await client.runs.aio_get(first.run_id, missing_ok=True)
        return run is not None and run["status"] == "RUNNING"

    await eventually(running)
    again = await wf.aio_run_no_wait({}, idempotency_key="job", idempotency_ttl="until_finished")
    assert again.deduplicated and again.run_id == first.run_id
    gate.set()
    await first.aio_result()
    after = await wf.aio_run_no_wait({}, idempotency_key="job", idempotency_ttl="until_finished")
    assert not after.deduplicated and after.run_id != first.run_id
    await after.aio_result()


async def test_events_with_one_idempotency_key_start_one_run(
    matcher: MatcherService, client: Ratchet, start_worker,
) -> None:
    wf = _echo(client, "idem-events", on_events=["idem.order"])
    keyed = _echo(client, "idem-events-cel", on_events=["idem.paid"],
                  idempotency_key="input.order", idempotency_ttl=timedelta(hours=1))
    await start_worker("w-evt", workflows=[wf, keyed], slots=8)
    for i in range(3):  # three events, three event ids, one header key
        await client.events.aio_push("idem.order", {"i": i}, idempotency_key="evt-7")
    for order in ("a", "b", "a", "a", "b"):  # the workflow's CEL key: one run per order
        await client.events.aio_push("idem.paid", {"order": order})
    # Markers, pushed last: once their runs exist, every earlier event was applied.
    await client.events.aio_push("idem.order", {"i": "marker"})
    await client.events.aio_push("idem.paid", {"order": "marker"})

    async def inputs(workflow: str, field: str) -> list[str]:
        runs = await client.runs.aio_list(workflow=workflow, limit=50)
        return sorted([str((await client.runs.aio_get(r["id"]))["input"][field]) for r in runs])

    async def settled() -> bool:
        return ("marker" in await inputs("idem-events", "i")
                and "marker" in await inputs("idem-events-cel", "order"))

    await eventually(settled)
    assert await inputs("idem-events", "i") == ["0", "marker"]  # the first keyed event's run
    assert await inputs("idem-events-cel", "order") == ["a", "b", "marker"]


async def test_expired_keys_and_old_windows_are_pruned(stack: Stack, tenant: str) -> None:
    """What the scheduler's flow maintenance deletes: keys past their TTL (never one held
    until_finished) and, with a retention, windows that ended before it with their triggers."""
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO idempotency_keys (tenant_id, workflow, key, run_id, expires_at,"
                " until_finished) VALUES ($1, 'w', 'old', 'r1', now() - interval '1 hour', false),"
                " ($1, 'w', 'live', 'r2', now() + interval '1 hour', false),"
                " ($1, 'w', 'until', 'r3', 'infinity', true)", tenant)
            await flow.expire_keys(conn)
            keys = {r["key"] for r in await conn.fetch(
                "SELECT key FROM idempotency_keys WHERE tenant_id = $1", tenant)}
            assert keys == {"live", "until"}
            await conn.execute(
                "INSERT INTO flow_windows (tenant_id, run_id, workflow, kind, state, items,"
                " started_at) VALUES ($1, 'old', 'w', 'batch', 'started', 1,"
                " now() - interval '3 days'), ($1, 'new', 'w', 'batch', 'started', 1, now())",
                tenant)
            await conn.execute(
                "INSERT INTO flow_items (tenant_id, trigger_id, run_id, seq, trigger)"
                " VALUES ($1, 'a', 'old', 1, ''), ($1, 'b', 'new', 1, '')", tenant)
            assert await rows.prune(conn, 2) >= 1
            left = {r["run_id"] for r in await conn.fetch(
                "SELECT run_id FROM flow_items WHERE tenant_id = $1", tenant)}
            assert left == {"new"}
            assert await conn.fetchval(
                "SELECT count(*) FROM flow_windows WHERE tenant_id = $1", tenant) == 1
    finally:
        await pool.close()
