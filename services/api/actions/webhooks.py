"""Webhooks: incoming hooks (create, list, delete, receive a request) and the outgoing side's
signing secret, callback URLs and delivery log.

A request to `POST /hooks/<tenant>/<name>` is verified by the hook's own auth (hook_auth.py),
decoded as JSON, given an event key and scope by the hook's CEL expressions over `input` and
`headers`, and pushed as an ordinary event whose id is the provider's delivery id: a
redelivery is the same event. Every request, whatever it got, is written to the hook's
delivery log (the last 100 are kept).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from libs.common import events as evt
from libs.common import metrics, subjects
from libs.common.cel import CelError, EvaluationError, Program, compile_filter, to_cel
from libs.common.limits import LimitExceeded
from libs.common.payloads import PayloadTooLarge
from libs.common.tokens import Principal
from services.api.actions import hook_auth
from services.api.actions.audit import audit_entry
from services.api.actions.events import push_event_once
from services.api.repos.errors import Invalid, NotFound
from services.api.schemas.events import EventIn
from services.api.schemas.webhooks import (
    HookDeliveryView,
    OutboundDeliveryView,
    SigningSecretView,
    WebhookIn,
    WebhookView,
)
from services.api.state import ApiState

log = logging.getLogger(__name__)

HOOK_VARIABLES = frozenset({"input", "headers"})
SIGNATURE_HEADER = "Ratchet-Signature"
# Requests to hooks that do not exist are logged under this name (hook names cannot start
# with '_'), with the name asked for in the detail.
UNKNOWN_HOOK_LOG = "_unknown"
_JSON = msgspec.json.Encoder()


class HookAnswer(NamedTuple):
    """What the public endpoint answers: a status and a JSON body."""

    status: int
    body: dict[str, Any]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _compile(field: str, expression: str) -> None:
    try:
        compile_filter(expression, HOOK_VARIABLES)
    except CelError as exc:
        raise Invalid(f"invalid {field}: {exc}",
                      extra={"field": field, "line": exc.line, "column": exc.column}) from exc


def hook_view(row: Any) -> WebhookView:
    return WebhookView(
        name=row["name"], source=row["source"], event_key=row["event_key"], scope=row["scope"],
        config=msgspec.json.decode(row["config"]), url_path="",
        created_at=row["created_at"].isoformat(),
    )


def _with_path(tenant: str, view: WebhookView) -> WebhookView:
    view.url_path = f"/hooks/{tenant}/{view.name}"
    return view


def _config(data: WebhookIn) -> dict[str, Any]:
    """The per-source options a hook keeps, refusing ones its source does not use."""
    given = {k: v for k, v in (
        ("header", data.header), ("prefix", data.prefix), ("username", data.username),
        ("tolerance_s", data.tolerance_s), ("id_header", data.id_header),
    ) if v is not None}
    allowed = {
        "github": set(), "stripe": {"tolerance_s"}, "slack": {"tolerance_s"},
        "hmac": {"header", "prefix", "id_header"}, "basic": {"username", "id_header"},
        "api_key": {"header", "id_header"},
    }[data.source]
    extra = sorted(set(given) - allowed)
    if extra:
        raise Invalid(f"source {data.source!r} takes no {', '.join(extra)}",
                      extra={"fields": extra})
    if data.source == "basic" and "username" not in given:
        raise Invalid("source 'basic' needs a username (the secret is the password)")
    return given


async def create_hook(api: ApiState, caller: Principal, data: WebhookIn) -> WebhookView:
    if data.name.startswith("_"):
        raise Invalid("webhook names starting with '_' are reserved")
    _compile("event_key", data.event_key)
    if data.scope is not None:
        _compile("scope", data.scope)
    config = _config(data)
    entry = audit_entry(caller, "webhook.create", data.name, {"source": data.source})
    row = await api.webhooks.create(
        caller.tenant, data.name, data.source, data.secret, data.event_key, data.scope,
        _JSON.encode(config).decode(), entry,
    )
    return _with_path(caller.tenant, hook_view(row))


async def list_hooks(api: ApiState, tenant: str) -> list[WebhookView]:
    return [_with_path(tenant, hook_view(r)) for r in await api.webhooks.list_hooks(tenant)]


async def get_hook(api: ApiState, tenant: str, name: str) -> WebhookView:
    row = await api.webhooks.get(tenant, name)
    if row is None:
        raise NotFound(f"webhook {name!r} not found")
    return _with_path(tenant, hook_view(row))


async def delete_hook(api: ApiState, caller: Principal, name: str) -> None:
    if not await api.webhooks.delete(caller.tenant, name,
                                     audit_entry(caller, "webhook.delete", name)):
        raise NotFound(f"webhook {name!r} not found")


async def hook_requests(api: ApiState, tenant: str, name: str, limit: int) -> list[HookDeliveryView]:
    """The hook's last requests, newest first (`_unknown`: requests to missing hooks)."""
    if name != UNKNOWN_HOOK_LOG and await api.webhooks.get(tenant, name) is None:
        raise NotFound(f"webhook {name!r} not found")
    return [
        HookDeliveryView(
            received_at=r["received_at"].isoformat(), status=r["status"], outcome=r["outcome"],
            event_id=r["event_id"], event_key=r["event_key"], detail=r["detail"],
        )
        for r in await api.webhooks.requests(tenant, name, limit)
    ]


def _error(status: int, detail: str) -> HookAnswer:
    return HookAnswer(status, {"status_code": status, "detail": detail})


_OUTCOMES = {401: "unauthorized", 403: "forbidden", 400: "bad_request", 404: "unknown_hook",
             413: "too_large", 429: "limited", 503: "unavailable"}


# Compiled hook expressions, per process; cleared when full (a bound, not a cache policy).
_PROGRAMS: dict[str, Program] = {}


def _evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    program = _PROGRAMS.get(expression)
    if program is None:
        if len(_PROGRAMS) >= 1024:
            _PROGRAMS.clear()
        program = _PROGRAMS[expression] = compile_filter(expression, HOOK_VARIABLES)
    return program.value(variables)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | int | float):
        return str(value)
    return None


async def receive(
    api: ApiState, tenant: str, name: str, headers: Mapping[str, str], body: bytes
) -> HookAnswer:
    """Answer one request to a hook (never raises for a bad request: it is answered and
    logged). `headers` have lower-case names."""
    if not subjects.valid_tenant(tenant):
        return _error(404, f"webhook {name!r} not found")
    row = await api.webhooks.get(tenant, name)
    if row is None:
        metrics.WEBHOOK_REQUESTS.labels("", "unknown_hook").inc()
        if await api.webhooks.tenant_exists(tenant):
            await api.webhooks.log_request(tenant, UNKNOWN_HOOK_LOG, 404, "unknown_hook", None,
                                           None, f"no webhook named {name[:128]!r}")
        return _error(404, f"webhook {name!r} not found")

    source = row["source"]

    async def answer(status: int, detail: str, event_id: str | None = None,
                     key: str | None = None, outcome: str | None = None) -> HookAnswer:
        outcome = outcome or _OUTCOMES.get(status, "error")
        metrics.WEBHOOK_REQUESTS.labels(source, outcome).inc()
        await api.webhooks.log_request(tenant, name, status, outcome, event_id, key, detail)
        return _error(status, detail)

    config = msgspec.json.decode(row["config"])
    try:
        hook_auth.verify(hook_auth.HookAuth(source, row["secret"], config, time.time()),
                         headers, body)
    except hook_auth.HookRefused as exc:
        return await answer(exc.status, str(exc))
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return await answer(400, "the body is not JSON")
    if (source == "slack" and isinstance(data, dict)
            and data.get("type") == "url_verification"):
        challenge = str(data.get("challenge", ""))
        metrics.WEBHOOK_REQUESTS.labels(source, "challenge").inc()
        await api.webhooks.log_request(tenant, name, 200, "challenge", None, None,
                                       "Slack url_verification answered")
        return HookAnswer(200, {"challenge": challenge})
    variables = {"input": to_cel(data), "headers": to_cel(dict(headers))}
    try:
        key = _as_text(_evaluate(row["event_key"], variables))
        scope = _as_text(_evaluate(row["scope"], variables)) if row["scope"] else None
    except EvaluationError as exc:
        return await answer(400, f"the hook's expression failed on this request: {exc}")
    if key is None:
        return await answer(400, "event_key did not give a string")
    problem = evt.key_problem(key)
    if problem:
        return await answer(400, f"event_key gave {key[:100]!r}: {problem}")
    event_id = hook_auth.delivery_id(source, config, headers, data) or uuid.uuid4().hex
    event = EventIn(key=key, payload=data, scope=scope, event_id=event_id,
                    metadata={"webhook": name, "source": source})
    try:
        event_id, duplicate = await push_event_once(api, tenant, event)
    except Invalid as exc:
        return await answer(400, str(exc), event_id, key)
    except LimitExceeded as exc:
        return await answer(429, str(exc), event_id, key)
    except PayloadTooLarge as exc:
        return await answer(413, str(exc), event_id, key)
    outcome = "duplicate" if duplicate else "accepted"
    metrics.WEBHOOK_REQUESTS.labels(source, outcome).inc()
    await api.webhooks.log_request(tenant, name, 202, outcome, event_id, key,
                                   "a redelivery: the same event" if duplicate else "")
    return HookAnswer(202, {"event_id": event_id, "key": key})


# The outgoing side ------------------------------------------------------------------------

async def signing_secret(api: ApiState, tenant: str) -> SigningSecretView:
    row = await api.webhooks.signing_secret(tenant)
    return SigningSecretView(secret=row["secret"], header=SIGNATURE_HEADER,
                             created_at=row["created_at"].isoformat())


async def rotate_signing_secret(api: ApiState, caller: Principal) -> SigningSecretView:
    row = await api.webhooks.rotate_signing_secret(
        caller.tenant, audit_entry(caller, "signing_secret.rotate"))
    return SigningSecretView(secret=row["secret"], header=SIGNATURE_HEADER,
                             created_at=row["created_at"].isoformat())


def delivery_view(row: Any) -> OutboundDeliveryView:
    pending = row["status"] == "pending"
    return OutboundDeliveryView(
        id=row["id"], kind=row["kind"], channel=row["channel"], target=row["target"],
        run_id=row["run_id"], rule_id=row["rule_id"], status=row["status"],
        attempts=row["attempts"], last_status=row["last_status"], last_error=row["last_error"],
        next_attempt_at=_iso(row["next_attempt_at"]) if pending else None,
        created_at=row["created_at"].isoformat(), finished_at=_iso(row["finished_at"]),
    )


async def outbound_deliveries(
    api: ApiState, tenant: str, *, kind: str | None = None, run_id: str | None = None,
    rule_id: str | None = None, limit: int = 100,
) -> list[OutboundDeliveryView]:
    rows = await api.deliveries.list_deliveries(tenant, kind=kind, run_id=run_id,
                                                rule_id=rule_id, limit=limit)
    return [delivery_view(r) for r in rows]
