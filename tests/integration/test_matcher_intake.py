"""The matcher's EVT intake: the shared BatchConsumer with overlapping batches (max_in_flight),
acks after the handler, poison isolation, naks that follow the backoff steps, and a durable
that an earlier matcher left with a server-side BackOff is updated."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from conftest import Stack, eventually
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as jsapi

from libs.common import jetstream, subjects
from libs.common.jetstream import BatchConsumer, Rejected
from libs.common.subjects import Header, Stream
from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[NATS]:
    conn = await jetstream.connect(stack.settings, "intake-test")
    await jetstream.provision(conn.jetstream(), stack.settings)
    yield conn
    await conn.drain()


async def _publish(js: Any, tenant: str, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        await js.publish(subjects.evt(tenant, "k"), body, headers={Header.EVENT_ID.value: f"e{i}"})


async def _settled(js: Any, durable: str) -> bool:
    info = await js.consumer_info(Stream.EVT.value, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


def _intake(js: Any, tenant: str, handler: Any, **options: Any) -> BatchConsumer:
    """A consumer configured as the matcher's: several batches in flight."""
    options.setdefault("max_in_flight", 2)
    return BatchConsumer(js, stream=Stream.EVT, durable=f"intake-{tenant}",
                         filter_subject=f"evt.{tenant}.>", handler=handler, **options)


async def _dead_letters(js: Any, tenant: str) -> tuple[Any, asyncio.Queue[Msg]]:
    dead: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10)

    async def on_dlq(msg: Msg) -> None:
        await dead.put(msg)
        await msg.ack()

    sub = await js.subscribe(f"dlq.evt.{tenant}.>", stream=Stream.DLQ.value, cb=on_dlq)
    return sub, dead


async def test_batches_overlap_and_every_message_is_acked_once(nc: NATS) -> None:
    js = nc.jetstream()
    tenant = "ti" + uuid.uuid4().hex[:10]
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

    intake = _intake(js, tenant, handler, batch_size=4)
    await intake.start()
    try:
        await eventually(lambda: _settled(js, f"intake-{tenant}"))
        assert overlapped.is_set()
        assert seen == Counter({f"e{i}": 1 for i in range(30)})
    finally:
        await intake.stop()
        await js.delete_consumer(Stream.EVT.value, f"intake-{tenant}")


async def test_poison_message_is_isolated_and_dead_lettered(nc: NATS) -> None:
    js = nc.jetstream()
    tenant = "ti" + uuid.uuid4().hex[:10]
    await _publish(js, tenant, [b"ok", b"poison", b"ok", b"reject-me"])
    handled: Counter[str] = Counter()

    async def handler(msgs: list[Msg]) -> Rejected:
        if any(m.data == b"poison" for m in msgs):
            raise RuntimeError("cannot handle this one")
        handled.update(m.headers[Header.EVENT_ID.value] for m in msgs if m.headers)
        return [(m, "rejected by handler") for m in msgs if m.data == b"reject-me"]

    sub, dead = await _dead_letters(js, tenant)
    intake = _intake(js, tenant, handler, batch_size=10, max_deliver=2, backoff_s=(0.05,))
    await intake.start()
    try:
        reasons = {}
        for _ in range(2):
            msg = await asyncio.wait_for(dead.get(), 30)
            assert msg.headers is not None
            reasons[msg.data] = msg.headers[Header.DLQ_REASON.value]
            assert msg.headers[Header.DLQ_SUBJECT.value] == subjects.evt(tenant, "k")
        assert reasons == {b"reject-me": "rejected by handler", b"poison": "max deliveries reached"}
        await eventually(lambda: _settled(js, f"intake-{tenant}"))
        # The good messages went through once each, despite sharing a batch with the poison.
        assert handled["e0"] == 1 and handled["e2"] == 1
        assert intake.dead_lettered == 2
    finally:
        await sub.unsubscribe()
        await intake.stop()
        await js.delete_consumer(Stream.EVT.value, f"intake-{tenant}")


async def test_a_failing_message_is_naked_with_the_backoff_step_of_its_delivery(
    nc: NATS,
) -> None:
    """The matcher's own consumer naked every failure with the first step (0.2 s), however
    often the message had failed; the shared one waits longer after each delivery."""
    js = nc.jetstream()
    tenant = "ti" + uuid.uuid4().hex[:10]
    durable = f"intake-{tenant}"
    backoff = (0.05, 0.1, 0.15)
    naks: list[tuple[int, int | None]] = []  # (delivery, delay in ns) as sent to the server

    async def on_ack(msg: Msg) -> None:
        if msg.data.startswith(b"-NAK"):
            args = json.loads(msg.data[4:] or b"{}")
            # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...
            naks.append((int(msg.subject.split(".")[4]), args.get("delay")))

    # Acks are plain publishes to the message's reply subject: a core subscriber sees them.
    acks = await nc.subscribe(f"$JS.ACK.{Stream.EVT.value}.{durable}.>", cb=on_ack)

    async def handler(msgs: list[Msg]) -> Rejected:
        raise RuntimeError("the downstream is broken")

    sub, dead = await _dead_letters(js, tenant)
    intake = _intake(js, tenant, handler, max_deliver=len(backoff) + 1, backoff_s=backoff)
    await _publish(js, tenant, [b"fails"])
    await intake.start()
    try:
        letter = await asyncio.wait_for(dead.get(), 30)
        assert letter.headers is not None
        assert letter.headers[Header.DLQ_REASON.value] == "max deliveries reached"

        async def all_naks_seen() -> bool:
            return len(naks) >= len(backoff)

        await eventually(all_naks_seen)
        assert naks == [(i + 1, int(step * 10**9)) for i, step in enumerate(backoff)]
    finally:
        await acks.unsubscribe()
        await sub.unsubscribe()
        await intake.stop()
        await js.delete_consumer(Stream.EVT.value, durable)


async def test_the_matcher_updates_a_durable_left_with_a_server_side_backoff(
    nc: NATS, stack: Stack
) -> None:
    """nats-server takes BackOff[0] as the ack deadline of a first delivery: with the
    (0.2 s, ...) BackOff the matcher's old consumer set, any batch held longer than 0.2 s was
    delivered again while it was still being matched."""
    js = nc.jetstream()
    tenant = "ti" + uuid.uuid4().hex[:10]
    durable = f"matcher-{tenant}"
    await js.add_consumer(Stream.EVT.value, jsapi.ConsumerConfig(
        durable_name=durable, filter_subject=f"evt.{tenant}.>",
        ack_policy=jsapi.AckPolicy.EXPLICIT, ack_wait=30, max_deliver=8,
        backoff=[0.2, 1.0, 2.0],
    ))
    matcher = MatcherService(stack.settings, durable=durable, filter_subject=f"evt.{tenant}.>")
    await matcher.start()
    try:
        info = await js.consumer_info(Stream.EVT.value, durable)
        assert not info.config.backoff, f"BackOff kept: {info.config.backoff}"
        await _publish(js, tenant, [b'{"n": 1}'])  # no rules: matched to nothing, and acked
        await eventually(lambda: _settled(js, durable))
    finally:
        await matcher.stop()
        await js.delete_consumer(Stream.EVT.value, durable)


async def test_stop_is_idempotent_and_safe_before_start(stack: Stack) -> None:
    nc = await nats.connect(stack.settings.nats_url)
    try:
        async def handler(msgs: list[Msg]) -> Rejected:
            return []

        intake = BatchConsumer(nc.jetstream(), stream=Stream.EVT, durable="never-started",
                               filter_subject="evt.nobody.>", handler=handler, max_in_flight=3)
        await intake.stop()
        await intake.stop()
    finally:
        await nc.drain()
