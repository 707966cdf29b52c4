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

from libs.common import jetstream
from libs.common.jetstream import BatchConsumer
from libs.common.settings import Settings
from tools import devstack

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


async def test_after_a_nats_restart_the_consumer_asks_again_at_once(tmp_path: Any) -> None:
    """The server forgets open pull requests when it restarts. The consumer's request here
    would expire only after an hour: messages published after the restart reach the handler
    because the reconnect makes the consumer send a new request."""
    server = devstack.NatsServer(tmp_path / "store")
    url = server.start()
    nc = await jetstream.connect(Settings(nats_url=url), "restart-test")
    js = nc.jetstream()
    await js.add_stream(name="RESTART", subjects=["restart.>"])
    got: list[bytes] = []

    async def handler(msgs: list[Msg]) -> None:
        got.extend(m.data for m in msgs)

    consumer = BatchConsumer(
        js, stream=SimpleNamespace(value="RESTART"),  # type: ignore[arg-type]
        durable="restart", filter_subject="restart.>", handler=handler,
        fetch_timeout_s=3600.0,
    )
    await consumer.start()
    try:
        await js.publish("restart.a", b"before")
        await _until(lambda: got == [b"before"])
        server.stop()
        server.start()
        await _until(lambda: nc.is_connected)
        await _until_published(js, "restart.b", b"after")
        await _until(lambda: got == [b"before", b"after"])
    finally:
        await consumer.stop()
        await nc.close()
        server.stop()


async def _until(check: Any, deadline_s: float = 60.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < give_up, "condition not met before the deadline"
        await asyncio.sleep(0.05)


async def _until_published(js: Any, subject: str, body: bytes, deadline_s: float = 60.0) -> None:
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            await js.publish(subject, body, timeout=2)
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            assert time.monotonic() < give_up, "JetStream did not come back"
            await asyncio.sleep(0.1)
