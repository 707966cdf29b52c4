"""Wire schema of event-match outcomes (msgpack), published by the matcher on TASK.

One `EventMatches` record per event that reached at least one workflow; the records of one
matcher batch travel together as one `MatchBatch` per tenant on `subjects.task_match(tenant)`
(`task.<tenant>.match`) — one message per event cost more than the trigger it recorded. A
redelivered event can be recorded twice: readers key records by (tenant, event id), as the
replicator's rows do. The replicator projects them into ClickHouse.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Outcome = Literal["matched", "no_match", "error"]


class MatchOutcome(msgspec.Struct, kw_only=True):
    """One evaluation: a workflow against an event, through one filter (or none)."""

    workflow: str
    outcome: Outcome
    filter_id: str = ""  # empty: the workflow has no filters and runs for every event
    run_id: str = ""  # the triggered run when outcome == "matched"
    error: str = ""  # why the expression failed, when outcome == "error"
    eval_us: int = 0


class EventMatches(msgspec.Struct, kw_only=True):
    tenant: str
    event_id: str
    event_key: str
    scope: str | None = None
    ts_ms: int
    outcomes: list[MatchOutcome] = []


class MatchBatch(msgspec.Struct, kw_only=True):
    records: list[EventMatches] = []


EVENT_MATCHES_DECODER = msgspec.msgpack.Decoder(EventMatches)
MATCH_BATCH_DECODER = msgspec.msgpack.Decoder(MatchBatch)

