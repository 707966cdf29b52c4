"""Events → matcher → runs: REST and direct NATS, scopes, CEL filters, idempotency, DLQ."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from conftest import Stack, eventually
from nats.js import api as jsapi
from ratchet import ApiError, Context, Ratchet

from libs.common import subjects
from libs.common.match_messages import MATCH_BATCH_DECODER, EventMatches
from libs.common.subjects import Header, Stream
from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-test-{uuid.uuid4().hex[:6]}",
                         rules_ttl_s=3600.0)  # a long TTL: tests must pass on invalidation alone
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[Any]:
    conn = await nats.connect(stack.settings.nats_url)
    yield conn
    await conn.drain()


class Recorder:
    """Reads the matcher's outcome records for one tenant from the TASK stream."""

    def __init__(self, nc: Any, tenant: str) -> None:
        self._nc = nc
        self._tenant = tenant
        self.records: dict[str, EventMatches] = {}
        self._sub: Any = None

    async def start(self) -> None:
        js = self._nc.jetstream()
        self._sub = await js.subscribe(
            subjects.task_match(self._tenant), stream=Stream.TASK.value, cb=self._on,
            config=jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.ALL),
        )

    async def _on(self, msg: Any) -> None:
        for record in MATCH_BATCH_DECODER.decode(msg.data).records:
            self.records[record.event_id] = record
        await msg.ack()

    async def wait(self, event_id: str) -> EventMatches:
        async def seen() -> bool:
            return event_id in self.records

        await eventually(seen)
        return self.records[event_id]


@pytest.fixture
async def recorder(nc: Any, tenant: str) -> Recorder:
    rec = Recorder(nc, tenant)
    await rec.start()
    return rec


async def _runs(client: Ratchet, workflow: str) -> list[dict[str, Any]]:
    return await client.arequest("GET", "/runs", params={"workflow": workflow, "limit": 100})


async def _finished(client: Ratchet, workflow: str, count: int) -> list[dict[str, Any]]:
    """Wait for `count` succeeded runs of `workflow`; return them with outputs."""
    async def done() -> bool:
        runs = await _runs(client, workflow)
        return sum(r["status"] == "SUCCEEDED" for r in runs) >= count

    await eventually(done, timeout_s=30)
    runs = await _runs(client, workflow)
    return [await client.runs.aio_get(r["id"]) for r in runs]


def _echo_workflow(client: Ratchet, name: str, key: str) -> Any:
    wf = client.workflow(name, on_events=[key])

    @wf.task()
    async def echo(input: dict, ctx: Context) -> dict:
        return {"input": input, "filter_payload": ctx.filter_payload}

    return wf


async def test_rest_push_triggers_run(
    client: Ratchet, start_worker: Any, matcher: MatcherService
) -> None:
    wf = _echo_workflow(client, "on-upload", "doc.uploaded")
    await start_worker("w-evt-rest", workflows=[wf], slots=4)
    accepted = await client.events.aio_push("doc.uploaded", {"doc_id": "1"}, metadata={"via": "rest"})
    assert accepted["event_id"]
    [run] = await _finished(client, "on-upload", 1)
    assert run["output"]["echo"] == {"input": {"doc_id": "1"}, "filter_payload": None}
    assert run["metadata"] == {"via": "rest"}


async def test_direct_nats_publish_triggers_run_with_filter(
    client: Ratchet, start_worker: Any, matcher: MatcherService, tenant: str, nc: Any
) -> None:
    wf = _echo_workflow(client, "on-direct", "order.paid.eu")
    await start_worker("w-evt-nats", workflows=[wf], slots=4)
    await client.arequest("POST", "/filters", json={
        "workflow": "on-direct", "scope": "shop-1", "payload": {"tier": "gold"},
        "expression": "input.amount > 10 && metadata.channel == 'web'",
    })
    ack = await nc.jetstream().publish(
        subjects.evt(tenant, "order.paid.eu"), b'{"amount": 42}',
        headers={Header.SCOPE.value: "shop-1", Header.METADATA.value: '{"channel": "web"}'},
    )
    assert ack.stream == Stream.EVT.value
    [run] = await _finished(client, "on-direct", 1)
    assert run["output"]["echo"] == {"input": {"amount": 42}, "filter_payload": {"tier": "gold"}}


async def test_scope_and_expression_select_filters(
    client: Ratchet, start_worker: Any, matcher: MatcherService, recorder: Recorder
) -> None:
    wf = _echo_workflow(client, "selective", "user.signup")
    await start_worker("w-evt-sel", workflows=[wf], slots=4)

    async def make(scope: str, expression: str, tag: str) -> str:
        created = await client.arequest("POST", "/filters", json={
            "workflow": "selective", "scope": scope, "expression": expression,
            "payload": {"tag": tag},
        })
        return str(created["id"])

    human = await make("team-a", "input.user != 'bot'", "human")
    big = await make("team-a", "input.n > 5", "big")
    broken = await make("team-a", "input.missing.deep == 1", "broken")
    other = await make("team-b", "true", "other-scope")
    event = await client.events.aio_push("user.signup", {"user": "ann", "n": 1}, scope="team-a")

    record = await recorder.wait(event["event_id"])
    by_filter = {o.filter_id: o for o in record.outcomes}
    assert set(by_filter) == {human, big, broken}  # team-b's filter is not even evaluated
    assert by_filter[human].outcome == "matched"
    assert by_filter[big].outcome == "no_match"
    assert by_filter[broken].outcome == "error" and "missing" in by_filter[broken].error
    assert other not in by_filter
    [run] = await _finished(client, "selective", 1)
    assert run["id"] == by_filter[human].run_id
    assert run["output"]["echo"]["filter_payload"] == {"tag": "human"}

    # A bot with a big n: only the `input.n > 5` filter matches.
    bot = await client.events.aio_push("user.signup", {"user": "bot", "n": 9}, scope="team-a")
    record = await recorder.wait(bot["event_id"])
    matched = [o for o in record.outcomes if o.outcome == "matched"]
    assert [o.filter_id for o in matched] == [big]
    await _finished(client, "selective", 2)


async def test_filter_change_invalidates_cached_rules(
    client: Ratchet, start_worker: Any, matcher: MatcherService, recorder: Recorder
) -> None:
    wf = _echo_workflow(client, "gated", "gate.open")
    await start_worker("w-evt-gate", workflows=[wf], slots=4)
    first = await client.events.aio_push("gate.open", {"v": 1})
    assert [o.outcome for o in (await recorder.wait(first["event_id"])).outcomes] == ["matched"]
    flt = await client.arequest("POST", "/filters", json={
        "workflow": "gated", "expression": "input.v == 2"})
    second = await client.events.aio_push("gate.open", {"v": 1})
    assert [o.outcome for o in (await recorder.wait(second["event_id"])).outcomes] == ["no_match"]
    await client.arequest("DELETE", f"/filters/{flt['id']}")
    third = await client.events.aio_push("gate.open", {"v": 1})
    assert [o.outcome for o in (await recorder.wait(third["event_id"])).outcomes] == ["matched"]
    await _finished(client, "gated", 2)


async def test_duplicate_event_id_triggers_once(
    client: Ratchet, start_worker: Any, matcher: MatcherService, tenant: str, nc: Any,
    recorder: Recorder,
) -> None:
    executions = 0
    wf = client.workflow("once", on_events=["pay.done"])

    @wf.task()
    async def count(input: dict, ctx: Context) -> dict:
        nonlocal executions
        executions += 1
        return {}

    await start_worker("w-evt-once", workflows=[wf], slots=4)
    for _ in range(2):
        await client.events.aio_push("pay.done", {"x": 1}, event_id="pay-123")
    await client.arequest("POST", "/events/bulk", json={"events": [
        {"key": "pay.done", "payload": {"x": 1}, "event_id": "pay-123"}]})
    # Direct publish without a msg-id: the stream stores it, the matcher must still dedupe.
    await nc.jetstream().publish(subjects.evt(tenant, "pay.done"), b'{"x": 1}',
                                 headers={Header.EVENT_ID.value: "pay-123"})
    # Batches may finish out of order, but every copy maps to the same run id: however they
    # interleave, the pay-123 copies and the sentinel can only ever make two runs.
    sentinel = await client.events.aio_push("pay.done", {"x": 2}, event_id="sentinel")
    await recorder.wait(sentinel["event_id"])
    await _finished(client, "once", 2)
    assert len(await _runs(client, "once")) == 2
    assert executions == 2


async def test_filter_crud_and_bad_cel(client: Ratchet, matcher: MatcherService) -> None:
    created = await asyncio.to_thread(
        client.filters.create, workflow="crud", scope="s1", expression="input.a == 1",
        payload={"k": "v"},
    )
    fid = created["id"]
    assert (await asyncio.to_thread(client.filters.get, fid))["expression"] == "input.a == 1"
    listed = await asyncio.to_thread(client.filters.list, workflow="crud")
    assert [f["id"] for f in listed] == [fid]
    updated = await asyncio.to_thread(client.filters.update, fid, expression="input.a == 2",
                                      scope=None)
    assert updated["expression"] == "input.a == 2" and updated["scope"] is None
    assert updated["payload"] == {"k": "v"}

    with pytest.raises(ApiError) as bad:
        await asyncio.to_thread(client.filters.create, workflow="crud",
                                expression="input.a == ")
    assert bad.value.status == 400 and "line 1, column" in bad.value.detail
    with pytest.raises(ApiError) as bad_type:
        await asyncio.to_thread(client.filters.update, fid, expression="input.a && (1 + 'x') > 0")
    assert bad_type.value.status == 400 and "column 13" in bad_type.value.detail
    with pytest.raises(ApiError) as unknown:
        await asyncio.to_thread(client.filters.create, workflow="crud", expression="user == 1")
    assert unknown.value.status == 400 and "unknown variable 'user'" in unknown.value.detail
    assert (await asyncio.to_thread(client.filters.get, fid))["expression"] == "input.a == 2"

    await asyncio.to_thread(client.filters.delete, fid)
    with pytest.raises(ApiError) as gone:
        await asyncio.to_thread(client.filters.get, fid)
    assert gone.value.status == 404


async def test_bad_event_input_is_rejected(client: Ratchet) -> None:
    for body in ({"key": "", "payload": {}}, {"key": "a..b", "payload": {}},
                 {"key": "a.*", "payload": {}}, {"key": "ok", "scope": "x\ny"}):
        with pytest.raises(ApiError) as info:
            await client.arequest("POST", "/events", json=body)
        assert info.value.status == 400
    with pytest.raises(ApiError) as too_many:
        await client.arequest("POST", "/events/bulk", json={
            "events": [{"key": "k", "payload": {}}] * 1001})
    assert too_many.value.status == 400


async def test_malformed_direct_event_is_dead_lettered(
    matcher: MatcherService, tenant: str, nc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    dlq: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)

    async def on_dlq(msg: Any) -> None:
        await dlq.put(msg)
        await msg.ack()

    sub = await js.subscribe(f"dlq.evt.{tenant}.>", stream=Stream.DLQ.value, cb=on_dlq)
    caplog.set_level(logging.WARNING)
    await js.publish(subjects.evt(tenant, "broken.json"), b"{not json")
    msg = await asyncio.wait_for(dlq.get(), 20)
    await sub.unsubscribe()
    assert msg.data == b"{not json"
    assert msg.headers[Header.DLQ_SUBJECT.value] == subjects.evt(tenant, "broken.json")
    assert "not JSON" in msg.headers[Header.DLQ_REASON.value]
    assert any("rejecting event" in r.getMessage() for r in caplog.records)
    assert matcher.ready
