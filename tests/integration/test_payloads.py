"""Large payloads end to end: offloaded to the store, resolved by every reader, limited with
clear errors, and never able to wedge a dispatcher (issue 11).

Runs on the session stack (local payload store); test_payloads_s3.py repeats a round trip with
the S3 backend against moto's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
from conftest import Stack, WorkerFactory, eventually
from ratchet import ApiError, Context, NonRetryable, Ratchet, RunFailed
from raw_worker import RawWorker

from libs.common.messages import TaskReport
from libs.common.payloads import PayloadRef, collect_garbage, maybe_ref
from libs.common.proto import worker_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="session")

MiB = 1024 * 1024
T = TypeVar("T")


def _blob(n: int, seed: str) -> str:
    """n characters that differ from run to run (so no two tests share a blob)."""
    unit = hashlib.sha256(seed.encode()).hexdigest()
    return (unit * (n // len(unit) + 1))[:n]


def _auth(stack: Stack, tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.tokens[tenant]}"}  # type: ignore[attr-defined]


async def _row_bytes(stack: Stack, sql: str, *args: Any) -> bytes:
    pool = stack.scheduler  # any service's pool would do; the scheduler's is always up
    conn = await pool._pool.acquire()  # type: ignore[attr-defined]
    try:
        value = await conn.fetchval(sql, *args)
    finally:
        await pool._pool.release(conn)  # type: ignore[attr-defined]
    return bytes(value)


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as c:
        yield c


async def test_five_mb_input_and_output_round_trip(
    client: Ratchet, start_worker: WorkerFactory, stack: Stack, tenant: str
) -> None:
    big_in = _blob(5 * MiB, tenant + "in")
    big_out = _blob(5 * MiB, tenant + "out")
    wf = client.workflow("big-" + uuid.uuid4().hex[:6])

    @wf.task()
    async def produce(input: dict, ctx: Context) -> dict:
        assert input["text"] == big_in
        return {"text": big_out}

    @wf.task(parents=[produce])
    async def consume(input: dict, ctx: Context) -> dict:
        text = ctx.parent_output(produce)["text"]
        return {"same": text == big_out, "input_len": len(input["text"])}

    await start_worker("w-big", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({"text": big_in})
    out = await ref.aio_result(60)
    assert out["produce"] == {"text": big_out}
    assert out["consume"] == {"same": True, "input_len": 5 * MiB}
    # In PostgreSQL (and so on NATS) both travelled as references, not as 5 MB of JSON.
    stored_in = await _row_bytes(stack, "SELECT input FROM runs WHERE id = $1", ref.run_id)
    stored_out = await _row_bytes(
        stack, "SELECT output FROM tasks WHERE run_id = $1 AND name = 'produce'", ref.run_id
    )
    for stored in (stored_in, stored_out):
        found = maybe_ref(stored)
        assert found is not None and found.tenant == tenant and found.size > 5 * MiB
    run = await client.runs.aio_get(ref.run_id)
    assert run["input"] == {"text": big_in}
    assert run["tasks"][0]["output"] in ({"text": big_out}, {"same": True, "input_len": 5 * MiB})


async def test_on_failure_sees_large_input_and_errors(
    client: Ratchet, start_worker: WorkerFactory
) -> None:
    big_in = _blob(MiB, uuid.uuid4().hex)
    wf = client.workflow("bigfail-" + uuid.uuid4().hex[:6])

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:
        return {"text": input["text"][::-1]}

    @wf.task(parents=[first])
    async def second(input: dict, ctx: Context) -> dict:
        raise NonRetryable("boom " + ctx.parent_output(first)["text"][:10])

    @wf.on_failure_task()
    async def cleanup(input: dict, ctx: Context) -> dict:
        return {"input_len": len(input["text"]), "errors": ctx.task_errors()}

    await start_worker("w-bigfail", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({"text": big_in})
    with pytest.raises(RunFailed):
        await ref.aio_result(60)
    run = await client.runs.aio_get(ref.run_id)
    cleanup_out = run["output"]["cleanup"]
    assert cleanup_out["input_len"] == MiB
    assert cleanup_out["errors"]["second"]["message"] == "boom " + big_in[::-1][:10]


async def test_output_over_the_limit_fails_and_the_next_run_completes(
    client: Ratchet, start_worker: WorkerFactory, stack: Stack
) -> None:
    wf = client.workflow("huge-" + uuid.uuid4().hex[:6])

    @wf.task(retries=3)
    async def huge(input: dict, ctx: Context) -> Any:
        if input.get("small"):
            return {"ok": 1}
        return "x" * (200 * 1024 * 1024)

    await start_worker("w-huge", workflows=[wf], slots=1)
    ref = await wf.aio_run_no_wait({})
    with pytest.raises(RunFailed) as failed:
        await ref.aio_result(120)
    error = failed.value.errors["huge"]
    assert error["type"] == "PayloadTooLarge"
    limit = stack.settings.max_payload_bytes
    assert str(limit) in error["message"] and str(200 * 1024 * 1024 + 2) in error["message"]
    run = await client.runs.aio_get(ref.run_id)
    assert len(run["tasks"][0]["attempts"]) == 1  # non-retryable: retries=3 not used
    assert await wf.aio_run({"small": True}, timeout_s=30) == {"huge": {"ok": 1}}


async def test_inline_output_from_an_old_client_is_offloaded_by_the_dispatcher(
    client: Ratchet, stack: Stack, tenant: str
) -> None:
    """Today's wedge, through a client that does not offload: a 5 MB output sent inline."""
    name = "raw-" + uuid.uuid4().hex[:6]
    action = f"{name}:t"
    await client.arequest("POST", "/workflows", json={
        "name": name, "tasks": [{"name": "t", "action": action}]})
    worker = RawWorker(stack.grpc_addr, stack.tokens[tenant], [action])  # type: ignore[attr-defined]
    big = msgspec.json.encode({"text": _blob(5 * MiB, tenant)})
    try:
        await worker.connect()
        for output in (big, b'{"n":1}'):
            run = await client.arequest("POST", f"/workflows/{name}/run", json={"input": {}})
            msg = await worker.next_message()
            task = msg.assignments.items[0]
            await worker.send(pb.WorkerMessage(events=pb.TaskEvents(events=[
                pb.TaskEvent(task_id=task.task_id, attempt=task.attempt, kind=pb.STARTED),
                pb.TaskEvent(task_id=task.task_id, attempt=task.attempt, kind=pb.COMPLETED,
                             output=output),
            ])))
            view = await client.arequest("GET", f"/runs/{run['run_id']}",
                                         params={"wait_s": 30})
            assert view["status"] == "SUCCEEDED"
            assert view["output"] == {"t": msgspec.json.decode(output)}
    finally:
        await worker.close()


async def test_unpublishable_report_fails_its_attempt_and_others_flow(
    client: Ratchet, start_worker: WorkerFactory, stack: Stack, tenant: str
) -> None:
    """A report NATS refuses (here: a 5 MB output that skipped every offloading step) fails its
    own attempt for good; the dispatcher keeps relaying everything else."""
    wf = client.workflow("poison-" + uuid.uuid4().hex[:6])
    gate = asyncio.Event()

    @wf.task(retries=2)
    async def slow(input: dict, ctx: Context) -> dict:
        if input.get("hold"):
            await gate.wait()
        return {"n": input.get("n", 0)}

    await start_worker("w-poison", workflows=[wf], slots=2)
    held = await wf.aio_run_no_wait({"hold": True})

    async def running() -> bool:
        try:
            run = await client.runs.aio_get(held.run_id)
        except ApiError:  # not stored yet
            return False
        return bool(run["tasks"] and run["tasks"][0]["status"] == "RUNNING")

    await eventually(running, 30)
    run = await client.runs.aio_get(held.run_id)
    task = run["tasks"][0]
    poison = TaskReport(
        kind="completed", task_id=task["id"], attempt=task["attempt"],
        worker_id=task["worker_id"], ts_ms=1, output=b'"' + b"y" * (5 * MiB) + b'"',
    )
    # Straight onto the publisher's queue, as a report that bypassed the size checks would be.
    await stack.dispatcher._events.put((task["worker_id"], tenant, [poison]))
    with pytest.raises(RunFailed) as failed:
        await held.aio_result(60)
    assert failed.value.errors["slow"]["type"] == "PayloadTooLarge"
    gate.set()
    assert await wf.aio_run({"n": 10}, timeout_s=30) == {"slow": {"n": 10}}


async def _peak_memory(work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """`work`'s result, and the most Python allocated meanwhile above where it started (every
    thread of this process: the in-process API, dispatcher and scheduler count too)."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = await work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


async def test_sdk_upload_and_download_hold_a_large_payload_once(
    client: Ratchet, tenant: str
) -> None:
    """Issue 11: the SDK streams payloads both ways. Beyond the bytes the caller passes in, an
    upload holds only slices (it used to hold two more copies of the unsent body); a download
    holds the buffer it returns and chunks, never a join of them. The API streams its side."""
    size = 32 * MiB
    data = _blob(size, tenant).encode()
    transport = client._transport
    ref, up_peak = await _peak_memory(lambda: transport.aupload("mem-" + tenant, data))
    assert ref.size == size and ref.sha256 == hashlib.sha256(data).hexdigest()
    assert up_peak < size // 4, f"upload peaked {up_peak / MiB:.1f} MiB above its input"
    got, down_peak = await _peak_memory(lambda: transport.adownload(ref))
    assert got == data
    assert down_peak - size < size // 4, f"download peaked {down_peak / MiB:.1f} MiB"


async def test_a_worker_holds_a_large_output_at_most_twice_and_a_half(
    client: Ratchet, start_worker: WorkerFactory, stack: Stack, tenant: str
) -> None:
    """The task's value and its JSON exist together only while msgspec encodes (whose buffer
    grows to 1.5x before it is trimmed: tracemalloc counts the whole allocation, resident
    memory only what was written). The upload then holds the JSON alone; before issue 11 it
    held the value, the JSON and two copies of the unsent body: 4x."""
    size = 32 * MiB
    wf = client.workflow("bigout-" + uuid.uuid4().hex[:6])

    @wf.task()
    async def produce(input: dict, ctx: Context) -> str:
        return "o" * size

    await start_worker("w-bigout", workflows=[wf], slots=1)

    async def run_until_done() -> str:
        # Waiting on the row, not on the result: reading the output back would be measured too.
        ref = await wf.aio_run_no_wait({})

        async def finished() -> bool:
            return await _run_status(stack, tenant, ref.run_id) == "SUCCEEDED"

        await eventually(finished, 60)
        return ref.run_id

    run_id, peak = await _peak_memory(run_until_done)
    assert peak < 2.75 * size, f"peaked {peak / size:.2f}x the {size // MiB} MiB output"
    out = await client.runs.aio_get(run_id)
    assert out["output"]["produce"] == "o" * size


async def _run_status(stack: Stack, tenant: str, run_id: str) -> str | None:
    pool = stack.scheduler._pool  # type: ignore[attr-defined]
    async with pool.acquire() as conn:
        status: str | None = await conn.fetchval(
            "SELECT status FROM runs WHERE tenant_id = $1 AND id = $2", tenant, run_id)
    return status


@contextlib.asynccontextmanager
async def _max_payload(stack: Stack, limit: int) -> AsyncIterator[None]:
    state = stack.api.state
    before = state.settings
    state.settings = msgspec.structs.replace(before, max_payload_bytes=limit)
    try:
        yield
    finally:
        state.settings = before


async def test_input_over_the_limit_is_a_413_naming_size_and_limit(
    client: Ratchet, stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    await client.arequest("POST", "/workflows", json={"name": "lim", "tasks": [{"name": "a"}]})
    body = msgspec.json.encode({"input": {"text": "z" * (2 * MiB)}})
    h = _auth(stack, tenant) | {"content-type": "application/json"}
    async with _max_payload(stack, MiB):
        resp = await http.post("/workflows/lim/run", content=body, headers=h)
        assert resp.status_code == 413
        detail = resp.json()["detail"]
        assert str(2 * MiB + len('{"text":""}')) in detail and str(MiB) in detail
        resp = await http.post("/events", json={"key": "k", "payload": "e" * (2 * MiB)},
                               headers=_auth(stack, tenant))
        assert resp.status_code == 413 and str(MiB) in resp.json()["detail"]
        resp = await http.put("/payloads/some-run", content=b"q" * (2 * MiB),
                              headers=_auth(stack, tenant))
        assert resp.status_code == 413
        assert resp.json()["extra"] == {"size": 2 * MiB, "limit": MiB}
    # Past even the body limit: Litestar's own check, answered with the numbers too.
    huge = stack.settings.max_payload_bytes + 128 * 1024
    resp = await http.post(
        "/workflows/lim/run", content=b" " * huge, headers=h,
    )
    assert resp.status_code == 413 and str(huge) in resp.json()["detail"]


async def test_payloads_are_tenant_prefixed_and_private(
    stack: Stack, tenant: str, http: httpx.AsyncClient
) -> None:
    from libs.common import db, tokens

    other = "t" + uuid.uuid4().hex[:12]
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        other_token = await tokens.ensure_tenant(pool, other)
    finally:
        await pool.close()
    data = _blob(3 * MiB, tenant).encode()
    resp = await http.put("/payloads/run1", content=data, headers=_auth(stack, tenant))
    assert resp.status_code == 201, resp.text
    ref = msgspec.convert(resp.json(), PayloadRef)
    assert ref.key.startswith(f"{tenant}/run1/") and ref.size == len(data)
    got = await http.get(f"/payloads/blobs/{ref.key}", params={"size": ref.size},
                         headers=_auth(stack, tenant))
    assert got.status_code == 200 and got.content == data
    stolen = await http.get(f"/payloads/blobs/{ref.key}", params={"size": ref.size},
                            headers={"authorization": f"Bearer {other_token}"})
    assert stolen.status_code == 404 and data[:100] not in stolen.content
    # The other tenant's upload of the same bytes lands under its own prefix.
    theirs = await http.put("/payloads/run1", content=data,
                            headers={"authorization": f"Bearer {other_token}"})
    assert theirs.json()["key"].startswith(f"{other}/")
    missing = await http.get(f"/payloads/blobs/{tenant}/run1/{'0' * 64}", params={"size": 1},
                             headers=_auth(stack, tenant))
    assert missing.status_code == 404


async def test_gc_removes_the_blobs_of_a_deleted_run_only(
    client: Ratchet, start_worker: WorkerFactory, stack: Stack, tenant: str
) -> None:
    from services.api.payload_gc import PayloadCollector

    wf = client.workflow("gc-" + uuid.uuid4().hex[:6])

    @wf.task()
    async def echo(input: dict, ctx: Context) -> dict:
        return {"text": input["text"].upper()}

    await start_worker("w-gc", workflows=[wf], slots=2)
    doomed = await wf.aio_run_no_wait({"text": _blob(MiB, tenant + "1")})
    kept = await wf.aio_run_no_wait({"text": _blob(MiB, tenant + "2")})
    await doomed.aio_result(60)
    await kept.aio_result(60)
    state = stack.api.state
    assert state is not None and state.payloads is not None

    async def scopes() -> dict[str, int]:
        return {s.scope_id: len(s.blobs) async for s in state.payloads.list_scopes(tenant)}

    assert await scopes() == {doomed.run_id: 2, kept.run_id: 2}  # input and output each
    async with state.pool.acquire() as conn:
        await conn.execute("DELETE FROM runs WHERE tenant_id = $1 AND id = $2",
                           tenant, doomed.run_id)
    now = msgspec.structs.replace(stack.settings, payload_gc_grace_s=0.0)
    report = await PayloadCollector(now, state.pool, state.payloads).sweep(tenant)
    assert report.deleted_run_blobs == 2
    assert await scopes() == {kept.run_id: 2}
    assert (await client.runs.aio_get(kept.run_id))["output"]["echo"]["text"][:4] == _blob(
        MiB, tenant + "2")[:4].upper()


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[Any]:
    from services.matcher.service import MatcherService

    svc = MatcherService(stack.settings, durable=f"matcher-pl-{uuid.uuid4().hex[:6]}")
    await svc.start()
    yield svc
    await svc.stop()


async def test_large_event_is_matched_and_its_run_gets_the_payload(
    client: Ratchet, start_worker: WorkerFactory, matcher: Any, stack: Stack, tenant: str
) -> None:
    key = "doc.big" + uuid.uuid4().hex[:6]
    name = "onbig-" + uuid.uuid4().hex[:6]
    wf = client.workflow(name, on_events=[key])

    @wf.task()
    async def measure(input: dict, ctx: Context) -> dict:
        return {"len": len(input["text"]), "kind": input["kind"]}

    await start_worker("w-evt-big", workflows=[wf], slots=2)
    await client.arequest("POST", "/filters", json={
        "workflow": name, "scope": "s", "expression": "input.kind == 'keep'"})
    text = _blob(2 * MiB, key)
    await client.events.aio_push(key, {"text": text, "kind": "drop"}, scope="s")
    await client.events.aio_push(key, {"text": text, "kind": "keep"}, scope="s")

    async def finished() -> list[Any]:
        runs = await client.arequest("GET", "/runs", params={"workflow": name})
        return [r for r in runs if r["status"] == "SUCCEEDED"]

    async def one() -> bool:
        return len(await finished()) == 1

    await eventually(one, 30)
    [summary] = await finished()
    run = await client.runs.aio_get(summary["id"])
    assert run["output"]["measure"] == {"len": 2 * MiB, "kind": "keep"}
    assert run["input"]["text"] == text
    # Past the event retention, the dropped event's blob goes; the one a run took as its
    # input stays as long as the run.
    state = stack.api.state
    assert state is not None and state.payloads is not None
    report = await collect_garbage(state.payloads, state.pool, older_than_s=0,
                                   event_retention_s=0, tenant=tenant)
    assert report.deleted_event_blobs == 1
    assert (await client.runs.aio_get(summary["id"]))["input"]["text"] == text


async def test_an_assignment_nats_refuses_fails_its_attempt_and_others_flow(
    client: Ratchet, start_worker: WorkerFactory
) -> None:
    """Twelve parents with inline outputs just under the inline limit make an assignment larger
    than NATS's max payload: the scheduler's relay fails that attempt instead of retrying it
    forever, and the next run goes through."""
    wf = client.workflow("wide-" + uuid.uuid4().hex[:6])
    parents = []
    for i in range(12):
        @wf.task(name=f"p{i}")
        async def part(input: dict, ctx: Context) -> str:
            return _blob(100 * 1024, ctx.task_name)

        parents.append(part)

    @wf.task(parents=parents, retries=2)
    async def join(input: dict, ctx: Context) -> dict:
        return {"n": len(parents)}

    await start_worker("w-wide", workflows=[wf], slots=4)
    ref = await wf.aio_run_no_wait({"wide": True})
    with pytest.raises(RunFailed) as failed:
        await ref.aio_result(60)
    assert failed.value.errors["join"]["type"] == "PayloadTooLarge"
    small = client.workflow("after-wide-" + uuid.uuid4().hex[:6])

    @small.task()
    async def ok(input: dict, ctx: Context) -> dict:
        return {"ok": True}

    await start_worker("w-after-wide", workflows=[small], slots=1)
    assert await small.aio_run({}, timeout_s=30) == {"ok": {"ok": True}}


async def test_concurrency_key_reads_an_offloaded_input(
    client: Ratchet, start_worker: WorkerFactory
) -> None:
    """`input.user` on a run whose input is a reference: the scheduler fetches the input (with
    only the reference, the key would not evaluate and the run would fail)."""
    from ratchet import Concurrency

    wf = client.workflow("keyed-" + uuid.uuid4().hex[:6],
                         concurrency=Concurrency(key="input.user", max_runs=1))

    @wf.task()
    async def work(input: dict, ctx: Context) -> dict:
        return {"user": input["user"]}

    await start_worker("w-keyed", workflows=[wf], slots=2)
    text = _blob(512 * 1024, uuid.uuid4().hex)
    refs = [await wf.aio_run_no_wait({"user": u, "text": text}) for u in ("ann", "bob")]
    assert [await r.aio_result(60) for r in refs] == [
        {"work": {"user": "ann"}}, {"work": {"user": "bob"}}]
