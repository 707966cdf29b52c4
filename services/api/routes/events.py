"""Event ingestion: the REST path is one more publisher on `evt.<tenant>.<key>`.

Events go to the EVT stream exactly as a NATS client would publish them (JSON body,
Ratchet-* headers) so the matcher cannot tell the two paths apart. The msg-id carries the
event id, so a retried push inside the stream's duplicate window is stored once; beyond it,
the matcher's run ids (derived from the event id) still keep it to one run per workflow.
"""

from __future__ import annotations

from litestar import Controller, post
from litestar.status_codes import HTTP_202_ACCEPTED

from libs.common.tokens import Scope
from services.api.actions import events
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.events import (
    BulkEventsAccepted,
    BulkEventsIn,
    EventAccepted,
    EventIn,
)


class EventController(Controller):
    path = "/events"
    tags = ["events"]
    guards = [requires(Scope.WRITE)]

    @post("/", status_code=HTTP_202_ACCEPTED, operation_id="pushEvent", responses=errors(429))
    async def push(self, data: EventIn, tenant: Tenant, api: Api) -> EventAccepted:
        """Publish one event. Runs start asynchronously for workflows listening to its key."""
        return EventAccepted(event_id=await events.push_event(api, tenant, data), key=data.key)

    @post("/bulk", status_code=HTTP_202_ACCEPTED, operation_id="pushEvents",
          responses=errors(429))
    async def push_many(self, data: BulkEventsIn, tenant: Tenant, api: Api) -> BulkEventsAccepted:
        """Publish up to 1,000 events in one request (pipelined). All or none are validated."""
        return BulkEventsAccepted(event_ids=await events.push_events(api, tenant, data.events))
