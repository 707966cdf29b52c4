"""The nats-py internals libs/common/nats_compat.py relies on, checked against a real server.

nats-py is pinned to one minor in pyproject.toml. When an upgrade changes the private
attributes of a pull subscription, the failing test names what broke: adapt nats_compat.py
(and libs/common/jetstream.py's pull loop) before moving the pin.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as jsapi

from libs.common import nats_compat

pytestmark = pytest.mark.asyncio(loop_scope="session")

VERSION = importlib.metadata.version("nats-py")


def _broken(assumption: str) -> str:
    return (
        f"nats-py {VERSION} broke an assumption of libs/common/nats_compat.py: {assumption}. "
        "Adapt nats_compat.py before moving the nats-py pin in pyproject.toml."
    )


@pytest.fixture
async def pull(nats_url: str) -> AsyncIterator[tuple[Any, Any, str]]:
    """A private stream and durable pull subscription; yields (js, psub, stream)."""
    token = uuid.uuid4().hex[:12]
    stream, subject = f"COMPAT_{token}", f"compat.{token}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    psub = await js.pull_subscribe(subject, durable="compat", stream=stream,
                                   config=jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.EXPLICIT))
    try:
        yield js, psub, stream
    finally:
        await js.delete_stream(stream)
        await nc.drain()


async def test_pull_subscription_keeps_the_attributes_compat_reads(
    pull: tuple[Any, Any, str],
) -> None:
    _, psub, stream = pull
    assert isinstance(getattr(psub, "_sub", None), Subscription), _broken(
        "PullSubscription._sub is the inbox Subscription")
    assert hasattr(getattr(psub, "_nc", None), "publish"), _broken(
        "PullSubscription._nc is the client that publishes pull requests")
    next_subject = f".CONSUMER.MSG.NEXT.{stream}.compat"
    assert str(getattr(psub, "_nms", "")).endswith(next_subject), _broken(
        "PullSubscription._nms is the $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> subject")
    assert getattr(psub, "_deliver", None) == psub._sub.subject, _broken(
        "PullSubscription._deliver is the inbox subject (a str)")
    inbox = psub._sub
    assert isinstance(getattr(inbox, "_pending_queue", None), asyncio.Queue), _broken(
        "Subscription._pending_queue is the asyncio.Queue of delivered messages")
    assert isinstance(getattr(inbox, "_pending_size", None), int), _broken(
        "Subscription._pending_size counts the bytes buffered (pending_bytes)")


async def test_one_pull_request_delivers_and_buffers_a_batch(pull: tuple[Any, Any, str]) -> None:
    js, psub, stream = pull
    subject = f"compat.{stream.removeprefix('COMPAT_')}"
    bodies = [f"m{i}".encode() for i in range(5)]
    for body in bodies:
        await js.publish(subject, body)
    inbox = nats_compat.pull_inbox(psub)
    request = json.dumps({"batch": len(bodies), "expires": 5_000_000_000}).encode()
    await nats_compat.request_next(psub, request)

    received: list[Msg] = []
    while len(received) < len(bodies):
        msg = nats_compat.take_buffered(inbox)
        if msg is None:  # nothing buffered yet: wait (bounded) for the next delivery
            msg = await inbox.next_msg(timeout=5)
        received.append(msg)
    assert [m.data for m in received] == bodies, _broken(
        "a pull request sent to _nms with reply=_deliver delivers the batch to the inbox")
    assert nats_compat.take_buffered(inbox) is None
    assert inbox.pending_bytes == 0 and inbox.pending_msgs == 0, _broken(
        "taking from _pending_queue and lowering _pending_size keeps pending_bytes right")
    for msg in received:
        await msg.ack_sync()
    info = await js.consumer_info(stream, "compat")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    # drain() joins the pending queue: it returns at once only if every take was task_done.
    await asyncio.wait_for(inbox.drain(), 5)
