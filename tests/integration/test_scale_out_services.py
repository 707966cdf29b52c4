"""Several instances of each service but the scheduler, on one NATS and one PostgreSQL.

The session stack runs one scheduler, one dispatcher and one API; these tests start further
dispatchers, matchers, APIs and replicators next to them, with their own ids and ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Stack, eventually
from nats.aio.msg import Msg
from ratchet import Context, Ratchet, Worker
from test_tls import make_pki

from libs.common.jetstream import Rejected
from libs.common.settings import Settings
from libs.common.subjects import Stream
from services.api.service import ApiService
from services.dispatcher.service import DispatcherService
from services.matcher.service import MatcherService
from services.replicator.lock import DataDirBusy
from services.replicator.service import ReplicatorService

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _settings(stack: Stack, **changes: Any) -> Settings:
    return msgspec.structs.replace(stack.settings, **changes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _addr(dispatcher: DispatcherService) -> str:
    return f"127.0.0.1:{dispatcher.port}"


@pytest.fixture
async def dispatchers(stack: Stack) -> AsyncIterator[list[DispatcherService]]:
    """Two dispatchers of this test's own, beside the session's."""
    started = [
        DispatcherService(_settings(stack, dispatcher_id=f"scale-{uuid.uuid4().hex[:8]}",
                                    grpc_port=0))
        for _ in range(2)
    ]
    for d in started:
        await d.start()
    yield started
    for d in started:
        await d.stop()


@pytest.fixture
async def run_workers() -> AsyncIterator[list[tuple[Worker, asyncio.Task[None]]]]:
    """Workers the test starts; drained and stopped after it."""
    workers: list[tuple[Worker, asyncio.Task[None]]] = []
    yield workers
    for worker, task in workers:
        await worker.astop(drain_timeout_s=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def _start(workers: list[tuple[Worker, asyncio.Task[None]]], worker: Worker) -> Worker:
    task = asyncio.create_task(worker.astart())
    workers.append((worker, task))
    done, _ = await asyncio.wait(
        {task, asyncio.ensure_future(worker.wait_connected(30))},
        return_when=asyncio.FIRST_COMPLETED,
    )
    if task in done:
        task.result()
    return worker


def _client(stack: Stack, tenant: str, grpc_addr: str | list[str]) -> Ratchet:
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    return Ratchet(token=token, api_url=stack.api_url, grpc_addr=grpc_addr)


# dispatchers ------------------------------------------------------------------------------


async def test_worker_fails_over_when_its_dispatcher_stops(
    stack: Stack, tenant: str, dispatchers: list[DispatcherService], run_workers: Any
) -> None:
    by_addr = {_addr(d): d for d in dispatchers}
    client = _client(stack, tenant, list(by_addr))
    executed: Counter[tuple[str, int]] = Counter()
    running = asyncio.Event()
    release = asyncio.Event()
    wf = client.workflow(f"failover-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def first(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        executed["first", ctx.attempt] += 1
        running.set()
        await release.wait()
        return {"attempt": ctx.attempt}

    @wf.task(parents=[first])
    async def second(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        executed["second", ctx.attempt] += 1
        return {"after": ctx.parent_output(first)["attempt"]}

    worker = await _start(run_workers, client.worker("w-failover", workflows=[wf], slots=4))
    on, other = by_addr[worker.dispatcher_addr], next(
        d for a, d in by_addr.items() if a != worker.dispatcher_addr
    )
    worker_id = worker.worker_id
    assert worker_id in on.conns

    ref = await wf.aio_run_no_wait({})
    await asyncio.wait_for(running.wait(), 30)
    await on.stop()  # the dispatcher dies with attempt 0 of `first` running on its worker

    async def moved() -> bool:
        return worker.dispatcher_addr == _addr(other) and worker_id in other.conns

    await eventually(moved, timeout_s=30)
    assert worker.worker_id == worker_id  # the same worker, registered again

    async def requeued() -> bool:
        run = await client.runs.aio_get(ref.run_id)
        return any(t["name"] == "first" and t["attempt"] >= 1 for t in run["tasks"])

    # Its dispatcher gone, the worker was lost: the scheduler requeued the attempt (attempt 1),
    # which went to the same worker through the other dispatcher.
    async def second_attempt_running() -> bool:
        return executed["first", 1] == 1

    await eventually(requeued, timeout_s=30)
    await eventually(second_attempt_running, timeout_s=30)
    release.set()  # attempt 0 completes now too, late: it must change nothing

    assert await ref.aio_result(60) == {"first": {"attempt": 1}, "second": {"after": 1}}
    run = await client.runs.aio_get(ref.run_id)
    assert run["status"] == "SUCCEEDED"
    for task in run["tasks"]:
        statuses = [a["status"] for a in task["attempts"]]
        assert statuses.count("SUCCEEDED") == 1, (task["name"], statuses)
        assert statuses[-1] == "SUCCEEDED"
    assert executed["second", 0] + executed["second", 1] == 1
    await client.aclose()
    client.close()


async def test_worker_skips_a_dead_first_address(
    stack: Stack, tenant: str, run_workers: Any
) -> None:
    ports = [_free_port(), _free_port()]
    client = _client(stack, tenant, [f"127.0.0.1:{p}" for p in ports])
    wf = client.workflow(f"dead-first-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def hello(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"hi": input["name"]}

    worker = client.worker("w-dead-first", workflows=[wf], slots=2)
    # The worker picked where to start; only its second address gets a dispatcher.
    _, live = worker.dispatcher_addrs
    dispatcher = DispatcherService(_settings(
        stack, dispatcher_id=f"second-{uuid.uuid4().hex[:8]}", grpc_port=int(live.split(":")[1]),
    ))
    await dispatcher.start()
    try:
        await _start(run_workers, worker)
        assert worker.dispatcher_addr == live
        assert worker.worker_id in dispatcher.conns
        assert await wf.aio_run({"name": "x"}) == {"hello": {"hi": "x"}}
    finally:
        for w, _ in run_workers:
            await w.astop(drain_timeout_s=5)
        await dispatcher.stop()
        await client.aclose()
        client.close()


async def test_failover_keeps_mutual_tls(
    stack: Stack, tenant: str, run_workers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path / "pki")
    for name, value in (("RATCHET_TLS_CA", pki.ca), ("RATCHET_TLS_CERT", pki.client_cert),
                        ("RATCHET_TLS_KEY", pki.client_key)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("RATCHET_GRPC_TLS", raising=False)
    secured = [
        DispatcherService(_settings(
            stack, dispatcher_id=f"tls-{uuid.uuid4().hex[:8]}", grpc_port=0,
            grpc_tls_cert=str(pki.server_cert), grpc_tls_key=str(pki.server_key),
            grpc_tls_client_ca=str(pki.ca),
        ))
        for _ in range(2)
    ]
    for d in secured:
        await d.start()
    by_addr = {_addr(d): d for d in secured}
    client = _client(stack, tenant, ",".join(by_addr))
    assert client.config.grpc_tls
    wf = client.workflow(f"tls-failover-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def square(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"n": input["n"] ** 2}

    try:
        worker = await _start(run_workers, client.worker("w-tls-failover", workflows=[wf]))
        assert await wf.aio_run({"n": 3}) == {"square": {"n": 9}}
        first = by_addr[worker.dispatcher_addr]
        await first.stop()
        other = next(a for a in by_addr if a != _addr(first))

        async def moved() -> bool:
            return worker.dispatcher_addr == other

        await eventually(moved, timeout_s=30)
        assert await wf.aio_run({"n": 4}) == {"square": {"n": 16}}
    finally:
        for w, _ in run_workers:
            await w.astop(drain_timeout_s=5)
        for d in secured:
            await d.stop()
        await client.aclose()
        client.close()


# matchers ---------------------------------------------------------------------------------


class SeeingMatcher(MatcherService):
    """A matcher that notes which EVT messages (stream sequence) it was handed, of one tenant."""

    def __init__(self, settings: Settings, tenant: str, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._tenant = tenant
        self.seen: list[int] = []

    async def handle(self, msgs: list[Msg]) -> Rejected:
        for msg in msgs:
            if msg.subject.split(".")[1] == self._tenant:
                self.seen.append(msg.metadata.sequence.stream)
        return await super().handle(msgs)


async def test_two_matchers_trigger_each_event_exactly_once(
    stack: Stack, tenant: str, client: Ratchet, start_worker: Any
) -> None:
    durable = f"matcher-scale-{uuid.uuid4().hex[:6]}"
    matchers = [
        SeeingMatcher(stack.settings, tenant, durable=durable, batch_size=2, max_in_flight=1)
        for _ in range(2)
    ]
    for m in matchers:
        await m.start()
    executed: Counter[str] = Counter()
    workflow = f"on-order-{uuid.uuid4().hex[:6]}"
    wf = client.workflow(workflow, on_events=["order.placed"])

    @wf.task()
    async def handle(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        executed[input["n"]] += 1
        return {"n": input["n"]}

    events = 40
    try:
        await start_worker("w-two-matchers", workflows=[wf], slots=8)
        for start in range(0, events, 10):
            await client.arequest("POST", "/events/bulk", json={"events": [
                {"key": "order.placed", "payload": {"n": n}, "event_id": f"order-{n}"}
                for n in range(start, start + 10)
            ]})

        async def all_done() -> bool:
            runs = await client.arequest("GET", "/runs",
                                         params={"workflow": workflow, "limit": 100})
            return len(runs) >= events and all(r["status"] == "SUCCEEDED" for r in runs)

        await eventually(all_done, timeout_s=60)
        runs = await client.arequest("GET", "/runs", params={"workflow": workflow, "limit": 100})
        outputs = sorted([(await client.runs.aio_get(r["id"]))["output"]["handle"]["n"]
                          for r in runs])
        assert outputs == list(range(events))  # N events, N runs: none skipped, none doubled
        assert executed == Counter(range(events))
        # One durable consumer shared by both: each event went to one matcher, never to both.
        first, second = (set(m.seen) for m in matchers)
        assert len(first) + len(second) == events
        assert not first & second
        assert first and second  # both took a share
        info = await matchers[0]._js.consumer_info(Stream.EVT.value, durable)  # type: ignore[union-attr]
        assert info.num_redelivered == 0
    finally:
        for m in matchers:
            await m.stop()


# APIs -------------------------------------------------------------------------------------


async def test_a_second_api_sees_runs_the_first_triggered(
    stack: Stack, tenant: str, client: Ratchet, start_worker: Any
) -> None:
    """APIs keep no state of their own beyond caches: each hears every state change (a plain
    subscription, not a queue group), so a wait or a live page on one API follows a run that
    was triggered through another."""
    other = ApiService(_settings(stack, api_port=0))
    await other.start()
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    via_other = Ratchet(token=token, api_url=f"http://127.0.0.1:{other.port}",
                        grpc_addr=stack.grpc_addr)
    release = asyncio.Event()
    wf = via_other.workflow(f"two-apis-{uuid.uuid4().hex[:6]}")

    @wf.task()
    async def wait(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        await release.wait()
        return {"ok": True}

    try:
        await start_worker("w-two-apis", workflows=[wf], slots=2)
        ref = await wf.aio_run_no_wait({})  # triggered through the second API
        # The first API long-polls for the end: it is woken by the scheduler's announcement.
        waiting = asyncio.create_task(client.runs.aio_get(ref.run_id, wait_s=30))
        release.set()
        run = await asyncio.wait_for(waiting, 40)
        assert run["status"] == "SUCCEEDED"
        assert run["output"] == {"wait": {"ok": True}}
    finally:
        await via_other.aclose()
        via_other.close()
        await other.stop()


# replicators ------------------------------------------------------------------------------


async def test_second_embedded_replicator_on_one_data_dir_refuses(
    stack: Stack, tmp_path: Path
) -> None:
    settings = _settings(stack, data_dir=str(tmp_path), clickhouse_url="")
    first = ReplicatorService(settings, linger_s=0.05)
    await first.start()
    try:
        second = ReplicatorService(settings, linger_s=0.05)
        with pytest.raises(DataDirBusy, match="one process only"):
            await second.start()
        await second.stop()  # safe after a refused start; the first keeps its lock
        assert first.backend is not None
        assert await first.backend.query("SELECT 1 AS one") == [{"one": 1}]
    finally:
        await first.stop()
    # Once the owner stopped, a replicator takes the directory over.
    third = ReplicatorService(settings, linger_s=0.05)
    await third.start()
    await third.stop()
