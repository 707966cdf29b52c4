"""Bodies of the task-log routes and of `/audit`."""

from __future__ import annotations

from typing import Any

import msgspec


class LogLineView(msgspec.Struct):
    task: str
    attempt: int
    ts: str
    level: str
    message: str
    run_id: str
    workflow: str


class AuditView(msgspec.Struct, kw_only=True):
    id: int
    ts: str
    token_id: str | None
    token_name: str | None
    action: str
    target: str | None
    detail: Any
