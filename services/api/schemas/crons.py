"""Bodies of `/crons` and `/scheduled`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from libs.common.specs import Cron
from services.api.schemas import WorkflowName


class CronIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: WorkflowName
    expression: Cron
    input: Any = None
    metadata: dict[str, str] = {}
    name: str | None = None


class CronView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    name: str
    expression: str
    input: Any
    metadata: dict[str, str]
    origin: str  # api | workflow
    next_due_at: str
    last_tick: str | None
    created_at: str


class ScheduledIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: WorkflowName
    run_at: datetime
    input: Any = None
    metadata: dict[str, str] = {}


class ScheduledView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    run_at: str
    input: Any
    metadata: dict[str, str]
    run_id: str  # the run it starts, known in advance
    fired_at: str | None
    created_at: str
