"""The page behind a waitpoint's signed URL (docs/interaction.md): no token and no session —
the signature in the query string is the credential. GET shows the label with Approve /
Reject; POST completes the waitpoint, with JSON (from a program) or the page's form.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.enums import MediaType
from litestar.status_codes import HTTP_200_OK

from services.api.actions import waitpoints
from services.api.auth import Api
from services.api.repos.errors import (
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    RepoError,
    TooLarge,
    Unavailable,
)
from services.api.routes.interaction import waitpoint_view
from services.api.ui.render import page


class PublicWaitpointController(Controller):
    """The URL a durable task hands out. No token: the signature is the credential."""

    path = waitpoints.PUBLIC_PATH
    tags = ["waitpoints"]
    include_in_schema = False

    @get("/{waitpoint_id:str}", media_type=MediaType.HTML)
    async def show(self, waitpoint_id: str, api: Api, exp: int = 0, sig: str = "") -> Response[str]:
        """A minimal page: the label, and Approve / Reject for a person without an account."""
        try:
            await waitpoints.check_signature(api, waitpoint_id, exp, sig)
            wp = await api.interaction.waitpoint(waitpoint_id)
            if wp is None:
                raise NotFound("no such waitpoint")
        except RepoError as exc:
            return page("waitpoint.html", status_code=_status(exc), wp=None, message=str(exc))
        return page("waitpoint.html", wp=waitpoint_view(wp), message="", exp=exp, sig=sig)

    @post("/{waitpoint_id:str}", status_code=HTTP_200_OK)
    async def submit(
        self, waitpoint_id: str, request: Request[Any, Any, Any], api: Api,
        exp: int = 0, sig: str = "",
    ) -> Response[Any]:
        """JSON completes the waitpoint with that JSON; the page's form sends
        `decision=approve|reject` (and an optional `comment`), which becomes
        {"approved": true|false, "comment": ...}."""
        form = request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded")
        try:
            await waitpoints.check_signature(api, waitpoint_id, exp, sig)
            if form:
                fields = await request.form()
                payload: Any = {"approved": fields.get("decision") == "approve",
                                "comment": str(fields.get("comment") or "")}
            else:
                body = await request.body()
                try:
                    payload = msgspec.json.decode(body) if body.strip() else None
                except msgspec.DecodeError as exc:
                    raise Invalid(f"the body is not JSON: {exc}") from exc
            wp = await waitpoints.complete(api, waitpoint_id, payload, by="url")
        except RepoError as exc:
            if form:
                return page("waitpoint.html", status_code=_status(exc), wp=None, message=str(exc))
            return Response({"status_code": _status(exc), "detail": str(exc)},
                            status_code=_status(exc))
        if form:
            return page("waitpoint.html", wp=waitpoint_view(wp), message="Thank you: recorded.")
        return Response(msgspec.to_builtins(waitpoint_view(wp)))


# The public page answers its errors itself (as HTML for a person); the same statuses as
# the API's.
_PUBLIC_STATUS: tuple[tuple[type[RepoError], int], ...] = (
    (Forbidden, 403), (Gone, 410), (NotFound, 404), (Conflict, 409), (TooLarge, 413),
    (Unavailable, 503),
)


def _status(exc: RepoError) -> int:
    return next((code for cls, code in _PUBLIC_STATUS if isinstance(exc, cls)), 400)
