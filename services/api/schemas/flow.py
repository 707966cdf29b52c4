"""Bodies of flow control's routes: pausing and resuming a workflow, and the triggers a
debounced, batched or paused run holds (docs/flow-control.md)."""

from __future__ import annotations

from typing import Literal

import msgspec


class PauseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["queue", "drop"] = "queue"


class PauseView(msgspec.Struct, kw_only=True):
    """A workflow's pause: `queue` holds new runs until resumed, `drop` refuses API triggers
    (409) and skips event and cron triggers (counted in `dropped`). `held` counts the runs
    waiting for the resume."""

    workflow: str
    paused: bool
    mode: str | None  # queue | drop
    paused_at: str | None
    paused_by: str | None
    dropped: int = 0
    held: int = 0


class HeldTriggerView(msgspec.Struct, kw_only=True):
    trigger_id: str  # the run id the trigger would have had on its own
    seq: int  # arrival order in its window, from 1
    source: str  # api | event | cron | child ...
    at: str


class RunFlowView(msgspec.Struct, kw_only=True):
    """The debounce window, batch or paused trigger that is (or became) this run."""

    run_id: str
    workflow: str
    kind: str  # debounce | batch | paused
    key: str
    state: str  # open | sealed (no more triggers) | started | dropped (paused in drop mode)
    count: int
    opened_at: str
    deadline: str
    triggers: list[HeldTriggerView]
