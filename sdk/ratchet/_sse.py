"""Reading a run's stream: Server-Sent Events from `GET /runs/{id}/stream` → chunks.

Each `chunk` event carries {"task", "attempt", "seq", "type", "data"}; the type says how the
task's chunk comes back: "text" → str, "json" → the decoded value, "bytes" → bytes (base64 on
the wire). An `end` event closes the stream once the run ended and every chunk was sent.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from ratchet import _codec


@dataclass(slots=True)
class Event:
    kind: str = "message"
    data: list[str] = field(default_factory=list)


def decode_chunk(payload: dict[str, Any]) -> Any:
    """The chunk as the task passed it to `put_stream`."""
    kind, data = payload.get("type"), payload.get("data")
    if kind == "bytes":
        return base64.b64decode(str(data))
    if kind == "json":
        return data
    return str(data)


class _Parser:
    """Incremental SSE parsing (the subset the API sends: event, data, id, comments)."""

    def __init__(self) -> None:
        self._event = Event()

    def feed(self, line: str) -> Event | None:
        if line == "":
            event, self._event = self._event, Event()
            return event if event.data else None
        if line.startswith(":"):
            return None  # a keepalive comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event.kind = value
        elif name == "data":
            self._event.data.append(value)
        return None


def _handle(event: Event) -> tuple[bool, Any]:
    """(ended, chunk-or-None) for one complete event."""
    if event.kind == "end":
        return True, None
    if event.kind == "chunk":
        return False, decode_chunk(_codec.loads("\n".join(event.data).encode()))
    return False, None


def iterate(lines: Iterator[str]) -> Iterator[Any]:
    parser = _Parser()
    for line in lines:
        event = parser.feed(line)
        if event is None:
            continue
        ended, chunk = _handle(event)
        if ended:
            return
        if event.kind == "chunk":
            yield chunk
    raise ConnectionError("the run's stream closed before its end event")


async def aiterate(lines: AsyncIterator[str]) -> AsyncIterator[Any]:
    parser = _Parser()
    async for line in lines:
        event = parser.feed(line)
        if event is None:
            continue
        ended, chunk = _handle(event)
        if ended:
            return
        if event.kind == "chunk":
            yield chunk
    raise ConnectionError("the run's stream closed before its end event")
