"""Webhooks and alerts: `r.webhooks` (incoming hooks, the outgoing signing secret and delivery
log), `r.alerts` (alert rules), and `verify_signature` for receivers of our deliveries.

    r.webhooks.create("gh", source="github", secret="...",
                      event_key="'gh.' + headers['x-github-event']",
                      scope="input.repository.full_name")      # POST /hooks/<tenant>/gh
    r.alerts.create(on=["run.failed"], workflow="summarize", slack_webhook_url="https://...")
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import quote

SIGNATURE_HEADER = "Ratchet-Signature"


class _Requester(Protocol):
    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any: ...

    async def arequest(self, method: str, path: str, json: Any = None,
                       params: Any = None) -> Any: ...


def _seg(value: str) -> str:
    return quote(value, safe="")


def _hook_body(name: str, source: str, secret: str, event_key: str, scope: str | None,
               options: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "source": source, "secret": secret,
                            "event_key": event_key}
    if scope is not None:
        body["scope"] = scope
    body.update({k: v for k, v in options.items() if v is not None})
    return body


class Webhooks:
    """Incoming webhooks and the outgoing side's signing secret and delivery log."""

    def __init__(self, transport: _Requester) -> None:
        self._c = transport

    def create(self, name: str, *, source: str, secret: str, event_key: str,
               scope: str | None = None, header: str | None = None, prefix: str | None = None,
               username: str | None = None, tolerance_s: float | None = None,
               id_header: str | None = None) -> Any:
        """Create a hook; requests to `POST /hooks/<tenant>/<name>` become events.

        Args:
            source: github | stripe | slack | hmac | basic | api_key.
            secret: the signing secret (github, stripe, slack, hmac), password (basic) or key
                (api_key).
            event_key: CEL over `input` (the JSON body) and `headers` giving the event key.
            scope: CEL giving the event's scope (optional).
            header, prefix: hmac's signature header and prefix; api_key's key header.
            username: basic's user name. tolerance_s: stripe/slack timestamp tolerance.
            id_header: a header with the sender's delivery id (hmac, basic, api_key).
        """
        body = _hook_body(name, source, secret, event_key, scope, {
            "header": header, "prefix": prefix, "username": username,
            "tolerance_s": tolerance_s, "id_header": id_header})
        return self._c.request("POST", "/webhooks", json=body)

    async def aio_create(self, name: str, *, source: str, secret: str, event_key: str,
                         scope: str | None = None, **options: Any) -> Any:
        """`create` for async code."""
        body = _hook_body(name, source, secret, event_key, scope, options)
        return await self._c.arequest("POST", "/webhooks", json=body)

    def list(self) -> Any:
        return self._c.request("GET", "/webhooks")

    def get(self, name: str) -> Any:
        return self._c.request("GET", f"/webhooks/{_seg(name)}")

    def delete(self, name: str) -> Any:
        return self._c.request("DELETE", f"/webhooks/{_seg(name)}")

    def deliveries(self, name: str, limit: int = 100) -> Any:
        """The hook's last requests, newest first: received_at, status, outcome, event_id."""
        return self._c.request("GET", f"/webhooks/{_seg(name)}/deliveries",
                               params={"limit": limit})

    async def aio_deliveries(self, name: str, limit: int = 100) -> Any:
        return await self._c.arequest("GET", f"/webhooks/{_seg(name)}/deliveries",
                                      params={"limit": limit})

    def outgoing(self, *, run_id: str | None = None, kind: str | None = None,
                 rule_id: str | None = None, limit: int = 100) -> Any:
        """Outgoing deliveries (run callbacks, alert messages) with their retry state."""
        params = {k: v for k, v in (("run_id", run_id), ("kind", kind), ("rule_id", rule_id),
                                    ("limit", limit)) if v is not None}
        return self._c.request("GET", "/deliveries", params=params)

    async def aio_outgoing(self, *, run_id: str | None = None, kind: str | None = None,
                           rule_id: str | None = None, limit: int = 100) -> Any:
        params = {k: v for k, v in (("run_id", run_id), ("kind", kind), ("rule_id", rule_id),
                                    ("limit", limit)) if v is not None}
        return await self._c.arequest("GET", "/deliveries", params=params)

    def signing_secret(self) -> str:
        """The key our outgoing deliveries are signed with (see `verify_signature`)."""
        return str(self._c.request("GET", "/signing-secret")["secret"])

    async def aio_signing_secret(self) -> str:
        return str((await self._c.arequest("GET", "/signing-secret"))["secret"])

    def rotate_signing_secret(self) -> str:
        return str(self._c.request("POST", "/signing-secret/rotate")["secret"])


def _alert_body(on: Sequence[str], workflow: str | None, filter: str | None,
                slack_webhook_url: str | None, email: Sequence[str] | None,
                webhook_url: str | None, window_s: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"on": list(on), "email": list(email or [])}
    for key, value in (("workflow", workflow), ("filter", filter),
                       ("slack_webhook_url", slack_webhook_url), ("webhook_url", webhook_url),
                       ("window_s", window_s)):
        if value is not None:
            body[key] = value
    return body


class Alerts:
    """Alert rules: Slack, email or webhook messages when runs fail, a workflow has no
    worker, a token is about to expire or a limit is reached. Grouped per window."""

    def __init__(self, transport: _Requester) -> None:
        self._c = transport

    def create(self, *, on: Sequence[str] = ("run.failed",), workflow: str | None = None,
               filter: str | None = None, slack_webhook_url: str | None = None,
               email: Sequence[str] | None = None, webhook_url: str | None = None,
               window_s: float | None = None) -> Any:
        """Create a rule.

        Args:
            on: any of run.failed, worker.pool_empty, token.expiring, limit.reached.
            workflow: only this workflow's runs (run.failed, worker.pool_empty).
            filter: CEL over `run` (id, workflow, status, input, metadata, errors).
            slack_webhook_url, email, webhook_url: where to (at least one).
            window_s: one message per window with a count (the server's default if None).
        """
        body = _alert_body(on, workflow, filter, slack_webhook_url, email, webhook_url,
                           window_s)
        return self._c.request("POST", "/alerts", json=body)

    async def aio_create(self, *, on: Sequence[str] = ("run.failed",),
                         workflow: str | None = None, filter: str | None = None,
                         slack_webhook_url: str | None = None,
                         email: Sequence[str] | None = None, webhook_url: str | None = None,
                         window_s: float | None = None) -> Any:
        body = _alert_body(on, workflow, filter, slack_webhook_url, email, webhook_url,
                           window_s)
        return await self._c.arequest("POST", "/alerts", json=body)

    def list(self) -> Any:
        return self._c.request("GET", "/alerts")

    def get(self, rule_id: str) -> Any:
        return self._c.request("GET", f"/alerts/{_seg(rule_id)}")

    def delete(self, rule_id: str) -> Any:
        return self._c.request("DELETE", f"/alerts/{_seg(rule_id)}")

    def test(self, rule_id: str) -> Any:
        """Send a test message to every destination of the rule now."""
        return self._c.request("POST", f"/alerts/{_seg(rule_id)}/test")

    def deliveries(self, rule_id: str, limit: int = 100) -> Any:
        return self._c.request("GET", "/deliveries",
                               params={"rule_id": rule_id, "kind": "alert", "limit": limit})


def verify_signature(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0,
                     now_s: float | None = None) -> bool:
    """Whether `header` (the `Ratchet-Signature` of a delivery we sent) signs `body` with
    `secret`, with a timestamp within `tolerance_s` of now.

    The header is `t=<unix seconds>,v1=<hex>`, the MAC HMAC-SHA256 of `<t>.<body>`.
    """
    parts = dict(p.strip().partition("=")[::2] for p in header.split(","))
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or not given:
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - int(stamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), given)
