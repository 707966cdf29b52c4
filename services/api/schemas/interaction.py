"""Request and response bodies of signals, run state, waitpoints and forks."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta


class SignalAccepted(msgspec.Struct, kw_only=True):
    run_id: str
    signal_id: str
    name: str


class SignalView(msgspec.Struct, kw_only=True):
    id: str
    seq: int  # the order the run received its signals (and waitpoint completions) in
    kind: str  # signal | waitpoint
    name: str
    status: str  # pending (in the inbox) | delivered | refused (the inbox was full)
    sent_at: str
    task_id: str | None = None
    position: int | None = None
    delivered_at: str | None = None


class SignalsView(msgspec.Struct, kw_only=True):
    waiting: int  # in the inbox, not taken by a wait yet
    signals: list[SignalView]  # the latest 200, newest first


class RunStateView(msgspec.Struct, kw_only=True):
    """The latest value a durable task of the run passed to `ctx.set_state` (null: none)."""

    run_id: str
    state: Any = None
    updated_at: str | None = None


WAITPOINT_MAX_TIMEOUT_S = 366 * 24 * 3600.0  # a waitpoint lasts a year at most


class WaitpointCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a durable task asks for: the task and log position it waits at."""

    task_id: Annotated[str, Meta(min_length=1, max_length=200)]
    position: Annotated[int, Meta(ge=0)]
    timeout_s: Annotated[float, Meta(gt=0, le=WAITPOINT_MAX_TIMEOUT_S)] | None = None
    label: Annotated[str, Meta(max_length=200)] = ""


class WaitpointView(msgspec.Struct, kw_only=True):
    id: str
    run_id: str
    task_id: str
    position: int
    label: str
    status: str  # pending | completed | expired
    created_at: str
    expires_at: str
    completed_at: str | None = None
    payload: Any = None
    url: str | None = None  # only to the task that made it (and the dashboard)


class ForkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fork a run: `from_task` and everything after it run again; every other task's recorded
    output is reused. `input` replaces the run input when given; `version_id` pins a version
    (the workflow's current one otherwise). `from_step` (a durable `from_task` only) keeps
    the task's durable log before that position."""

    from_task: Annotated[str, Meta(min_length=1, max_length=200)]
    input: Any = None
    version_id: str | None = None
    from_step: Annotated[int, Meta(ge=0)] | None = None


class ForkAccepted(msgspec.Struct, kw_only=True):
    run_id: str
    forked_from: str
    version_id: str
    reused: list[str]  # tasks whose outputs the new run takes from the old one
