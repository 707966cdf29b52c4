"""Logging in with an API token, and out."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect

from libs.common.tokens import Scope
from services.api.auth import Api
from services.api.ui.render import page
from services.api.ui.session import COOKIE, COOKIE_MAX_AGE_S, NO_READ, UiSession, check_csrf

LoginForm = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


def _with_cookie(response: Response[str], token: str) -> Response[str]:
    response.set_cookie(
        COOKIE, token, path="/ui", max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
    )
    return response


class LoginPages(Controller):
    path = "/ui"

    @get("/login")
    async def login_form(
        self, request: Request, api: Api, token: str | None = None,  # type: ignore[type-arg]
        ended: str | None = None,
    ) -> Response[str]:
        """The login form; `?token=` logs straight in (the link `make demo` prints)."""
        if token is None:
            error = ("Your session has ended: its API token was revoked or has expired."
                     " Log in with another token." if ended else None)
            response = page("login.html", error=error, session=None, nav="")
            held = request.cookies.get(COOKIE)
            if ended and held and await api.tokens.principal(held) is None:
                response.delete_cookie(COOKIE, path="/ui")  # a dead token: forget it
            return response
        refused = await _refusal(api, token)
        if refused is not None:
            return refused
        # A page rather than a redirect: with SameSite=Strict, a redirect that follows a link
        # from another site (or a terminal) would not send the cookie just set; a navigation
        # started by this page does.
        return _with_cookie(page("logged_in.html", session=None, nav=""), token)

    @post("/login")
    async def login(self, api: Api, data: LoginForm) -> Response[str]:
        token = (data.get("token") or "").strip()
        refused = await _refusal(api, token)
        if refused is not None:
            return refused
        return _with_cookie(Redirect("/ui/runs", status_code=303), token)

    @post("/logout")
    async def logout(self, request: Request, session: UiSession) -> Response[str]:  # type: ignore[type-arg]
        await check_csrf(request, session)
        response: Response[str] = Redirect("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response


async def _refusal(api: Api, token: str) -> Response[str] | None:
    """The login page with the reason a token cannot open the dashboard; None if it can."""
    principal = await api.tokens.principal(token) if token else None
    if principal is None:
        return page("login.html", session=None, nav="", status_code=401,
                    error="That token is not valid. Use an API token of your tenant"
                          " (make demo prints one as RATCHET_TOKEN in .run/env).")
    if not principal.allows(Scope.READ):
        return page("login.html", session=None, nav="", status_code=403, error=NO_READ)
    return None
