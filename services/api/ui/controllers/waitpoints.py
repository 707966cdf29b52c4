"""The dashboard's waitpoints (docs/interaction.md): the tenant's open ones, and a page to
answer one with the session's token (the signed URL's public page is waitpoint.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from libs.common.tokens import Scope
from services.api.actions import waitpoints
from services.api.auth import Api
from services.api.repos.errors import NotFound
from services.api.routes.interaction import waitpoint_view
from services.api.ui.render import page
from services.api.ui.session import UiSession, check_csrf, require_scope


class WaitpointPages(Controller):
    path = "/ui/waitpoints"

    @get("/")
    async def list_page(self, session: UiSession, api: Api, notice: str | None = None,
                        all: bool = False) -> Response[str]:
        """Open waitpoints of the tenant, newest first (every one with `all`)."""
        found = await api.interaction.waitpoints(session.tenant, pending_only=not all)
        return page("waitpoints.html", session=session, nav="waitpoints", notice=notice,
                    waitpoints=[waitpoint_view(w) for w in found], showing_all=all)

    @get("/{waitpoint_id:str}")
    async def answer_page(self, waitpoint_id: str, session: UiSession, api: Api) -> Response[str]:
        wp = await api.interaction.waitpoint(waitpoint_id, session.tenant)
        if wp is None:
            raise NotFound(f"waitpoint {waitpoint_id!r} not found")
        return page("waitpoint_answer.html", session=session, nav="waitpoints",
                    w=waitpoint_view(wp))

    @post("/{waitpoint_id:str}/complete")
    async def complete(self, waitpoint_id: str, request: Request[Any, Any, Any],
                       session: UiSession, api: Api) -> Response[str]:
        """Approve, reject, or answer with JSON; then back to the run."""
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "completing a waitpoint")
        decision = (form.get("decision") or [""])[0]
        raw = (form.get("payload") or [""])[0].strip()
        payload: Any
        if decision == "json":
            try:
                payload = msgspec.json.decode(raw) if raw else None
            except msgspec.DecodeError as exc:
                raise HTTPException(status_code=400, detail=f"payload is not JSON: {exc}") from exc
        elif decision in ("approve", "reject"):
            comment = (form.get("comment") or [""])[0].strip()
            payload = {"approved": decision == "approve", "comment": comment}
        else:
            raise HTTPException(status_code=400, detail="decision must be approve, reject or json")
        wp = await waitpoints.complete(api, waitpoint_id, payload,
                                       by=f"ui:{session.principal.token_id}",
                                       tenant=session.tenant)
        notice = f"Waitpoint {wp.label or wp.id} completed."
        return Redirect(f"/ui/runs/{wp.run_id}?{urlencode({'notice': notice})}", status_code=303)
