"""Bodies of `/webhooks`, `/hooks/{tenant}/{name}` and `/signing-secret`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from libs.common.specs import Name

HookSource = Literal["github", "stripe", "slack", "hmac", "basic", "api_key"]
# CEL over `input` and `headers` (the API compiles it: 400 with the position when it does not).
HookCel = Annotated[str, Meta(min_length=1, pattern=r"\S",
                              extra_json_schema={"extra": {"format": "cel-hook"}})]
HeaderName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")]


class WebhookIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A public endpoint, `POST /hooks/<tenant>/<name>`, that turns verified requests into
    events. `event_key` and `scope` are CEL over `input` (the JSON body) and `headers` (names
    lower-cased); `event_key` must give a string, `scope` a string or null."""

    name: Name
    source: HookSource
    secret: Annotated[str, Meta(min_length=1, max_length=1024)]
    event_key: HookCel
    scope: HookCel | None = None
    # hmac: the signature header (X-Signature) and its prefix ("sha256="); api_key: the key
    # header (X-API-Key).
    header: HeaderName | None = None
    prefix: Annotated[str, Meta(max_length=64)] | None = None
    # basic: the user name (the secret is the password).
    username: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    # stripe, slack: how far a signed timestamp may be from now.
    tolerance_s: Annotated[float, Meta(gt=0, le=86_400)] | None = None
    # hmac, basic, api_key: a header carrying the sender's delivery id (the event id).
    id_header: HeaderName | None = None


class WebhookView(msgspec.Struct, kw_only=True):
    """A hook as listed (never its secret)."""

    name: str
    source: str
    event_key: str
    scope: str | None
    config: dict[str, Any]
    url_path: str  # POST here, on the API's address
    created_at: str


class HookDeliveryView(msgspec.Struct, kw_only=True):
    """One request a hook received: the status answered, what came of it, the event id."""

    received_at: str
    status: int
    outcome: str  # accepted | duplicate | challenge | unauthorized | forbidden | bad_request | ...
    event_id: str | None
    event_key: str | None
    detail: str


class HookAccepted(msgspec.Struct, kw_only=True):
    event_id: str
    key: str


class SlackChallenge(msgspec.Struct, kw_only=True):
    """Slack's `url_verification` answered (after its signature is checked)."""

    challenge: str


class SigningSecretView(msgspec.Struct, kw_only=True):
    """The key outgoing deliveries (run callbacks, alert webhooks) are signed with."""

    secret: str
    header: str
    created_at: str


class OutboundDeliveryView(msgspec.Struct, kw_only=True):
    """One outgoing delivery (a run callback or an alert message) and its retry state."""

    id: str
    kind: str  # callback | alert
    channel: str  # webhook | slack | email
    target: str
    run_id: str | None
    rule_id: str | None
    status: str  # pending | delivered | failed
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str
    finished_at: str | None
