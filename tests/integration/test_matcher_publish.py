"""The acked publisher (the matcher publishes with it): returns after every stream ack, raises
on refusals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import Stack

from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.publish import AckedPublisher, PublishError
from libs.common.subjects import Stream

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[Any]:
    conn = await jetstream.connect(stack.settings, "publish-test")
    await jetstream.provision(conn.jetstream(), stack.settings)
    yield conn
    await conn.drain()


async def _stored(nc: Any, subject: str) -> int:
    info = await nc.jetstream().stream_info(Stream.TASK.value, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_batch_is_stored_once_per_msg_id(nc: Any) -> None:
    publisher = AckedPublisher(nc)
    await publisher.start()
    subject = subjects.task_match("tp" + uuid.uuid4().hex[:10])
    batch = [Outgoing(subject, f"m{i}".encode(), f"pubtest:{subject}:{i}") for i in range(300)]
    try:
        await publisher.publish_batch(batch)
        assert await _stored(nc, subject) == 300  # every ack arrived before it returned
        await publisher.publish_batch(batch[:50])  # a retried batch: duplicates dropped
        assert await _stored(nc, subject) == 300
        await publisher.publish_batch([])
    finally:
        await publisher.stop()
        await publisher.stop()


async def test_refused_publish_raises(nc: Any) -> None:
    publisher = AckedPublisher(nc)
    await publisher.start()
    try:
        with pytest.raises(PublishError, match="no stream"):
            await publisher.publish_batch(
                [Outgoing("nostream.anywhere", b"x", f"nostream:{uuid.uuid4().hex}")])
    finally:
        await publisher.stop()
