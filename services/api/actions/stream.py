"""A run's stream chunks, read from JetStream for GET /runs/{id}/stream and the run page.

Chunks live in JetStream on the run's own subject (stream CHUNK, short retention), so a
reader that attaches late, even after the run ended, still gets every chunk from the first:
each read goes through its own ordered consumer (DeliverAll). Once the run is terminal the
read drains up to the subject's last sequence at that moment and ends with `End`. The
dispatcher publishes an attempt's chunks before the report that ends it, so nothing put before
the end can arrive after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from libs.common import subjects
from libs.common.log_messages import STREAM_CHUNK_DECODER, StreamChunk
from libs.common.statuses import RUN_TERMINAL
from libs.common.subjects import Stream
from services.api.state import ApiState

log = logging.getLogger(__name__)

QUIET_S = 15.0  # a `Quiet` tick after this long without a chunk (a keep-alive for SSE)
# The subscription's buffer, the one per-reader queue. The ordered consumer's flow control
# holds the server back while it is full; past it nats-py drops and the consumer resumes from
# the last sequence delivered, so a slow client costs memory up to here and no chunk.
PENDING_MSGS = 65_536
PENDING_BYTES = 16 * 1024 * 1024
MAX_OPEN_STREAMS = 1000  # per API process
_SUBJECT_UNSAFE = frozenset(".*> \t\r\n")


@dataclass(frozen=True)
class Chunk:
    """One chunk, `payload` as `chunk_payload` shapes it (None: it could not be decoded)."""

    seq: int
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class End:
    """The run ended with `status` and every chunk before it was delivered."""

    status: str


@dataclass(frozen=True)
class Quiet:
    """Nothing happened for QUIET_S."""


class _Gate:
    """Counts open reads so one process cannot be made to hold unbounded consumers."""

    open = 0


def too_many_streams() -> bool:
    return _Gate.open >= MAX_OPEN_STREAMS


def chunk_payload(chunk: StreamChunk) -> dict[str, Any]:
    """A chunk as the JSON a client gets: {"task", "attempt", "seq", "type", "data"} where type
    is "text" (data a string), "json" (data the value) or "bytes" (data base64)."""
    data: Any
    if chunk.type == "bytes":
        data = base64.b64encode(chunk.data).decode()
    elif chunk.type == "text":
        data = chunk.data.decode("utf-8", "replace")
    else:
        data = msgspec.json.decode(chunk.data) if chunk.data else None
    return {"task": chunk.task_name, "attempt": chunk.attempt, "seq": chunk.seq,
            "type": chunk.type, "data": data}


async def _last_seq(js: JetStreamContext, subject: str) -> int:
    try:
        last = await js.get_last_msg(Stream.CHUNK.value, subject)
    except NotFoundError:
        return 0  # nothing was streamed (or it all aged out)
    return int(last.seq or 0)


async def run_chunks(api: ApiState, tenant: str, run_id: str) -> AsyncIterator[Chunk | End | Quiet]:
    """The run's chunks from the first, then `End`; cleans its consumer up however it ends."""
    subject = subjects.run_chunks(tenant, run_id)
    # Subscribe to run changes before reading the status, so the end cannot slip between.
    ended = api.waiter(run_id)
    sub = await api.js.subscribe(
        subject, stream=Stream.CHUNK.value, ordered_consumer=True,
        deliver_policy=jsapi.DeliverPolicy.ALL, pending_msgs_limit=PENDING_MSGS,
        pending_bytes_limit=PENDING_BYTES,
    )
    _Gate.open += 1
    getter: asyncio.Task[Msg] | None = None
    try:
        status = await api.runs.status(tenant, run_id)
        end_seq: int | None = None
        sent_seq = 0
        while True:
            if end_seq is None and status in RUN_TERMINAL:
                end_seq = await _last_seq(api.js, subject)
            if end_seq is not None and sent_seq >= end_seq:
                assert status is not None
                yield End(status)
                return
            if getter is None:
                getter = asyncio.create_task(sub.next_msg(timeout=None))
            waits: set[asyncio.Future[Any]] = {getter}
            if end_seq is None:
                waits.add(ended)
            done, _ = await asyncio.wait(waits, timeout=QUIET_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                msg, getter = getter.result(), None
                sent_seq = msg.metadata.sequence.stream
                yield _chunk(msg)
                continue
            if ended in done:
                status = ended.result()
                continue
            # Quiet for a while: let the reader keep its connection alive, and re-read the
            # status in case the run's end was announced while this replica was not listening.
            yield Quiet()
            if end_seq is None:
                status = await api.runs.status(tenant, run_id)
    finally:
        _Gate.open -= 1
        api.forget(run_id, ended)
        if getter is not None:
            getter.cancel()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()  # an ordered consumer is ephemeral: the server drops it


def _chunk(msg: Msg) -> Chunk:
    seq = msg.metadata.sequence.stream
    try:
        return Chunk(seq, chunk_payload(STREAM_CHUNK_DECODER.decode(msg.data)))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        log.warning("undecodable stream chunk at seq %s: %r", seq, exc)
        return Chunk(seq, None)


async def run_exists(api: ApiState, tenant: str, run_id: str, wait_s: float) -> bool:
    """Whether the run exists, waiting up to `wait_s` for it (bounded, backing off): a trigger
    is accepted before the scheduler stores the run, and a client streaming right after
    triggering asks to wait for it. False for a run id no subject can hold."""
    if _SUBJECT_UNSAFE & set(run_id):
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.02
    while await api.runs.status(tenant, run_id) is None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)
    return True
