"""The matcher's EVT consumer: overlapping batches, acks after the handler, poison isolation."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from conftest import Stack, eventually
from nats.aio.msg import Msg

from libs.common import jetstream, subjects
from libs.common.jetstream import Rejected
from libs.common.subjects import Header, Stream
from services.matcher.intake import EventIntake

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def js(stack: Stack) -> AsyncIterator[Any]:
    nc = await jetstream.connect(stack.settings, "intake-test")
    js = nc.jetstream()
    await jetstream.provision(js, stack.settings)
    yield js
    await nc.drain()


async def _publish(js: Any, tenant: str, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        await js.publish(subjects.evt(tenant, "k"), body, headers={Header.EVENT_ID.value: f"e{i}"})


async def _settled(js: Any, durable: str) -> bool:
    info = await js.consumer_info(Stream.EVT.value, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_batches_overlap_and_every_message_is_acked_once(js: Any) -> None:
    tenant = "ti" + uuid.uuid4().hex[:10]
    durable = f"intake-{tenant}"
    await _publish(js, tenant, [b"{}"] * 30)
    seen: Counter[str] = Counter()
    first_blocked = asyncio.Event()
    overlapped = asyncio.Event()
    in_flight = 0

    async def handler(msgs: list[Msg]) -> Rejected:
        nonlocal in_flight
        in_flight += 1
        if in_flight > 1:
            overlapped.set()
        seen.update(m.headers[Header.EVENT_ID.value] for m in msgs if m.headers)
        if not first_blocked.is_set():
            # Hold the first batch until another one is being handled next to it.
            first_blocked.set()
            await asyncio.wait_for(overlapped.wait(), 20)
        in_flight -= 1
        return []

    intake = EventIntake(js, stream=Stream.EVT, durable=durable,
                         filter_subject=f"evt.{tenant}.>", handler=handler,
                         batch_size=4, max_in_flight=2)
    await intake.start()
    try:
        await eventually(lambda: _settled(js, durable))
        assert overlapped.is_set()
        assert seen == Counter({f"e{i}": 1 for i in range(30)})
    finally:
        await intake.stop()
        await js.delete_consumer(Stream.EVT.value, durable)


async def test_poison_message_is_isolated_and_dead_lettered(js: Any, stack: Stack) -> None:
    tenant = "ti" + uuid.uuid4().hex[:10]
    durable = f"intake-{tenant}"
    await _publish(js, tenant, [b"ok", b"poison", b"ok", b"reject-me"])
    handled: Counter[str] = Counter()

    async def handler(msgs: list[Msg]) -> Rejected:
        if any(m.data == b"poison" for m in msgs):
            raise RuntimeError("cannot handle this one")
        handled.update(m.headers[Header.EVENT_ID.value] for m in msgs if m.headers)
        return [(m, "rejected by handler") for m in msgs if m.data == b"reject-me"]

    dead: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10)

    async def on_dlq(msg: Msg) -> None:
        await dead.put(msg)
        await msg.ack()

    sub = await js.subscribe(f"dlq.evt.{tenant}.>", stream=Stream.DLQ.value, cb=on_dlq)
    intake = EventIntake(js, stream=Stream.EVT, durable=durable,
                         filter_subject=f"evt.{tenant}.>", handler=handler,
                         batch_size=10, max_deliver=2, backoff_s=(0.05,))
    await intake.start()
    try:
        reasons = {}
        for _ in range(2):
            msg = await asyncio.wait_for(dead.get(), 30)
            assert msg.headers is not None
            reasons[msg.data] = msg.headers[Header.DLQ_REASON.value]
        assert reasons == {b"reject-me": "rejected by handler", b"poison": "max deliveries reached"}
        await eventually(lambda: _settled(js, durable))
        # The good messages went through once each, despite sharing a batch with the poison.
        assert handled["e0"] == 1 and handled["e2"] == 1
        assert intake.dead_lettered == 2
    finally:
        await sub.unsubscribe()
        await intake.stop()
        await js.delete_consumer(Stream.EVT.value, durable)


async def test_stop_is_idempotent_and_safe_before_start(stack: Stack) -> None:
    nc = await nats.connect(stack.settings.nats_url)
    try:
        async def handler(msgs: list[Msg]) -> Rejected:
            return []

        intake = EventIntake(nc.jetstream(), stream=Stream.EVT, durable="never-started",
                             filter_subject="evt.nobody.>", handler=handler)
        await intake.stop()
        await intake.stop()
    finally:
        await nc.drain()
