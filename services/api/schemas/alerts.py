"""Bodies of `/alerts`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from libs.common.specs import Cel, Name

AlertEvent = Literal["run.failed", "worker.pool_empty", "token.expiring", "limit.reached"]
Url = Annotated[str, Meta(min_length=8, max_length=2048, pattern=r"^https?://\S+$")]
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=r"^[^@\s,]+@[^@\s,]+$")]


class AlertIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A rule: which events alert, and where to. At least one destination. `filter` (CEL over
    `run`: id, workflow, status, input, metadata, errors) narrows `run.failed`."""

    on: Annotated[list[AlertEvent], Meta(min_length=1, max_length=4)]
    workflow: Name | None = None
    filter: Cel | None = None
    slack_webhook_url: Url | None = None
    email: Annotated[list[Email], Meta(max_length=20)] = []
    webhook_url: Url | None = None
    # One message per rule and window, with a count (the server's default when omitted).
    window_s: Annotated[float, Meta(gt=0, le=86_400)] | None = None


class AlertView(msgspec.Struct, kw_only=True):
    id: str
    on: list[str]
    workflow: str | None
    filter: str | None
    slack_webhook_url: str | None
    email: list[str]
    webhook_url: str | None
    window_s: float
    created_at: str


class AlertTestSent(msgspec.Struct, kw_only=True):
    """The test message was queued on each of these channels (see the rule's deliveries)."""

    delivery_ids: list[str]
