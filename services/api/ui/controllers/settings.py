"""Settings: API tokens (create with the secret shown once, list, revoke), the tenant's limits
with their usage, and the audit log.

Tokens and the audit log need the `admin` scope, as their REST routes do; a token without it
sees its limits and a note saying what it lacks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from libs.common.tokens import ALL_SCOPES, Scope
from services.api.auth import Api
from services.api.repos import Invalid
from services.api.schemas.tokens import TokenCreated, TokenIn
from services.api.ui import commands
from services.api.ui.render import page
from services.api.ui.session import UiSession, check_csrf, require_scope

AUDIT_PAGE = 50
# The actions the API records (routes/audit.py), for the log's filter.
AUDIT_ACTIONS = (
    "run.trigger", "run.trigger_bulk", "run.cancel", "run.replay", "workflow.rollback",
    "token.create", "token.revoke", "limits.set", "filter.create", "filter.update",
    "filter.delete", "cron.create", "cron.delete", "rate_limit.put",
    "webhook.create", "webhook.delete", "signing_secret.rotate", "alert.create", "alert.delete",
    "alert.test",
)
EXPIRIES_S = {"never": None, "1 hour": 3600, "1 day": 86_400, "7 days": 7 * 86_400,
              "30 days": 30 * 86_400, "90 days": 90 * 86_400, "1 year": 365 * 86_400}


def _back(notice: str) -> Response[str]:
    return Redirect(f"/ui/settings?{urlencode({'notice': notice})}", status_code=303)


class SettingsPages(Controller):
    path = "/ui/settings"

    @get("/")
    async def settings(
        self, session: UiSession, api: Api, notice: str | None = None, action: str = "",
        before: int | None = None,
    ) -> Response[str]:
        return await _render(api, session, notice, action, before)

    @post("/tokens")
    async def create_token(self, request: Request, session: UiSession,  # type: ignore[type-arg]
                           api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        require_scope(session, Scope.ADMIN, "creating a token")
        expiry = (form.get("expires") or ["never"])[-1]
        if expiry not in EXPIRIES_S:
            raise HTTPException(status_code=400, detail=f"expires must be one of {list(EXPIRIES_S)}")
        if not form.get("scope"):
            return await _render(api, session, None, "", None,
                                 error="Not created: pick at least one scope")
        try:  # through the REST request type, so the form meets the same constraints
            data = msgspec.convert({"name": (form.get("name") or [""])[-1],
                                    "scopes": form.get("scope", []),
                                    "expires_in_s": EXPIRIES_S[expiry]}, TokenIn)
        except msgspec.ValidationError as exc:
            return await _render(api, session, None, "", None, error=f"Not created: {exc}")
        try:
            created = await commands.create_token(api, session.principal, data)
        except Invalid as exc:
            return await _render(api, session, None, "", None, error=f"Not created: {exc}")
        # Rendered in the response to the POST, never put in a URL: this page is the only
        # time the secret is shown.
        return await _render(api, session, None, "", None, created=created)

    @post("/tokens/{token_id:str}/revoke")
    async def revoke_token(self, token_id: str, request: Request,  # type: ignore[type-arg]
                           session: UiSession, api: Api) -> Response[str]:
        await check_csrf(request, session)
        require_scope(session, Scope.ADMIN, "revoking a token")
        await commands.revoke_token(api, session.principal, token_id)
        return _back(f"Token {token_id} revoked: no API process accepts it any more.")


async def _render(
    api: Api, session: UiSession, notice: str | None, action: str, before: int | None,
    error: str | None = None, created: TokenCreated | None = None,
) -> Response[str]:
    admin = session.can(Scope.ADMIN)
    limits = await commands.limits(api, session.tenant)
    tokens = await commands.tokens(api, session.tenant) if admin else []
    entries = []
    older = None
    if admin:
        rows = await api.audit.list_entries(session.tenant, None, action or None,
                                            AUDIT_PAGE + 1, before)
        entries = [
            {"id": r["id"], "ts": r["ts"], "token_id": r["token_id"],
             "token_name": r["token_name"], "action": r["action"], "target": r["target"],
             "detail": msgspec.json.decode(r["detail"])}
            for r in rows[:AUDIT_PAGE]
        ]
        if len(rows) > AUDIT_PAGE:
            older = urlencode({k: v for k, v in
                               (("action", action), ("before", str(entries[-1]["id"]))) if v})
    return page(
        "settings.html", session=session, nav="settings", notice=notice, error=error,
        admin=admin, limits=limits.limits, tokens=tokens, created=created,
        scopes=[s.value for s in ALL_SCOPES], expiries=list(EXPIRIES_S), entries=entries,
        actions=AUDIT_ACTIONS, action=action, older=older, first=before is not None,
        now=datetime.now(UTC), status_code=422 if error else 200,
    )
