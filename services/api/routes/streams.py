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
A comment line is sent every `actions.stream.QUIET_S` while nothing happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException, ServiceUnavailableException
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from libs.common.tokens import Scope
from services.api.actions.stream import Chunk, End, run_chunks, run_exists, too_many_streams
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors
from services.api.state import ApiState

MAX_APPEAR_WAIT_S = 30.0
_JSON = msgspec.json.Encoder()


async def _events(api: ApiState, tenant: str, run_id: str) -> AsyncIterator[ServerSentEventMessage]:
    async for item in run_chunks(api, tenant, run_id):
        if isinstance(item, Chunk):
            if item.payload is None:
                yield ServerSentEventMessage(comment=f"skipped undecodable chunk {item.seq}")
            else:
                yield ServerSentEventMessage(event="chunk", id=str(item.seq),
                                             data=_JSON.encode(item.payload).decode())
        elif isinstance(item, End):
            yield ServerSentEventMessage(event="end",
                                         data=_JSON.encode({"status": item.status}).decode())
        else:
            yield ServerSentEventMessage(comment="keepalive")


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
        if not await run_exists(api, tenant, run_id, wait_s):
            raise NotFoundException(f"run {run_id!r} not found")
        if too_many_streams():
            raise ServiceUnavailableException("too many open streams on this API replica")
        return ServerSentEvent(_events(api, tenant, run_id))
