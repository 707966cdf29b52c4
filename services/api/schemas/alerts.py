"""Bodies of `/alerts`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from libs.common.specs import Name

AlertEvent = Literal["run.failed", "worker.pool_empty", "token.expiring", "limit.reached"]
# CEL over `run` (the API compiles it: 400 with the position when it does not).
RunCel = Annotated[str, Meta(min_length=1, pattern=r"\S",
                             extra_json_schema={"extra": {"format": "cel-run"}})]
Url = Annotated[str, Meta(min_length=8, max_length=2048, pattern=r"^https?://[!-~]+$")]
EMAIL_PATTERN = r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+$"
Email = Annotated[str, Meta(max_length=254, pattern=EMAIL_PATTERN)]


class AlertIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A rule: which events alert, and where to. At least one destination. `filter` (CEL over
    `run`: id, workflow, status, input, metadata, errors) narrows `run.failed`."""

    on: Annotated[list[AlertEvent], Meta(min_length=1, max_length=4)]
    workflow: Name | None = None
    filter: RunCel | None = None
    slack_webhook_url: Url | None = None
    # The item constraints restated for the OpenAPI document (Litestar drops nested ones).
    email: Annotated[list[Email], Meta(max_length=20, extra_json_schema={"extra": {
        "items": {"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN}}})] = []
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
