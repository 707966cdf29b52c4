"""Bodies of `/events`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from services.api.schemas import EventId, EventKey, EventScope

MAX_BULK = 1000


class EventIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    key: EventKey
    payload: Any = None
    scope: EventScope | None = None
    metadata: dict[str, Any] = {}
    event_id: EventId | None = None  # default: a new one; a retried push with the same id is one event
    # Sent as the Ratchet-Idempotency-Key header: the runs it triggers claim it (flow-control.md)
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None


class BulkEventsIn(msgspec.Struct, kw_only=True):
    events: Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_BULK)]


class EventAccepted(msgspec.Struct, kw_only=True):
    event_id: str
    key: str


class BulkEventsAccepted(msgspec.Struct, kw_only=True):
    event_ids: list[str]
