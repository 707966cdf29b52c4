"""Reading a run's stream: Server-Sent Events from `GET /runs/{id}/stream` → chunks.

The SSE framing (fields, multi-line data, comments used as keepalives) is parsed by httpx-sse;
this module only gives the events their meaning. Each `chunk` event carries {"task",
"attempt", "seq", "type", "data"}; the type says how the task's chunk comes back: "text" →
str, "json" → the decoded value, "bytes" → bytes (base64 on the wire). An `end` event closes
the stream once the run ended and every chunk was sent; a stream that closes before it raises
ConnectionError. There is no automatic reconnect: the server replays every chunk from the
first to each new subscriber, so a caller that reconnects simply reads the stream again.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from ratchet import _codec

_CLOSED_EARLY = "the run's stream closed before its end event"


def decode_chunk(payload: dict[str, Any]) -> Any:
    """The chunk as the task passed it to `put_stream`."""
    kind, data = payload.get("type"), payload.get("data")
    if kind == "bytes":
        return base64.b64decode(str(data))
    if kind == "json":
        return data
    return str(data)


def _chunk(event: ServerSentEvent) -> Any:
    return decode_chunk(_codec.loads(event.data.encode()))


def iterate(response: httpx.Response) -> Iterator[Any]:
    """The chunks of an open `text/event-stream` response, until its `end` event."""
    for event in EventSource(response).iter_sse():
        if event.event == "end":
            return
        if event.event == "chunk":
            yield _chunk(event)
    raise ConnectionError(_CLOSED_EARLY)


async def aiterate(response: httpx.Response) -> AsyncIterator[Any]:
    """`iterate` for an `httpx.AsyncClient` response."""
    # aclosing: leaving at the `end` event closes httpx-sse's generator now, not at GC.
    async with contextlib.aclosing(EventSource(response).aiter_sse()) as events:
        async for event in events:
            if event.event == "end":
                return
            if event.event == "chunk":
                yield _chunk(event)
    raise ConnectionError(_CLOSED_EARLY)
