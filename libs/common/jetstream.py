"""JetStream plumbing: connect, provision streams, publish with msg-ids, batched pull consumers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BadRequestError, NotFoundError

from libs.common import nats_compat, partitions, retry, subjects
from libs.common.settings import Settings
from libs.common.subjects import Bucket, Header, Stream

log = logging.getLogger(__name__)

WORK_QUEUE_STREAMS = {Stream.CMD, Stream.DSP}


CONNECT_RETRY_S = 30.0  # a service started just before NATS waits for it this long


def connect_options(settings: Settings) -> dict[str, Any]:
    """nats.connect keyword arguments: the servers (NATS_URL, comma-separated for a cluster),
    the credentials and TLS in `settings`."""
    opts: dict[str, Any] = {"servers": settings.nats_servers}
    if settings.nats_creds:
        if not Path(settings.nats_creds).is_file():
            raise ValueError(f"NATS_CREDS={settings.nats_creds!r} is not a readable file")
        opts["user_credentials"] = settings.nats_creds
    elif settings.nats_user:
        opts["user"], opts["password"] = settings.nats_user, settings.nats_password
    elif settings.nats_token:
        opts["token"] = settings.nats_token
    if settings.nats_tls_ca or settings.nats_tls_cert:
        ctx = ssl.create_default_context(cafile=settings.nats_tls_ca or None)
        if settings.nats_tls_cert:
            ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        opts["tls"] = ctx
    return opts


async def connect(settings: Settings, name: str) -> NATS:
    """Connect with unlimited reconnects: a NATS restart must not kill a service.

    nats-py reconnects by itself once connected, but the first connect fails at once when the
    server is not up yet: that one goes through the retry policy.
    """
    opts = connect_options(settings)
    hooks: list[Callable[[], None]] = []

    async def reconnected() -> None:
        for hook in list(hooks):
            hook()

    async for attempt in retry.policy(f"nats.connect.{name}", timeout_s=CONNECT_RETRY_S):
        with attempt:
            nc = await nats.connect(
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                allow_reconnect=True,
                reconnected_cb=reconnected,
                **opts,
            )
    _RECONNECT_HOOKS[nc] = hooks
    return nc


# Per client made by `connect`: what to call once it has reconnected.
_RECONNECT_HOOKS: weakref.WeakKeyDictionary[NATS, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def on_reconnect(nc: NATS, hook: Callable[[], None]) -> Callable[[], None]:
    """Call `hook` each time `nc` reconnects (a client `connect` made; others: never).
    Returns a function that removes it."""
    hooks = _RECONNECT_HOOKS.get(nc)
    if hooks is None:
        return lambda: None
    hooks.append(hook)
    return lambda: hooks.remove(hook) if hook in hooks else None


# The server's answers to more replicas than it can place.
_CANNOT_PLACE = {
    10074: "not clustered",  # "replicas > 1 not supported in non-clustered mode"
    10023: "insufficient resources",  # fewer cluster nodes up than replicas asked for
}
_AUTO_REPLICAS = 3


MAX_MSG_BYTES = 8 * 1024 * 1024  # every stream's max_msg_size
# Streams whose bulk is what tasks say rather than state also stop at a size (oldest messages
# go first): a flood of log lines or chunks cannot fill the server's store, where every
# publish, commands included, would then fail. Far above what their age limit keeps at
# ordinary rates (docs/operations.md, "Memory").
STREAM_MAX_BYTES: dict[Stream, int] = {
    Stream.LOG: 8 * 1024**3,
    Stream.CHUNK: 2 * 1024**3,
}
# A pull request's byte budget must fit the largest message (with its headers): one that does
# not would be refused by the server on every request, and wedge the consumer.
MIN_PULL_BYTES = MAX_MSG_BYTES + 1024 * 1024


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and KV bucket. Safe to run from every process.

    Each gets NATS_REPLICAS replicas. With NATS_REPLICAS=0 (the default) the server decides:
    3 where it can place them (a cluster of 3 or more nodes up), else 1: asking for 3 is the
    question, so a single server answers the first stream with "not clustered" and the rest
    are made with 1. An existing stream or bucket with another replica count is scaled to the
    wanted one; where the server refuses, it keeps the count it has (a warning says so), and
    auto mode never scales one down because a node is away.
    """
    replicas = settings.nats_replicas or _AUTO_REPLICAS
    for stream, subs in subjects.STREAM_SUBJECTS.items():
        work_queue = stream in WORK_QUEUE_STREAMS
        config = jsapi.StreamConfig(
            name=stream.value,
            subjects=subs,
            retention=(
                jsapi.RetentionPolicy.WORK_QUEUE if work_queue else jsapi.RetentionPolicy.LIMITS
            ),
            storage=jsapi.StorageType.FILE,
            max_age=_max_age(stream, settings),
            max_bytes=STREAM_MAX_BYTES.get(stream, -1),
            duplicate_window=settings.dedupe_window_s,
            max_msg_size=MAX_MSG_BYTES,
            # CMD and TASK file commands and reports under the tenant's scheduler partition.
            subject_transform=await partitions.transform(js, stream, settings),
        )
        replicas = await _with_replicas(
            _ensure_stream, js, config, stream.value, replicas, settings
        )
    for bucket, ttl in (
        (Bucket.WORKERS, None),
        (Bucket.DISPATCHERS, None),
    ):
        kv_config = jsapi.KeyValueConfig(bucket=bucket.value, history=1, ttl=ttl)
        replicas = await _with_replicas(
            _ensure_bucket, js, kv_config, f"KV_{bucket.value}", replicas, settings
        )


async def _with_replicas(
    ensure: Callable[[JetStreamContext, Any, int], Awaitable[None]],
    js: JetStreamContext,
    config: Any,
    stream: str,
    replicas: int,
    settings: Settings,
) -> int:
    """`ensure` the stream with `replicas`, or with what the server can place; returns the
    replica count to ask for next."""
    try:
        await ensure(js, config, replicas)
        return replicas
    except APIError as exc:
        why = _CANNOT_PLACE.get(exc.err_code or 0)
        if why is None or replicas == 1:
            raise
        current = await _current_replicas(js, stream)
    if settings.nats_replicas:
        if current is None:
            raise RuntimeError(
                f"NATS_REPLICAS={replicas}: NATS cannot create stream {stream} with {replicas} "
                f"replicas ({why})"
            )
        log.warning("stream %s keeps %d replica(s): NATS refused NATS_REPLICAS=%d (%s)",
                    stream, current, replicas, why)
        await ensure(js, config, current)
        return replicas
    if why != _CANNOT_PLACE[10074]:
        log.warning("NATS cannot place %d replicas of %s (%s): it gets %d",
                    replicas, stream, why, current or 1)
    await ensure(js, config, current or 1)
    return 1


async def _current_replicas(js: JetStreamContext, stream: str) -> int | None:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    return info.config.num_replicas or 1


async def _ensure_stream(js: JetStreamContext, config: jsapi.StreamConfig, replicas: int) -> None:
    config = replace(config, num_replicas=replicas)
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with different settings (another version, another replica count): update.
        await js.update_stream(config)


async def _ensure_bucket(js: JetStreamContext, config: jsapi.KeyValueConfig, replicas: int) -> None:
    info_config = None
    with contextlib.suppress(NotFoundError):
        info_config = (await js.stream_info(f"KV_{config.bucket}")).config
    if info_config is None:
        await js.create_key_value(replace(config, replicas=replicas))
    elif (info_config.num_replicas or 1) != replicas:
        await js.update_stream(replace(info_config, num_replicas=replicas))


def _max_age(stream: Stream, settings: Settings) -> float | None:
    if stream in WORK_QUEUE_STREAMS:
        return None
    if stream is Stream.CHUNK:
        return settings.ratchet_stream_retention
    return settings.stream_max_age_s


@dataclass(slots=True)
class Outgoing:
    """One message to publish. msg_id must be deterministic for exactly-once effects."""

    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] = field(default_factory=dict)


async def publish_batch(
    js: JetStreamContext, batch: Sequence[Outgoing], timeout_s: float = 10.0
) -> None:
    """Publish pipelined and wait for every ack; raises if any publish failed or timed out.

    Acks of messages sent just before a NATS restart never arrive, so the wait is bounded and
    the stragglers are cancelled (which also hands their slots back to nats-py's pending-publish
    semaphore). Callers republish with the same msg-ids; the stream drops the duplicates.
    """
    futures: list[asyncio.Future[jsapi.PubAck]] = []
    try:
        # One deadline for the whole batch: nats-py's own per-publish `wait_stall` wraps every
        # publish in asyncio.wait_for, which costs a task per message.
        async with asyncio.timeout(timeout_s):
            for item in batch:
                headers = {Header.MSG_ID.value: item.msg_id, **item.headers}
                futures.append(await js.publish_async(item.subject, item.payload, headers=headers))
            if futures:
                await asyncio.gather(*futures)
    except TimeoutError:
        pending = sum(1 for fut in futures if not fut.done())
        raise TimeoutError(
            f"{pending + len(batch) - len(futures)} of {len(batch)} publishes were not acked"
        ) from None
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()


async def publish_one(js: JetStreamContext, item: Outgoing, timeout_s: float = 5.0) -> None:
    headers = {Header.MSG_ID.value: item.msg_id, **item.headers}
    await js.publish(item.subject, item.payload, headers=headers, timeout=timeout_s)


# A handler applies a batch and returns the messages it found undecodable (with a reason):
# those are dead-lettered, everything else is acked once the handler returns.
Rejected = list[tuple[Msg, str]]
BatchHandler = Callable[[list[Msg]], Awaitable[Rejected | None]]


class PoisonMessage(Exception):
    """Raised by a handler for a message that can never be processed (bad encoding...)."""


class BatchConsumer:
    """A durable pull consumer that hands batches to a handler and acks after it returns.

    The one JetStream consumer of every service. In-flight work is bounded by the fetch size
    (and by `max_bytes` per pull request, when set), by `max_in_flight` batches handled at
    once, and by the server-side max_ack_pending. A
    batch the handler holds past ack_wait is kept from redelivery by in-progress acks. A
    failing batch is retried message by message so one poison message cannot hold back the
    rest; a message that still fails is nak'ed with the backoff step of its delivery, and one
    delivered max_deliver times (or rejected by the handler, or raising PoisonMessage) is
    dead-lettered to the DLQ stream with its subject, sequence and reason, then terminated.

    With `max_in_flight` > 1 (the matcher: matching is CPU-bound Python, its publishing waits
    on acks) the next batch is taken and handled while earlier ones are still waiting, so
    one is matched while the triggers of another are being acked. Batches may then be acked
    out of delivery order, which only matters to ack-all consumers; this one acks explicitly.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: Stream,
        durable: str,
        filter_subject: str,
        handler: BatchHandler,
        batch_size: int = 256,
        max_deliver: int = 8,
        ack_wait_s: float = 30.0,
        backoff_s: Sequence[float] = (0.2, 1.0, 2.0, 5.0, 10.0),
        fetch_timeout_s: float = 5.0,
        deliver_new: bool = False,
        max_in_flight: int = 1,
        max_bytes: int = 0,
    ) -> None:
        if max_bytes and max_bytes < MIN_PULL_BYTES:
            raise ValueError(f"max_bytes must be 0 (no limit) or at least {MIN_PULL_BYTES}")
        self._max_bytes = max_bytes
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
        self._deliver_new = deliver_new
        self._max_in_flight = max(1, max_in_flight)
        self._pulls: nats_compat.PullRequests | None = None
        self._forget_hook: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.dead_lettered = 0

    async def start(self) -> None:
        # No server-side BackOff: with one set, nats-server takes BackOff[0] as the ack deadline
        # of the first delivery, so any batch the handler held longer than 0.2 s was redelivered
        # and handled twice. Every delivery gets ack_wait (the handler's batches are kept alive
        # past it by in-progress acks); a failed message is nak'ed with its backoff delay.
        config = jsapi.ConsumerConfig(
            durable_name=self._durable,
            filter_subject=self._filter,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_deliver=self._max_deliver,
            # Room for the batches in hand and one pull request's worth arriving.
            max_ack_pending=max(1000, self._batch_size * (self._max_in_flight + 3)),
            deliver_policy=(
                jsapi.DeliverPolicy.NEW if self._deliver_new else jsapi.DeliverPolicy.ALL
            ),
        )
        # Create, or update one an earlier version made (a BackOff it had is removed).
        await self._js.add_consumer(self._stream.value, config)
        self._pulls = nats_compat.PullRequests(self._js, self._stream.value, self._durable)
        inbox = await self._pulls.open()
        # The server forgets open pull requests across a reconnect: ask again at once rather
        # than wait out the request's expiry.
        self._forget_hook = on_reconnect(nats_compat.client_of(self._js),
                                         lambda: nats_compat.wake(inbox))
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self._durable}")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop fetching, let the batch in hand finish (bounded), then unsubscribe."""
        self._stopping.set()
        if self._pulls is not None and self._pulls.inbox is not None:
            nats_compat.wake(self._pulls.inbox)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self._forget_hook()
        if self._pulls is not None:
            await self._pulls.close()
            self._pulls = None

    async def _run(self) -> None:
        """Keep a pull request open and hand over whatever has arrived, as soon as it arrives.

        nats-py's fetch(n) returns when n messages arrived or its timeout passed, so under light
        load every message would wait out the timeout. Here the first message after a quiet
        spell is handled at once, and under load everything that piled up while the previous
        batch was being handled goes as one batch. The pull request asks for up to
        `batch_size` messages and expires after `fetch_timeout_s`; then a new one is sent (that
        also recovers from a NATS reconnect, which forgets open requests).

        A batch is handled in a task of its own while fewer than `max_in_flight` are; else the
        loop waits for a slot before taking messages, so what arrives meanwhile joins one batch.
        """
        async with asyncio.TaskGroup() as batches:
            await self._pull_loop(batches, asyncio.Semaphore(self._max_in_flight))

    async def _pull_loop(self, batches: asyncio.TaskGroup, slots: asyncio.Semaphore) -> None:
        assert self._pulls is not None and self._pulls.inbox is not None
        pulls, inbox = self._pulls, self._pulls.inbox
        expires_ns = int(self._fetch_timeout_s * 1e9)
        pull: dict[str, int] = {"batch": self._batch_size, "expires": expires_ns}
        if self._max_bytes:
            pull["max_bytes"] = self._max_bytes  # the request ends once this much arrived
        request = json.dumps(pull).encode()
        while not self._stopping.is_set():
            try:
                async for attempt in retry.policy(
                    f"consumer.pull.{self._durable}", timeout_s=None, until=self._stopping,
                    on=retry.any_error,
                ):
                    with attempt:
                        current = await pulls.send(request)
            except Exception as exc:  # only while stopping: the policy retries until then
                log.warning("pull request failed on %s: %r", self._durable, exc)
                continue
            open_until = time.monotonic() + self._fetch_timeout_s + 0.05
            remaining = self._batch_size
            while remaining > 0 and not self._stopping.is_set():
                await slots.acquire()  # the wait for a free slot counts against the request
                wait_s = open_until - time.monotonic()
                if wait_s <= 0:
                    slots.release()
                    break
                try:
                    # Waits out the request (its expiry arrives as a 408 status message) or
                    # until stop() wakes it: no polling while idle.
                    first = await nats_compat.next_delivered(inbox, wait_s)
                except TimeoutError:
                    slots.release()
                    continue
                except BaseException:
                    slots.release()
                    raise
                if first is None:  # stop() woke the loop, or a reconnect: a new request
                    slots.release()
                    break
                msgs, finished = _take_available(inbox, first, current)
                remaining -= len(msgs)
                if msgs:
                    task = batches.create_task(self._process(msgs))
                    task.add_done_callback(lambda _: slots.release())
                else:
                    slots.release()
                if finished:
                    break

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
            rejected = await self._handle(live)
        except Exception as exc:
            if len(live) == 1:
                await self._fail_one(live[0], exc)
                return
            log.warning("batch of %d failed on %s (%r); isolating", len(live), self._durable, exc)
            for msg in live:
                try:
                    one_rejected = await self._handler([msg])
                except Exception as one_exc:
                    await self._fail_one(msg, one_exc)
                else:
                    await self._settle([msg], one_rejected)
            return
        await self._settle(live, rejected)

    async def _handle(self, msgs: list[Msg]) -> Rejected | None:
        """The handler's answer; a batch it holds for long (the scheduler applies a storm's
        commands over several batches) is kept from redelivery by in-progress acks."""
        task = asyncio.ensure_future(self._handler(msgs))
        while True:
            done, _ = await asyncio.wait((task,), timeout=self._ack_wait_s / 3)
            if done:
                return task.result()
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _settle(self, msgs: list[Msg], rejected: Rejected | None) -> None:
        bad = {id(m): reason for m, reason in rejected or ()}
        for msg in msgs:
            reason = bad.get(id(msg))
            if reason is None:
                await _ack(msg)
            else:
                await self._dead_letter(msg, reason)

    async def _fail_one(self, msg: Msg, exc: Exception) -> None:
        if isinstance(exc, PoisonMessage):
            await self._dead_letter(msg, str(exc))
            return
        log.warning(
            "message failed on %s subject=%s seq=%s delivery=%s: %r",
            self._durable,
            msg.subject,
            msg.metadata.sequence.stream,
            deliveries(msg),
            exc,
        )
        with contextlib.suppress(Exception):
            await msg.nak(delay=self._nak_delay(deliveries(msg)))

    def _nak_delay(self, delivered: int) -> float | None:
        """Seconds before a failed message comes back: the backoff step of its delivery."""
        if not self._backoff:
            return None
        return self._backoff[min(max(delivered, 1), len(self._backoff)) - 1]

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        seq = msg.metadata.sequence.stream
        log.error(
            "dead-lettering message",
            extra={"subject": msg.subject, "stream_seq": seq, "reason": reason},
        )
        headers = dict(msg.headers or {})
        headers.pop(Header.MSG_ID.value, None)
        published = subjects.as_published(msg.subject)
        headers[Header.DLQ_SUBJECT.value] = published
        headers[Header.DLQ_SEQ.value] = str(seq)
        headers[Header.DLQ_REASON.value] = reason[:500]
        headers[Header.MSG_ID.value] = f"dlq:{self._stream.value}:{seq}"
        try:
            await self._js.publish(subjects.dlq(published), msg.data, headers=headers)
            await msg.term()
            self.dead_lettered += 1
        except Exception as exc:
            log.error("could not dead-letter seq=%s: %r", seq, exc)


_V1_ACK_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>


def deliveries(msg: Msg) -> int:
    """How many times `msg` was delivered, read from its ack subject.

    `msg.metadata` parses every token into a dataclass with a datetime; this is the one
    number needed per message, so it is read directly for the common reply format (the
    matcher measured the difference at its rate).
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == _V1_ACK_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4])
    return msg.metadata.num_delivered


def _take_available(inbox: Subscription, first: Msg, current: str) -> tuple[list[Msg], bool]:
    """`first` plus every message already delivered; True once the pull request replied to on
    `current` has ended (a 404/408/409 status: no messages, expired, or refused). The status
    of an earlier request, given up on locally, arrives late and is passed over."""
    msgs: list[Msg] = []
    finished = False
    msg: Msg | None = first
    while msg is not None:
        status = JetStreamContext.is_status_msg(msg)
        if status is None:
            msgs.append(msg)
        elif status != "100" and msg.subject == current:  # 100 = idle heartbeat
            finished = True
            break
        msg = nats_compat.take_buffered(inbox)
    return msgs, finished


async def _ack(msg: Msg) -> None:
    with contextlib.suppress(Exception):
        await msg.ack()
