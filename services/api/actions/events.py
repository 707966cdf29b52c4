"""Event ingestion: the REST path is one more publisher on `evt.<tenant>.<key>`.

Events go to the EVT stream exactly as a NATS client would publish them (JSON body,
Ratchet-* headers) so the matcher cannot tell the two paths apart. The msg-id carries the
event id, so a retried push inside the stream's duplicate window is stored once; beyond it,
the matcher's run ids (derived from the event id) still keep it to one run per workflow.
"""

from __future__ import annotations

import uuid

import msgspec

from libs.common import events as evt
from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.payloads import event_scope
from libs.common.subjects import Header
from services.api.actions.admission import admit_events
from services.api.actions.offload import offload
from services.api.repos.errors import Invalid
from services.api.schemas.events import MAX_BULK, EventIn
from services.api.state import ApiState

_JSON = msgspec.json.Encoder()


def event_message(tenant: str, event: EventIn) -> Outgoing:
    """The EVT message for one pushed event; `Invalid` on a bad key, id or scope."""
    problem = evt.key_problem(event.key)
    event_id = event.event_id if event.event_id is not None else uuid.uuid4().hex
    problem = problem or evt.header_problem("event_id", event_id, evt.MAX_EVENT_ID_CHARS)
    if event.scope is not None:
        problem = problem or evt.header_problem("scope", event.scope, evt.MAX_SCOPE_CHARS)
    if problem:
        raise Invalid(problem)
    headers = {Header.EVENT_ID.value: event_id}
    if event.scope is not None:
        headers[Header.SCOPE.value] = event.scope
    if event.metadata:
        headers[Header.METADATA.value] = _JSON.encode(event.metadata).decode()
    if event.idempotency_key is not None:
        headers[Header.IDEMPOTENCY_KEY.value] = event.idempotency_key
    payload = _JSON.encode(event.payload if event.payload is not None else {})
    # Tenant in the msg-id: the duplicate window is per stream, and event ids are per tenant.
    return Outgoing(subjects.evt(tenant, event.key), payload, f"evt:{tenant}:{event_id}", headers)


async def _offload_payload(api: ApiState, tenant: str, out: Outgoing) -> Outgoing:
    """An event payload above the inline limit is stored (scope `evt-<event id>`) and the EVT
    message carries its reference; the matcher reads it back before evaluating filters.
    413 past RATCHET_MAX_PAYLOAD_BYTES."""
    event_id = out.headers[Header.EVENT_ID.value]
    out.payload = await offload(api.store, api.settings, tenant, event_scope(event_id), out.payload)
    return out


async def push_event(api: ApiState, tenant: str, event: EventIn) -> str:
    """Publish one event; answers its event id."""
    out = event_message(tenant, event)
    await admit_events(api, tenant, 1)
    out = await _offload_payload(api, tenant, out)
    await jetstream.publish_one(api.js, out)
    return out.headers[Header.EVENT_ID.value]


async def push_events(api: ApiState, tenant: str, events: list[EventIn]) -> list[str]:
    """Publish up to MAX_BULK events (pipelined), all validated and admitted or none; answers
    their event ids."""
    if not 1 <= len(events) <= MAX_BULK:
        raise Invalid(f"events must hold 1 to {MAX_BULK} items")
    outs = [event_message(tenant, e) for e in events]
    await admit_events(api, tenant, len(outs))
    outs = [await _offload_payload(api, tenant, o) for o in outs]
    await jetstream.publish_batch(api.js, outs)
    return [o.headers[Header.EVENT_ID.value] for o in outs]


async def push_event_once(api: ApiState, tenant: str, event: EventIn) -> tuple[str, bool]:
    """`push_event` for a sender that redelivers (a webhook provider): also answers whether
    the stream already held this event id (a repeat inside its duplicate window)."""
    out = event_message(tenant, event)
    await admit_events(api, tenant, 1)
    out = await _offload_payload(api, tenant, out)
    headers = {Header.MSG_ID.value: out.msg_id, **out.headers}
    ack = await api.js.publish(out.subject, out.payload, headers=headers, timeout=5.0)
    return out.headers[Header.EVENT_ID.value], bool(ack.duplicate)
