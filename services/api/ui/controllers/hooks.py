"""Webhooks and alerts in the dashboard.

/ui/webhooks lists the tenant's incoming hooks with each one's request log (the last 100:
time, status, outcome, event id) and the outgoing deliveries (run callbacks, alert messages)
with their retry state. /ui/settings/alerts lists the alert rules, creates and deletes them,
and sends a test message to a rule's destinations.
"""

from __future__ import annotations

from typing import get_args
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect

from libs.common.tokens import Scope
from services.api.actions import alerts, webhooks
from services.api.auth import Api
from services.api.repos import Invalid
from services.api.schemas.alerts import AlertEvent, AlertIn
from services.api.ui.render import page
from services.api.ui.session import UiSession, check_csrf, require_scope

OUTGOING_SHOWN = 50
EVENTS = list(get_args(AlertEvent))


class WebhookPages(Controller):
    path = "/ui/webhooks"

    @get("/")
    async def hooks(self, session: UiSession, api: Api, hook: str | None = None) -> Response[str]:
        hooks = await webhooks.list_hooks(api, session.tenant)
        names = [h.name for h in hooks]
        chosen = hook if hook in [*names, webhooks.UNKNOWN_HOOK_LOG] else (
            names[0] if names else None)
        log = await webhooks.hook_requests(api, session.tenant, chosen, 100) if chosen else []
        outgoing = await webhooks.outbound_deliveries(api, session.tenant,
                                                      limit=OUTGOING_SHOWN)
        return page("webhooks.html", session=session, nav="webhooks", hooks=hooks,
                    chosen=chosen, log=log, outgoing=outgoing,
                    unknown=webhooks.UNKNOWN_HOOK_LOG)


def _back(notice: str) -> Response[str]:
    return Redirect(f"/ui/settings/alerts?{urlencode({'notice': notice})}", status_code=303)


class AlertPages(Controller):
    path = "/ui/settings/alerts"

    @get("/")
    async def rules(self, session: UiSession, api: Api,
                    notice: str | None = None) -> Response[str]:
        return await _render(api, session, notice)

    @post("/")
    async def create(self, request: Request, session: UiSession,  # type: ignore[type-arg]
                     api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "creating an alert rule")

        def one(name: str) -> str | None:
            value = (form.get(name) or [""])[-1].strip()
            return value or None

        emails = [e.strip() for e in (one("email") or "").split(",") if e.strip()]
        raw: dict[str, object] = {"on": form.get("on", []), "workflow": one("workflow"), "filter": one("filter"),
               "slack_webhook_url": one("slack_webhook_url"), "email": emails,
               "webhook_url": one("webhook_url")}
        window = one("window_s")
        try:  # through the REST request type: the form meets the API's constraints
            if window is not None:
                raw["window_s"] = float(window)
            data = msgspec.convert(raw, AlertIn)
            created = await alerts.create_rule(api, session.principal, data)
        except (msgspec.ValidationError, ValueError, Invalid) as exc:
            return await _render(api, session, None, error=f"Not created: {exc}")
        return _back(f"Alert rule {created.id} created.")

    @post("/{rule_id:str}/test")
    async def test(self, rule_id: str, request: Request,  # type: ignore[type-arg]
                   session: UiSession, api: Api) -> Response[str]:
        await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "sending a test alert")
        sent = await alerts.send_test(api, session.principal, rule_id)
        return _back(f"Test alert queued for {len(sent.delivery_ids)} destination(s); "
                     "see its deliveries below.")

    @post("/{rule_id:str}/delete")
    async def delete(self, rule_id: str, request: Request,  # type: ignore[type-arg]
                     session: UiSession, api: Api) -> Response[str]:
        await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "deleting an alert rule")
        await alerts.delete_rule(api, session.principal, rule_id)
        return _back(f"Alert rule {rule_id} deleted.")


async def _render(api: Api, session: UiSession, notice: str | None,
                  error: str | None = None) -> Response[str]:
    rules = await alerts.list_rules(api, session.tenant)
    deliveries = await webhooks.outbound_deliveries(api, session.tenant, kind="alert",
                                                    limit=OUTGOING_SHOWN)
    workflows = await api.workflows.names(session.tenant)
    return page("alerts.html", session=session, nav="settings", rules=rules,
                deliveries=deliveries, events=EVENTS, workflows=workflows, notice=notice,
                error=error, smtp=bool(api.settings.ratchet_smtp_url),
                status_code=422 if error else 200)
