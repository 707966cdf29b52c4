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
  `drain()` joins) and `._pending_size` (bytes buffered, read by the slow-consumer limit).
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext


def pull_inbox(psub: JetStreamContext.PullSubscription) -> Subscription:
    """The plain subscription on which a pull subscription's messages arrive."""
    inbox: Subscription = psub._sub
    return inbox


async def request_next(psub: JetStreamContext.PullSubscription, request: bytes) -> None:
    """Send one pull request (a JSON `{"batch", "expires", ...}` body); replies go to the inbox."""
    await psub._nc.publish(psub._nms, request, reply=psub._deliver)


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
    inbox._pending_size -= len(msg.data)
    queue.task_done()
    return msg
