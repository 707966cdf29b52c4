"""BatchConsumer against a real JetStream: a batch the handler holds is not redelivered, and a
consumer left with a server-side BackOff by an earlier version is updated.

nats-server takes a consumer's BackOff[0] as the ack deadline of a first delivery, whatever
ack_wait says: with the old (0.2 s, ...) BackOff, every batch the scheduler held for more than
0.2 s (a storm applied over several batches) was delivered and handled twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import api as jsapi

from libs.common.jetstream import BatchConsumer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[tuple[Any, str, str]]:
    token = uuid.uuid4().hex[:12]
    name, subject = f"BATCH_{token}", f"batch.{token}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[subject])
    try:
        yield js, name, subject
    finally:
        await js.delete_stream(name)
        await nc.drain()


def _consumer(js: Any, name: str, subject: str, handler: Any, ack_wait_s: float) -> BatchConsumer:
    # BatchConsumer takes a Stream enum member; only its value (the stream's name) is used.
    return BatchConsumer(
        js, stream=SimpleNamespace(value=name),  # type: ignore[arg-type]
        durable="held", filter_subject=subject, handler=handler, ack_wait_s=ack_wait_s,
    )


async def test_a_batch_held_past_ack_wait_is_not_redelivered(
    stream: tuple[Any, str, str],
) -> None:
    js, name, subject = stream
    ack_wait = 1.0
    deliveries: list[int] = []

    async def handler(msgs: list[Msg]) -> None:
        deliveries.extend(m.metadata.num_delivered for m in msgs)
        # Hold the batch through two ack_wait periods: the server's redelivery timer fires
        # meanwhile unless the consumer keeps the batch alive.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 2.5 * ack_wait)

    consumer = _consumer(js, name, subject, handler, ack_wait)
    await consumer.start()
    try:
        await js.publish(subject, b"one")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = await js.consumer_info(name, "held")
            if info.num_ack_pending == 0 and deliveries:
                break
            await asyncio.sleep(0.05)
        info = await js.consumer_info(name, "held")
        assert info.num_ack_pending == 0, "the held message was never acked"
        assert deliveries == [1], f"redelivered while held: deliveries {deliveries}"
        assert info.num_redelivered == 0
    finally:
        await consumer.stop()


async def test_a_consumer_with_an_old_backoff_is_updated(stream: tuple[Any, str, str]) -> None:
    js, name, subject = stream
    await js.add_consumer(name, jsapi.ConsumerConfig(
        durable_name="held", filter_subject=subject, ack_policy=jsapi.AckPolicy.EXPLICIT,
        ack_wait=30, max_deliver=8, backoff=[0.2, 1.0, 2.0],
    ))

    async def handler(msgs: list[Msg]) -> None:
        return None

    consumer = _consumer(js, name, subject, handler, 30.0)
    await consumer.start()
    try:
        info = await js.consumer_info(name, "held")
        assert not info.config.backoff, f"BackOff kept: {info.config.backoff}"
        assert info.config.ack_wait == 30
    finally:
        await consumer.stop()
