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
async def pull(nats_url: str) -> AsyncIterator[tuple[Any, str, str]]:
    """A private stream with a durable pull consumer; yields (js, stream, subject)."""
    token = uuid.uuid4().hex[:12]
    stream, subject = f"COMPAT_{token}", f"compat.{token}"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    await js.add_consumer(stream, jsapi.ConsumerConfig(
        durable_name="compat", ack_policy=jsapi.AckPolicy.EXPLICIT))
    try:
        yield js, stream, subject
    finally:
        await js.delete_stream(stream)
        await nc.drain()


async def test_jetstream_context_keeps_the_attributes_compat_reads(
    pull: tuple[Any, str, str],
) -> None:
    js, _, _ = pull
    assert hasattr(getattr(js, "_nc", None), "publish"), _broken(
        "JetStreamContext._nc is the client that publishes pull requests")
    assert str(getattr(js, "_prefix", "")).endswith(".API"), _broken(
        "JetStreamContext._prefix is the JetStream API prefix ($JS.API or $JS.<domain>.API)")
    requests = nats_compat.PullRequests(js, "S", "D")
    inbox = await requests.open()
    try:
        assert isinstance(getattr(inbox, "_pending_queue", None), asyncio.Queue), _broken(
            "Subscription._pending_queue is the asyncio.Queue of delivered messages")
        assert isinstance(getattr(inbox, "_pending_size", None), int), _broken(
            "Subscription._pending_size counts the bytes buffered (pending_bytes)")
    finally:
        await requests.close()


async def test_one_pull_request_delivers_and_buffers_a_batch(pull: tuple[Any, str, str]) -> None:
    js, stream, subject = pull
    bodies = [f"m{i}".encode() for i in range(5)]
    for body in bodies:
        await js.publish(subject, body)
    requests = nats_compat.PullRequests(js, stream, "compat")
    inbox = await requests.open()
    request = json.dumps({"batch": len(bodies), "expires": 5_000_000_000}).encode()
    await requests.send(request)

    received: list[Msg] = []
    while len(received) < len(bodies):
        msg = nats_compat.take_buffered(inbox)
        if msg is None:  # nothing buffered yet: wait (bounded) for the next delivery
            msg = await nats_compat.next_delivered(inbox, 5)
        assert msg is not None
        received.append(msg)
    assert [m.data for m in received] == bodies, _broken(
        "a pull request sent to <prefix>.CONSUMER.MSG.NEXT.<stream>.<consumer> delivers the "
        "batch to its reply subject")
    assert nats_compat.take_buffered(inbox) is None
    assert inbox.pending_bytes == 0 and inbox.pending_msgs == 0, _broken(
        "taking from _pending_queue and lowering _pending_size keeps pending_bytes right")
    for msg in received:
        await msg.ack_sync()
    info = await js.consumer_info(stream, "compat")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    # drain() joins the pending queue: it returns at once only if every take was task_done.
    await asyncio.wait_for(inbox.drain(), 5)


async def test_each_request_ends_with_a_status_on_its_own_reply_subject(
    pull: tuple[Any, str, str],
) -> None:
    """What lets the consumer pass over the late expiry of a request it gave up on."""
    js, stream, _ = pull
    requests = nats_compat.PullRequests(js, stream, "compat")
    inbox = await requests.open()
    try:
        first = await requests.send(json.dumps({"batch": 1, "expires": 200_000_000}).encode())
        second = await requests.send(json.dumps({"batch": 1, "expires": 400_000_000}).encode())
        ended = []
        for _ in range(2):
            msg = await nats_compat.next_delivered(inbox, 5)
            assert msg is not None and msg.headers is not None
            ended.append((msg.subject, msg.headers.get("Status")))
        assert ended == [(first, "408"), (second, "408")], _broken(
            "an expired pull request's 408 status arrives on that request's reply subject")
    finally:
        await requests.close()


async def test_wake_ends_a_wait_at_once(pull: tuple[Any, str, str]) -> None:
    js, stream, _ = pull
    requests = nats_compat.PullRequests(js, stream, "compat")
    inbox = await requests.open()
    try:
        waiting = asyncio.create_task(nats_compat.next_delivered(inbox, 30))
        await asyncio.sleep(0)  # let the wait begin (a wake before it would end it as well)
        nats_compat.wake(inbox)
        assert await asyncio.wait_for(waiting, 5) is None
        assert inbox.pending_msgs == 0
    finally:
        await requests.close()
