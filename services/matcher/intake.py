"""The matcher's pull consumer of EVT: the next fetch and batch overlap the current one.

`jetstream.BatchConsumer` runs fetch → handle → ack strictly in turn, so the process sits
idle while NATS delivers the next batch and while the CMD stream acks the triggers of this
one. Matching is CPU-bound in Python and those waits are I/O, so here a fetcher keeps one
batch ready ahead (a queue of `prefetch` batches) and up to `max_in_flight` batches are
being handled at once: one is matched while the triggers of another are being acked.

The delivery contract is BatchConsumer's: a message is acked only after the handler that
saw it returned (its triggers and outcome record were acked by their streams); rejected
messages and messages delivered `max_deliver` times are dead-lettered to DLQ with their
subject, sequence and reason, then terminated; a batch whose handler raised is retried
message by message so one poison message cannot hold back the others, and a message that
still fails is nak'ed with a delay. Batches may be acked out of fetch order, which only
matters to ack-all consumers; this one acks explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from libs.common import retry, subjects
from libs.common.jetstream import BatchHandler, PoisonMessage, Rejected
from libs.common.subjects import Header, Stream

log = logging.getLogger(__name__)


_V1_ACK_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>


def deliveries(msg: Msg) -> int:
    """How many times `msg` was delivered, read from its ack subject.

    `msg.metadata` parses every token into a dataclass with a datetime; this is the one
    number needed per message, so read it directly for the common reply format.
    """
    reply = msg.reply or ""
    tokens = reply.split(".")
    if len(tokens) == _V1_ACK_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4])
    return msg.metadata.num_delivered


class EventIntake:
    """A durable pull consumer with bounded prefetch and bounded concurrent batches."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: Stream,
        durable: str,
        filter_subject: str,
        handler: BatchHandler,
        batch_size: int = 500,
        prefetch: int = 1,
        max_in_flight: int = 2,
        max_deliver: int = 8,
        ack_wait_s: float = 30.0,
        backoff_s: Sequence[float] = (0.2, 1.0, 2.0, 5.0, 10.0),
        fetch_timeout_s: float = 1.0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._filter = filter_subject
        self._handler = handler
        self._batch_size = batch_size
        self._max_deliver = max_deliver
        self._ack_wait_s = ack_wait_s
        self._backoff = list(backoff_s)
        self._fetch_timeout_s = fetch_timeout_s
        self._max_in_flight = max_in_flight
        # Bounded: the fetcher waits when this many batches are fetched but not yet started.
        self._ready: asyncio.Queue[list[Msg]] = asyncio.Queue(maxsize=max(1, prefetch))
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.dead_lettered = 0

    async def start(self) -> None:
        backoff = self._backoff[: max(0, self._max_deliver - 1)]
        # Room for every batch we may hold at once (queued, in flight, being fetched).
        held = self._batch_size * (self._ready.maxsize + self._max_in_flight + 1)
        config = jsapi.ConsumerConfig(
            durable_name=self._durable,
            filter_subject=self._filter,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_deliver=self._max_deliver,
            backoff=backoff or None,
            max_ack_pending=max(1000, held),
        )
        self._sub = await self._js.pull_subscribe(
            self._filter, durable=self._durable, stream=self._stream.value, config=config
        )
        self._task = asyncio.create_task(self._run(), name=f"intake:{self._durable}")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop fetching, let batches in hand finish (bounded), then unsubscribe. Idempotent."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            fetcher = tg.create_task(self._fetch_loop(), name=f"intake-fetch:{self._durable}")
            slots = asyncio.Semaphore(self._max_in_flight)
            while not (fetcher.done() and self._ready.empty()):
                batch = await self._next_batch(fetcher)
                if batch is None:
                    continue
                await slots.acquire()
                task = tg.create_task(self._process(batch))
                task.add_done_callback(lambda _: slots.release())

    async def _next_batch(self, fetcher: asyncio.Task[None]) -> list[Msg] | None:
        get = asyncio.ensure_future(self._ready.get())
        await asyncio.wait((get, fetcher), return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            return get.result()
        get.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await get
        return None

    async def _fetch_loop(self) -> None:
        assert self._sub is not None
        while not self._stopping.is_set():
            try:
                # Connection trouble is retried with backoff; a fetch timeout only means "no
                # messages yet" and goes straight to the next fetch.
                async for attempt in retry.policy(
                    f"matcher.fetch.{self._durable}", timeout_s=None, until=self._stopping,
                    on=lambda exc: retry.any_error(exc) and not isinstance(exc, TimeoutError),
                ):
                    with attempt:
                        msgs = await self._sub.fetch(self._batch_size, timeout=self._fetch_timeout_s)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # only while stopping: the policy retries until then
                log.warning("fetch failed on %s: %r", self._durable, exc)
                continue
            await self._ready.put(msgs)

    async def _process(self, msgs: list[Msg]) -> None:
        live: list[Msg] = []
        for msg in msgs:
            if deliveries(msg) >= self._max_deliver:
                await self._dead_letter(msg, "max deliveries reached")
            else:
                live.append(msg)
        if not live:
            return
        try:
            rejected = await self._handler(live)
        except Exception as exc:
            if len(live) == 1:
                await self._fail(live[0], exc)
                return
            log.warning("batch of %d failed on %s (%r); retrying one by one",
                        len(live), self._durable, exc)
            for msg in live:
                try:
                    one_rejected = await self._handler([msg])
                except Exception as one_exc:
                    await self._fail(msg, one_exc)
                else:
                    await self._settle([msg], one_rejected)
            return
        await self._settle(live, rejected)

    async def _settle(self, msgs: list[Msg], rejected: Rejected | None) -> None:
        reasons = {id(m): reason for m, reason in rejected or ()}
        for msg in msgs:
            reason = reasons.get(id(msg))
            if reason is not None:
                await self._dead_letter(msg, reason)
                continue
            with contextlib.suppress(Exception):  # a lost ack means one redelivery, no more
                await msg.ack()

    async def _fail(self, msg: Msg, exc: Exception) -> None:
        if isinstance(exc, PoisonMessage):
            await self._dead_letter(msg, str(exc))
            return
        log.warning(
            "event failed on %s subject=%s seq=%s delivery=%s: %r", self._durable, msg.subject,
            msg.metadata.sequence.stream, msg.metadata.num_delivered, exc,
        )
        with contextlib.suppress(Exception):
            await msg.nak(delay=self._backoff[0] if self._backoff else None)

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        seq = msg.metadata.sequence.stream
        log.error("dead-lettering event",
                  extra={"subject": msg.subject, "stream_seq": seq, "reason": reason})
        headers = {k: v for k, v in (msg.headers or {}).items() if k != Header.MSG_ID.value}
        headers[Header.DLQ_SUBJECT.value] = msg.subject
        headers[Header.DLQ_SEQ.value] = str(seq)
        headers[Header.DLQ_REASON.value] = reason[:500]
        headers[Header.MSG_ID.value] = f"dlq:{self._stream.value}:{seq}"
        try:
            await self._js.publish(subjects.dlq(msg.subject), msg.data, headers=headers)
            await msg.term()
            self.dead_lettered += 1
        except Exception as exc:  # stays unacked: redelivered after ack_wait, tried again
            log.error("could not dead-letter seq=%s: %r", seq, exc)
