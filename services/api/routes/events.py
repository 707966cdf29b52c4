"""Event ingestion: the REST path is one more publisher on `evt.<tenant>.<key>`.

Events go to the EVT stream exactly as a NATS client would publish them (JSON body,
Ratchet-* headers) so the matcher cannot tell the two paths apart. The msg-id carries the
event id, so a retried push inside the stream's duplicate window is stored once; beyond it,
the matcher's run ids (derived from the event id) still keep it to one run per workflow.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, post
from litestar.exceptions import ClientException
from litestar.status_codes import HTTP_202_ACCEPTED
from msgspec import Meta

from libs.common import events as evt
from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.payloads import event_scope
from libs.common.subjects import Header
from libs.common.tokens import Scope
from services.api.auth import Api, Tenant, requires
from services.api.routes.limits import admit_events
from services.api.routes.payloads import offload
from services.api.schemas import EventId, EventKey, EventScope, errors
from services.api.state import ApiState

MAX_BULK = 1000
_JSON = msgspec.json.Encoder()


class EventIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    key: EventKey
    payload: Any = None
    scope: EventScope | None = None
    metadata: dict[str, Any] = {}
    event_id: EventId | None = None  # default: a new one; a retried push with the same id is one event


class BulkEventsIn(msgspec.Struct, kw_only=True):
    events: Annotated[list[EventIn], Meta(min_length=1, max_length=MAX_BULK)]


class EventAccepted(msgspec.Struct, kw_only=True):
    event_id: str
    key: str


class BulkEventsAccepted(msgspec.Struct, kw_only=True):
    event_ids: list[str]


def event_message(tenant: str, event: EventIn) -> Outgoing:
    """The EVT message for one pushed event; raises ClientException on bad input."""
    problem = evt.key_problem(event.key)
    event_id = event.event_id if event.event_id is not None else uuid.uuid4().hex
    problem = problem or evt.header_problem("event_id", event_id, evt.MAX_EVENT_ID_CHARS)
    if event.scope is not None:
        problem = problem or evt.header_problem("scope", event.scope, evt.MAX_SCOPE_CHARS)
    if problem:
        raise ClientException(problem)
    headers = {Header.EVENT_ID.value: event_id}
    if event.scope is not None:
        headers[Header.SCOPE.value] = event.scope
    if event.metadata:
        headers[Header.METADATA.value] = _JSON.encode(event.metadata).decode()
    payload = _JSON.encode(event.payload if event.payload is not None else {})
    # Tenant in the msg-id: the duplicate window is per stream, and event ids are per tenant.
    return Outgoing(subjects.evt(tenant, event.key), payload, f"evt:{tenant}:{event_id}", headers)


async def offload_payload(api: ApiState, tenant: str, out: Outgoing) -> Outgoing:
    """An event payload above the inline limit is stored (scope `evt-<event id>`) and the EVT
    message carries its reference; the matcher reads it back before evaluating filters.
    413 past RATCHET_MAX_PAYLOAD_BYTES."""
    event_id = out.headers[Header.EVENT_ID.value]
    out.payload = await offload(api, tenant, event_scope(event_id), out.payload)
    return out


class EventController(Controller):
    path = "/events"
    tags = ["events"]
    guards = [requires(Scope.WRITE)]

    @post("/", status_code=HTTP_202_ACCEPTED, operation_id="pushEvent", responses=errors(429))
    async def push(self, data: EventIn, tenant: Tenant, api: Api) -> EventAccepted:
        """Publish one event. Runs start asynchronously for workflows listening to its key."""
        out = event_message(tenant, data)
        await admit_events(api, tenant, 1)
        out = await offload_payload(api, tenant, out)
        await jetstream.publish_one(api.js, out)
        return EventAccepted(event_id=out.headers[Header.EVENT_ID.value], key=data.key)

    @post("/bulk", status_code=HTTP_202_ACCEPTED, operation_id="pushEvents",
          responses=errors(429))
    async def push_many(self, data: BulkEventsIn, tenant: Tenant, api: Api) -> BulkEventsAccepted:
        """Publish up to 1,000 events in one request (pipelined). All or none are validated."""
        if not 1 <= len(data.events) <= MAX_BULK:
            raise ClientException(f"events must hold 1 to {MAX_BULK} items")
        outs = [event_message(tenant, e) for e in data.events]
        await admit_events(api, tenant, len(outs))
        outs = [await offload_payload(api, tenant, o) for o in outs]
        await jetstream.publish_batch(api.js, outs)
        return BulkEventsAccepted(event_ids=[o.headers[Header.EVENT_ID.value] for o in outs])
