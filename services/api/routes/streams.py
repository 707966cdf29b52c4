"""`GET /runs/{id}/stream`: a run's stream chunks as Server-Sent Events.

Chunks live in JetStream on the run's own subject (stream CHUNK, short retention), so a
subscriber that attaches late, even after the run ended, still gets every chunk from the first:
each request reads the subject through its own ordered consumer (DeliverAll). Once the run is
terminal the request drains up to the subject's last sequence at that moment and sends `end`.
The dispatcher publishes an attempt's chunks before the report that ends it, so nothing put
before the end can arrive after it.

Events:
- `chunk` (id = stream sequence): {"task", "attempt", "seq", "type", "data"} where type is
  "text" (data a string), "json" (data the value) or "bytes" (data base64);
- `end`: {"status"} — the run's final status; the server closes the response after it.
A comment line is sent every KEEPALIVE_S while nothing happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException, ServiceUnavailableException
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from libs.common import subjects
from libs.common.log_messages import STREAM_CHUNK_DECODER, StreamChunk
from libs.common.statuses import RUN_TERMINAL
from libs.common.subjects import Stream
from libs.common.tokens import Scope
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors
from services.api.state import ApiState

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
# The subscription's buffer, the one per-request queue. The ordered consumer's flow control
# holds the server back while it is full; past it nats-py drops and the consumer resumes from
# the last sequence delivered, so a slow client costs memory up to here and no chunk.
PENDING_MSGS = 65_536
PENDING_BYTES = 16 * 1024 * 1024
MAX_OPEN_STREAMS = 1000  # per API process
MAX_APPEAR_WAIT_S = 30.0
_SUBJECT_UNSAFE = frozenset(".*> \t\r\n")
_JSON = msgspec.json.Encoder()


class _Gate:
    """Counts open streams so one process cannot be made to hold unbounded consumers."""

    open = 0


def chunk_payload(chunk: StreamChunk) -> dict[str, Any]:
    """A chunk as the JSON the SSE event carries."""
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


async def run_events(api: ApiState, tenant: str, run_id: str) -> AsyncIterator[ServerSentEventMessage]:
    """The SSE events of one run's stream; cleans its consumer up however it ends."""
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
                yield ServerSentEventMessage(event="end", data=_JSON.encode({"status": status}).decode())
                return
            if getter is None:
                getter = asyncio.create_task(sub.next_msg(timeout=None))
            waits: set[asyncio.Future[Any]] = {getter}
            if end_seq is None:
                waits.add(ended)
            done, _ = await asyncio.wait(waits, timeout=KEEPALIVE_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                msg, getter = getter.result(), None
                sent_seq = msg.metadata.sequence.stream
                yield _chunk_event(msg)
                continue
            if ended in done:
                status = ended.result()
                continue
            # Quiet for a while: keep the connection alive, and re-read the status in case
            # the run's end was announced while this API replica was not listening.
            yield ServerSentEventMessage(comment="keepalive")
            if end_seq is None:
                status = await api.runs.status(tenant, run_id)
    finally:
        _Gate.open -= 1
        api.forget(run_id, ended)
        if getter is not None:
            getter.cancel()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()  # an ordered consumer is ephemeral: the server drops it


async def _run_exists(api: ApiState, tenant: str, run_id: str, wait_s: float) -> bool:
    """A trigger is accepted before the scheduler stores the run: a client streaming right
    after triggering asks to wait for it (bounded, backing off)."""
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


def _chunk_event(msg: Msg) -> ServerSentEventMessage:
    seq = msg.metadata.sequence.stream
    try:
        payload = chunk_payload(STREAM_CHUNK_DECODER.decode(msg.data))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        log.warning("undecodable stream chunk at seq %s: %r", seq, exc)
        return ServerSentEventMessage(comment=f"skipped undecodable chunk {seq}")
    return ServerSentEventMessage(event="chunk", id=str(seq), data=_JSON.encode(payload).decode())


class StreamController(Controller):
    guards = [requires(Scope.READ)]
    path = "/"
    tags = ["streams"]

    @get("/runs/{run_id:str}/stream", operation_id="streamRun", responses=errors(404, 503))
    async def stream(
        self, run_id: str, tenant: Tenant, api: Api,
        wait_s: float = Parameter(
            default=0.0, ge=0.0, le=MAX_APPEAR_WAIT_S,
            description="wait this long for a just-triggered run to exist before a 404",
        ),
    ) -> ServerSentEvent:
        """Every chunk the run's tasks put (`ctx.put_stream`), from the first and in order,
        then an `end` event once the run ended. See the module docs for the event format."""
        if _SUBJECT_UNSAFE & set(run_id) or not await _run_exists(api, tenant, run_id, wait_s):
            raise NotFoundException(f"run {run_id!r} not found")
        if _Gate.open >= MAX_OPEN_STREAMS:
            raise ServiceUnavailableException("too many open streams on this API replica")
        return ServerSentEvent(run_events(api, tenant, run_id))
