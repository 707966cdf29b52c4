"""nats-py below its public API: the pieces of a pull subscription our consumer drives itself.

Pinned to one minor (pyproject: `nats-py>=2.16,<2.17`); tests/unit/test_nats_compat.py checks
each assumption against a real server so an upgrade that breaks one fails loudly there.

Why: nats-py's `fetch(n)` returns when n messages arrived or its timeout passed, so under
light load every message waits out the timeout. libs/common/jetstream.py keeps one pull
request open and hands over whatever has arrived; that needs the subscription's inbox, the
subject a pull request goes to, and the messages already buffered, none of which nats-py
exposes. It reads them the way nats-py's own `fetch` does:

- `PullSubscription._sub` (the inbox Subscription), `._nc` (the client), `._nms` (the
  `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` subject), `._deliver` (the inbox subject);
- `Subscription._pending_queue` (the asyncio.Queue of delivered messages, whose tasks
  `drain()` joins; `wake` puts a marker of ours in it) and `._pending_size` (bytes buffered, read by the slow-consumer limit).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext


def client_of(js: JetStreamContext) -> NATS:
    """The client a JetStream context publishes with (`JetStreamContext._nc`)."""
    nc: NATS = js._nc
    return nc


class PullRequests:
    """The pull requests of one durable consumer, each with a reply subject of its own under
    one wildcard inbox.

    A request ends with a status message (408 expired, 404/409) sent to its reply subject. With
    one shared reply subject (nats-py's `pull_subscribe`), a status that arrives after the
    client gave up on its request and sent the next one would end that next one too early,
    and each such late status left one more request open for good: an idle consumer was
    seen answering 25 expiries a second after hours of use. Here a status names its request.
    Reads `JetStreamContext._nc` (the client) and `._prefix` (`$JS.API`, or the domain's).
    """

    def __init__(self, js: JetStreamContext, stream: str, durable: str) -> None:
        self._nc = js._nc
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._prefix = self._nc.new_inbox()
        self._sent = 0
        self.inbox: Subscription | None = None

    async def open(self) -> Subscription:
        self.inbox = await self._nc.subscribe(f"{self._prefix}.*")
        return self.inbox

    async def send(self, request: bytes) -> str:
        """Send one pull request (a JSON `{"batch", "expires", ...}` body); returns the subject
        its messages and its ending status arrive on (messages carry their own subject)."""
        self._sent += 1
        reply = f"{self._prefix}.{self._sent}"
        await self._nc.publish(self._next_subject, request, reply=reply)
        return reply

    async def close(self) -> None:
        if self.inbox is not None:
            with contextlib.suppress(Exception):
                await self.inbox.unsubscribe()
            self.inbox = None


_WAKE: Any = object()  # what `wake` puts in an inbox's queue (typed as a message would be)


async def next_delivered(inbox: Subscription, within_s: float) -> Msg | None:
    """The next message delivered to `inbox`, waiting up to `within_s` (then TimeoutError); None
    once `wake(inbox)` was called (a stopping consumer, or a reconnected client).

    nats-py's own `next_msg` makes a task and a uuid4 per call; a pull loop waits here once per
    message batch and once per idle pull request, so this waits on the queue directly, keeping
    the same books as `take_buffered`.
    """
    queue = inbox._pending_queue
    async with asyncio.timeout(within_s):
        msg = await queue.get()
    queue.task_done()
    if msg is _WAKE:
        return None
    inbox._pending_size -= len(msg.data)
    return msg


def wake(inbox: Subscription) -> None:
    """Make a `next_delivered` wait on `inbox` return None now (a stopping consumer's loop)."""
    with contextlib.suppress(asyncio.QueueFull):  # full: the loop has messages, it is not waiting
        inbox._pending_queue.put_nowait(_WAKE)


def take_buffered(inbox: Subscription) -> Msg | None:
    """The next message already delivered to `inbox`, without waiting; None when there is none.

    Keeps nats-py's books as `next_msg` does: the byte count (its slow-consumer limit) and the
    queue's unfinished-task count, which `Subscription.drain()` waits on (without
    `task_done()` a drain would hang until its timeout).
    """
    queue = inbox._pending_queue
    if queue.empty():
        return None
    msg = queue.get_nowait()
    queue.task_done()
    if msg is _WAKE:  # a stopping loop: it sees its flag before it waits again
        return None
    inbox._pending_size -= len(msg.data)
    return msg
